//! Field numbers of the OTLP protobuf messages that src/model/wire.rs writes without prost,
//! as opentelemetry-proto's `.proto` files number them. The tests of spans.rs and logs.rs
//! check the bytes written with them against prost's encoding of the same message.

/// `ExportTraceServiceRequest.resource_spans`, `ExportLogsServiceRequest.resource_logs`.
pub const REQUEST_RESOURCE_ITEMS: u32 = 1;

/// `ResourceSpans` and `ResourceLogs`, which share their layout.
pub mod resource_items {
    pub const RESOURCE: u32 = 1;
    /// `scope_spans`, `scope_logs`.
    pub const SCOPE_ITEMS: u32 = 2;
}

/// `ScopeSpans` and `ScopeLogs`, which share their layout.
pub mod scope_items {
    pub const SCOPE: u32 = 1;
    /// `spans`, `log_records`.
    pub const ITEMS: u32 = 2;
}

/// `trace.v1.Span`.
pub mod span {
    pub const TRACE_ID: u32 = 1;
    pub const SPAN_ID: u32 = 2;
    pub const PARENT_SPAN_ID: u32 = 4;
    pub const NAME: u32 = 5;
    pub const KIND: u32 = 6;
    pub const START_TIME_UNIX_NANO: u32 = 7;
    pub const END_TIME_UNIX_NANO: u32 = 8;
    pub const ATTRIBUTES: u32 = 9;
    pub const STATUS: u32 = 15;
}

/// `trace.v1.Status`.
pub mod status {
    pub const MESSAGE: u32 = 2;
    pub const CODE: u32 = 3;
}

/// `logs.v1.LogRecord`.
pub mod log_record {
    pub const TIME_UNIX_NANO: u32 = 1;
    pub const SEVERITY_NUMBER: u32 = 2;
    pub const SEVERITY_TEXT: u32 = 3;
    pub const BODY: u32 = 5;
    pub const ATTRIBUTES: u32 = 6;
    pub const OBSERVED_TIME_UNIX_NANO: u32 = 11;
    pub const EVENT_NAME: u32 = 12;
}

/// `common.v1.KeyValue`.
pub mod key_value {
    pub const KEY: u32 = 1;
    pub const VALUE: u32 = 2;
}

/// `common.v1.AnyValue`'s oneof.
pub mod any_value {
    pub const STRING_VALUE: u32 = 1;
    pub const BOOL_VALUE: u32 = 2;
    pub const INT_VALUE: u32 = 3;
    pub const DOUBLE_VALUE: u32 = 4;
}
