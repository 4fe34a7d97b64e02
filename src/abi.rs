//! Values of the BPF side's layout as user space reads them, shared by the map readers
//! (src/attach/) and the record decoder (src/decode.rs): the key of a code location and the
//! bounded C strings the BPF programs copy.
use std::borrow::Cow;

/// A code location of the function markers in one process image (bpf/pyusdt.h `code_ref`):
/// the key under which its names were sent once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CodeRef {
    pub pid: u32,
    pub mm: u64,
    pub name_ptr: u64,
    pub file_ptr: u64,
    pub line: i32,
}

/// A bounded, NUL-terminated string copied by `bpf_probe_read_user_str`: untrusted bytes,
/// decoded lossily (never fails, never reads past the array).
pub fn c_string(raw: &[i8]) -> Cow<'_, str> {
    let bytes = bytes(raw);
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end])
}

/// A C `char` array as bytes.
pub fn bytes(raw: &[i8]) -> &[u8] {
    // SAFETY: i8 and u8 have the same size and alignment; the slice covers the same memory.
    unsafe { std::slice::from_raw_parts(raw.as_ptr().cast::<u8>(), raw.len()) }
}
