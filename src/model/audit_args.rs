//! Decodes audit arguments from the raw object memory the BPF side copied (--audit-args):
//! `str`, `int`, `bytes`, `bool` and `None`, per CPython version, bounded and escaped. Only
//! the arguments of common, security-relevant events are exported; off by default, since
//! arguments can carry secrets.
use std::fmt::Write;

use crate::bpf::audit_arg;

/// Events whose first arguments are worth a log attribute, and how many of them.
pub const COMMON_EVENTS: &[(&str, usize)] = &[
    ("open", 3),
    ("os.system", 1),
    ("subprocess.Popen", 2),
    ("socket.connect", 2),
    ("exec", 1),
    ("compile", 2),
    ("import", 2),
];

/// Longest decoded value, in characters; longer ones end with `…`.
pub const MAX_CHARS: usize = 64;

/// The decoded arguments of `event` (None for an argument that cannot be decoded), or nothing
/// when `event` is not one of `COMMON_EVENTS`.
pub fn decode(event: &str, layout: u64, args: &[audit_arg]) -> Vec<Option<String>> {
    let Some(&(_, n)) = COMMON_EVENTS.iter().find(|(e, _)| *e == event) else {
        return Vec::new();
    };
    let minor = ((layout >> 8) & 0xff) as u32;
    args.iter().take(n).map(|a| decode_one(a, minor)).collect()
}

