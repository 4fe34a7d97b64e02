//! Attribute names (the contract with dashboards and alerts) and `KeyValue` constructors.
use opentelemetry_proto::tonic::common::v1::{any_value::Value, AnyValue, KeyValue};

pub const GC_GENERATION: &str = "cpython.gc.generation";
pub const GC_COLLECTED_OBJECTS: &str = "cpython.gc.collected_objects";
pub const IMPORT_MODULE: &str = "cpython.import.module";
pub const IMPORT_FOUND: &str = "cpython.import.found";
pub const AUDIT_EVENT: &str = "cpython.audit.event";
pub const THREAD_ID: &str = "thread.id";
pub const CODE_FUNCTION_NAME: &str = "code.function.name";
pub const CODE_FILE_PATH: &str = "code.file.path";
pub const CODE_LINE_NUMBER: &str = "code.line.number";

pub fn string(key: &str, value: impl Into<String>) -> KeyValue {
    kv(key, Value::StringValue(value.into()))
}

pub fn int(key: &str, value: i64) -> KeyValue {
    kv(key, Value::IntValue(value))
}

pub fn double(key: &str, value: f64) -> KeyValue {
    kv(key, Value::DoubleValue(value))
}

pub fn boolean(key: &str, value: bool) -> KeyValue {
    kv(key, Value::BoolValue(value))
}

pub fn any_string(value: impl Into<String>) -> AnyValue {
    AnyValue {
        value: Some(Value::StringValue(value.into())),
    }
}

fn kv(key: &str, value: Value) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue { value: Some(value) }),
        ..Default::default()
    }
}
