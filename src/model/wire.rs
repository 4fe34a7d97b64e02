//! Protobuf wire encoding of the OTLP messages made per event (spans, log records), written
//! straight from pyusdt's own compact records: no prost message, no `String` per attribute
//! key. The bytes are those prost writes for the same messages (fields in tag order, proto3
//! defaults left out); the tests of spans.rs and logs.rs check it.
use std::marker::PhantomData;

use prost::bytes::{Buf, BufMut, Bytes};
use prost::encoding::{DecodeContext, WireType};

use super::fields::{any_value, key_value};

const VARINT: u32 = 0;
const FIXED64: u32 = 1;
pub const LEN: u32 = 2;
const FIXED32: u32 = 5;

pub fn varint(buf: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        buf.push(v as u8 | 0x80);
        v >>= 7;
    }
    buf.push(v as u8);
}

fn varint_len(v: u64) -> usize {
    if v < 0x80 {
        // Most lengths (short strings, attributes).
        return 1;
    }
    // 1 byte per 7 bits.
    (64 - v.leading_zeros() as usize).div_ceil(7)
}

pub fn key(buf: &mut Vec<u8>, field: u32, wire_type: u32) {
    let key = field << 3 | wire_type;
    if key < 0x80 {
        // Fields 1-15: every key pyusdt writes.
        buf.push(key as u8);
    } else {
        varint(buf, u64::from(key));
    }
}

/// A length-delimited field, even when empty (oneof members).
pub fn bytes(buf: &mut Vec<u8>, field: u32, v: &[u8]) {
    key(buf, field, LEN);
    varint(buf, v.len() as u64);
    buf.extend_from_slice(v);
}

/// A string or bytes field, left out when empty (proto3 default).
pub fn bytes_opt(buf: &mut Vec<u8>, field: u32, v: &[u8]) {
    if !v.is_empty() {
        bytes(buf, field, v);
    }
}

/// A varint field (int32, int64, uint32, uint64, enum, bool), left out when 0.
pub fn varint_opt(buf: &mut Vec<u8>, field: u32, v: u64) {
    if v != 0 {
        key(buf, field, VARINT);
        varint(buf, v);
    }
}

/// A fixed64 field, left out when 0.
pub fn fixed64_opt(buf: &mut Vec<u8>, field: u32, v: u64) {
    if v != 0 {
        key(buf, field, FIXED64);
        buf.extend_from_slice(&v.to_le_bytes());
    }
}

/// A fixed32 field, left out when 0.
pub fn fixed32_opt(buf: &mut Vec<u8>, field: u32, v: u32) {
    if v != 0 {
        key(buf, field, FIXED32);
        buf.extend_from_slice(&v.to_le_bytes());
    }
}

/// A message field whose body `body` writes; `guess`: the bytes its length likely takes (the
/// body moves when it is wrong).
pub fn message(buf: &mut Vec<u8>, field: u32, guess: usize, body: impl FnOnce(&mut Vec<u8>)) {
    key(buf, field, LEN);
    let at = buf.len();
    buf.resize(at + guess, 0);
    body(buf);
    let len = buf.len() - at - guess;
    let need = varint_len(len as u64);
    if need != guess {
        if need > guess {
            buf.resize(buf.len() + (need - guess), 0);
            buf.copy_within(at + guess..at + guess + len, at + need);
        } else {
            buf.copy_within(at + guess..at + guess + len, at + need);
            buf.truncate(at + need + len);
        }
    }
    let mut v = len as u64;
    for b in &mut buf[at..at + need] {
        *b = v as u8 | 0x80;
        v >>= 7;
    }
    buf[at + need - 1] &= 0x7f;
}

/// A prost message as a field (the resource, the scope).
pub fn prost_message(buf: &mut Vec<u8>, field: u32, m: &impl prost::Message) {
    key(buf, field, LEN);
    m.encode_length_delimited(buf)
        .expect("a Vec<u8> grows as needed");
}

/// An attribute value (`AnyValue`'s oneof).
#[derive(Clone, Copy)]
pub enum Value<'a> {
    Str(&'a [u8]),
    Bool(bool),
    Int(i64),
    Double(f64),
}

/// The length of a length-delimited field's body of `len` bytes, with its key (fields 1-15)
/// and length.
fn field_len(len: usize) -> usize {
    1 + varint_len(len as u64) + len
}

impl Value<'_> {
    /// The bytes of the `AnyValue` message's body: one oneof member, its key included.
    fn body_len(&self) -> usize {
        match self {
            Value::Str(s) => field_len(s.len()),
            Value::Bool(_) => 2,
            Value::Int(i) => 1 + varint_len(*i as u64),
            Value::Double(_) => 9,
        }
    }
}