fn decode_one(a: &audit_arg, minor: u32) -> Option<String> {
    if a.ok != 1 {
        return None;
    }
    let type_name = c_str(&a.r#type);
    let raw = &a.raw;
    match type_name.as_str() {
        "str" => decode_str(raw, minor),
        "bytes" => decode_bytes(raw),
        "int" | "bool" => decode_int(raw, minor).map(|v| match (type_name.as_str(), v) {
            ("bool", 0) => "False".into(),
            ("bool", _) => "True".into(),
            (_, v) => v.to_string(),
        }),
        "NoneType" => Some("None".into()),
        other => Some(format!("<{other}>")),
    }
}

fn c_str(raw: &[i8]) -> String {
    let bytes: Vec<u8> = raw
        .iter()
        .take_while(|&&b| b != 0)
        .map(|&b| b as u8)
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

fn i64_at(raw: &[u8], off: usize) -> Option<i64> {
    Some(i64::from_le_bytes(raw.get(off..off + 8)?.try_into().ok()?))
}

fn u32_at(raw: &[u8], off: usize) -> Option<u32> {
    Some(u32::from_le_bytes(raw.get(off..off + 4)?.try_into().ok()?))
}

/// `raw` starts at object offset 16. PyASCIIObject: length @16, hash @24, state @32; 3.8–3.11
/// also carry `wstr` (compact ASCII data @48, compact non-ASCII @72); 3.12+ @40 and @56.
fn decode_str(raw: &[u8], minor: u32) -> Option<String> {
    let length = usize::try_from(i64_at(raw, 0)?).ok()?;
    let state = u32_at(raw, 16)?;
    let (kind, compact, ascii) = ((state >> 2) & 7, (state >> 5) & 1, (state >> 6) & 1);
    if compact != 1 {
        return None;
    }
    let old = minor <= 11;
    let data_offset = match (ascii == 1, old) {
        (true, true) => 48,
        (true, false) => 40,
        (false, true) => 72,
        (false, false) => 56,
    } - 16;
    let unit = match kind {
        1 | 2 | 4 => kind as usize,
        _ => return None,
    };
    let data = raw.get(data_offset..)?;
    let available = data.len() / unit;
    let mut out = String::new();
    for i in 0..length.min(available).min(MAX_CHARS) {
        let c = match unit {
            1 => u32::from(data[i]),
            2 => u32::from(u16::from_le_bytes([data[2 * i], data[2 * i + 1]])),
            _ => u32::from_le_bytes(data[4 * i..4 * i + 4].try_into().ok()?),
        };
        out.push(char::from_u32(c).unwrap_or('\u{fffd}'));
    }
    if length > out.chars().count() {
        out.push('…');
    }
    Some(escape(&out))
}

/// PyBytesObject: ob_size @16, data @32 (`raw` starts at 16).
fn decode_bytes(raw: &[u8]) -> Option<String> {
    let size = usize::try_from(i64_at(raw, 0)?).ok()?;
    let data = raw.get(16..)?;
    let shown = &data[..size.min(data.len()).min(MAX_CHARS)];
    let mut out = String::from("b'");
    for &b in shown {
        match b {
            b'\\' => out.push_str("\\\\"),
            b'\'' => out.push_str("\\'"),
            0x20..=0x7e => out.push(b as char),
            _ => {
                let _ = write!(out, "\\x{b:02x}");
            }
        }
    }
    out.push('\'');
    if size > shown.len() {
        out.push('…');
    }
    Some(out)
}

/// Up to two 30-bit digits. 3.8–3.11: signed ob_size = ±digit count; 3.12+: lv_tag with the
/// digit count in bits 3+ and the sign in bits 0-1 (0 positive, 1 zero, 2 negative).
fn decode_int(raw: &[u8], minor: u32) -> Option<i64> {
    let head = i64_at(raw, 0)?;
    let (digits, negative) = if minor <= 11 {
        (head.unsigned_abs(), head < 0)
    } else {
        let tag = head as u64;
        if tag & 3 == 1 {
            return Some(0);
        }
        (tag >> 3, tag & 3 == 2)
    };
    if digits > 2 {
        return None;
    }
    let mut v: i64 = 0;
    for i in (0..digits as usize).rev() {
        v = (v << 30) | i64::from(u32_at(raw, 8 + 4 * i)? & 0x3fff_ffff);
    }
    Some(if negative { -v } else { v })
}

/// Control characters escaped: values may end up on terminals.
fn escape(s: &str) -> String {
    crate::text::safe(s).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn arg(type_name: &str, raw_at_16: &[u8]) -> audit_arg {
        let mut a = audit_arg {
            ok: 1,
            ..Default::default()
        };
        for (d, s) in a.r#type.iter_mut().zip(type_name.bytes()) {
            *d = s as i8;
        }
        a.raw[..raw_at_16.len()].copy_from_slice(raw_at_16);
        a
    }

    fn ascii_str(s: &str, data_offset: usize) -> Vec<u8> {
        let mut raw = vec![0u8; 128];
        raw[0..8].copy_from_slice(&(s.len() as i64).to_le_bytes());
        let state: u32 = (1 << 2) | (1 << 5) | (1 << 6); // kind 1, compact, ascii
        raw[16..20].copy_from_slice(&state.to_le_bytes());
        raw[data_offset - 16..data_offset - 16 + s.len()].copy_from_slice(s.as_bytes());
        raw
    }

    #[test]
    fn strings_per_version() {
        let a = arg("str", &ascii_str("/etc/passwd", 48));
        assert_eq!(decode_one(&a, 11).as_deref(), Some("/etc/passwd"));
        let a = arg("str", &ascii_str("/etc/passwd", 40));
        assert_eq!(decode_one(&a, 12).as_deref(), Some("/etc/passwd"));
        let long = "x".repeat(70);
        let a = arg("str", &ascii_str(&long, 48));
        assert!(decode_one(&a, 11).unwrap().ends_with('…'));
        let a = arg("str", &ascii_str("a\x1bb", 48));
        assert_eq!(decode_one(&a, 11).as_deref(), Some("a\\x1bb"));
    }

    #[test]
    fn ints_bytes_and_others() {
        let mut raw = vec![0u8; 16];
        raw[0..8].copy_from_slice(&(-1i64).to_le_bytes());
        raw[8..12].copy_from_slice(&524288u32.to_le_bytes());
        assert_eq!(
            decode_one(&arg("int", &raw), 11).as_deref(),
            Some("-524288")
        );
        let mut raw = vec![0u8; 16];
        raw[0..8].copy_from_slice(&(1u64 << 3).to_le_bytes()); // one digit, positive
        raw[8..12].copy_from_slice(&7u32.to_le_bytes());
        assert_eq!(decode_one(&arg("int", &raw), 12).as_deref(), Some("7"));
        let mut raw = vec![0u8; 40];
        raw[0..8].copy_from_slice(&4i64.to_le_bytes());
        raw[16..20].copy_from_slice(b"ls\n'");
        assert_eq!(
            decode_one(&arg("bytes", &raw), 11).as_deref(),
            Some("b'ls\\x0a\\''")
        );
        assert_eq!(
            decode_one(&arg("tuple", &[]), 11).as_deref(),
            Some("<tuple>")
        );
        assert_eq!(
            decode_one(&arg("NoneType", &[]), 11).as_deref(),
            Some("None")
        );
        let mut not_read = arg("str", &[]);
        not_read.ok = 0;
        assert_eq!(decode_one(&not_read, 11), None);
        assert!(decode("builtins.id", 16 | (11 << 8), &[]).is_empty());
    }
}
