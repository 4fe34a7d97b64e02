//! A code location of the function markers, interned: its names are learnt once per location
//! (code_names.rs) and shared by every span and metric series of its calls, with the span
//! attributes they make encoded once, not per call.
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::attrs;
use super::fields::span;
use super::wire::{self, Value};

#[derive(Debug, PartialEq, Eq)]
pub struct CodeLocation {
    /// Unique for the agent's lifetime (never reused, unlike an address): metric series are
    /// looked up by it.
    pub id: u64,
    pub name: Box<str>,
    pub file: Box<str>,
    /// The function's first line.
    pub line: i32,
    /// `code.function.name`, `code.file.path` and `code.line.number` as a span's attributes
    /// (field 9 of `Span`), protobuf-encoded.
    span_attributes: Box<[u8]>,
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

impl CodeLocation {
    pub fn new(name: &str, file: &str, line: i32) -> Arc<CodeLocation> {
        let mut encoded = Vec::new();
        wire::attribute(
            &mut encoded,
            span::ATTRIBUTES,
            attrs::CODE_FUNCTION_NAME,
            Value::Str(name.as_bytes()),
        );
        wire::attribute(
            &mut encoded,
            span::ATTRIBUTES,
            attrs::CODE_FILE_PATH,
            Value::Str(file.as_bytes()),
        );
        let l = Value::Int(i64::from(line));
        wire::attribute(&mut encoded, span::ATTRIBUTES, attrs::CODE_LINE_NUMBER, l);
        Arc::new(CodeLocation {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            name: name.into(),
            file: file.into(),
            line,
            span_attributes: encoded.into_boxed_slice(),
        })
    }

    /// The encoded attributes `code.function.name`, `code.file.path`, `code.line.number` of a
    /// `Span` (field 9).
    pub fn span_attributes(&self) -> &[u8] {
        &self.span_attributes
    }
}