/// A `KeyValue` in field `field` (a repeated `attributes`). Its lengths are known beforehand,
/// so it is written front to back (attributes are most of a span's bytes).
pub fn attribute(buf: &mut Vec<u8>, field: u32, k: &str, v: Value<'_>) {
    let key_len = if k.is_empty() { 0 } else { field_len(k.len()) };
    let len = key_len + field_len(v.body_len());
    buf.reserve(10 + len);
    key(buf, field, LEN);
    varint(buf, len as u64);
    bytes_opt(buf, key_value::KEY, k.as_bytes());
    any_value(buf, key_value::VALUE, v);
}

/// An `AnyValue` message in field `field`.
pub fn any_value(buf: &mut Vec<u8>, field: u32, v: Value<'_>) {
    key(buf, field, LEN);
    varint(buf, v.body_len() as u64);
    match v {
        Value::Str(s) => bytes(buf, any_value::STRING_VALUE, s),
        Value::Bool(b) => {
            key(buf, any_value::BOOL_VALUE, VARINT);
            varint(buf, u64::from(b));
        }
        Value::Int(i) => {
            key(buf, any_value::INT_VALUE, VARINT);
            varint(buf, i as u64);
        }
        Value::Double(d) => {
            key(buf, any_value::DOUBLE_VALUE, FIXED64);
            buf.extend_from_slice(&d.to_bits().to_le_bytes());
        }
    }
}

/// Protobuf bytes of a message of type `T` (an Export…ServiceRequest), encoded without building
/// `T`. As a prost `Message` it encodes to the same bytes (for the gRPC codec and the HTTP
/// body); as `Serialize`, it is decoded to `T` first (the OTLP/JSON file exporter).
pub struct Encoded<T> {
    /// Shared, so that each attempt to send it (retries) takes it without a copy.
    bytes: Bytes,
    _of: PhantomData<fn() -> T>,
}

impl<T> Encoded<T> {
    pub fn new(bytes: Vec<u8>) -> Encoded<T> {
        Encoded {
            bytes: bytes.into(),
            _of: PhantomData,
        }
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The encoded message, as an OTLP/HTTP body (shared, not copied).
    pub fn body(&self) -> Bytes {
        self.bytes.clone()
    }

    /// The message, decoded.
    pub fn decode(&self) -> Result<T, prost::DecodeError>
    where
        T: prost::Message + Default,
    {
        T::decode(self.bytes.as_ref())
    }
}

impl<T> Default for Encoded<T> {
    fn default() -> Self {
        Encoded::new(Vec::new())
    }
}

impl<T> Clone for Encoded<T> {
    fn clone(&self) -> Self {
        Encoded {
            bytes: self.bytes.clone(),
            _of: PhantomData,
        }
    }
}

impl<T> std::fmt::Debug for Encoded<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Encoded({} bytes)", self.bytes.len())
    }
}

impl<T> prost::Message for Encoded<T> {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        buf.put_slice(&self.bytes);
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), prost::DecodeError> {
        // Never decoded into (only sent); fields are skipped.
        prost::encoding::skip_field(wire_type, tag, buf, ctx)
    }

    fn encoded_len(&self) -> usize {
        self.bytes.len()
    }

    fn clear(&mut self) {
        self.bytes.clear();
    }
}

impl<T: prost::Message + Default + serde::Serialize> serde::Serialize for Encoded<T> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.decode()
            .map_err(serde::ser::Error::custom)?
            .serialize(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_and_moved_bodies() {
        for v in [0u64, 1, 127, 128, 16_383, 16_384, u64::MAX] {
            let mut a = Vec::new();
            varint(&mut a, v);
            assert_eq!(a.len(), varint_len(v));
            let mut b = Vec::new();
            prost::encoding::encode_varint(v, &mut b);
            assert_eq!(a, b);
        }
        for (n, guess) in [(0, 1), (5, 2), (200, 1), (200, 2), (20_000, 1), (100, 3)] {
            let mut buf = vec![9];
            message(&mut buf, 3, guess, |b| {
                b.extend(std::iter::repeat_n(7u8, n))
            });
            let mut want = vec![9];
            bytes(&mut want, 3, &vec![7u8; n]);
            assert_eq!(buf, want, "{n} bytes, guess {guess}");
        }
    }

    #[test]
    fn attributes_are_the_bytes_prost_writes() {
        use crate::model::attrs;
        let long = "y".repeat(200);
        let cases = [
            ("k", Value::Str(b"v"), attrs::string("k", "v")),
            ("", Value::Str(b""), attrs::string("", "")),
            (
                "long",
                Value::Str(long.as_bytes()),
                attrs::string("long", long.as_str()),
            ),
            (&long, Value::Int(-1), attrs::int(&long, -1)),
            ("n", Value::Int(300), attrs::int("n", 300)),
            ("b", Value::Bool(false), attrs::boolean("b", false)),
            ("d", Value::Double(0.25), attrs::double("d", 0.25)),
        ];
        for (k, v, kv) in cases {
            let mut buf = vec![5];
            attribute(&mut buf, 9, k, v);
            let mut want = vec![5];
            prost::encoding::message::encode(9, &kv, &mut want);
            assert_eq!(buf, want, "{k}");
        }
    }
}
