//! The CPython version of an interpreter file and which markers can fire on it.
//!
//! Facts from CPython's sources and measurements (docs/cpython-markers.md, and
//! docs/compatibility.md for 3.14 and 3.15, measured on Debian's builds): the function and line
//! markers fire as documented up to 3.10, only partly on 3.11 (gh-98894) and have no call site
//! at all from 3.12 to 3.14 (PEP 669 work); 3.15 has function__entry and function__return again
//! (gh-98894, PR 142397), not line; gc, import and audit fire everywhere. Versions newer than
//! the newest measured are `Unverified`: judged by what their markers do at run time.
use std::fmt;

use object::{Object, ObjectSection};
use serde::Serialize;

use super::stapsdt::SdtNotes;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct CPythonVersion {
    pub major: u32,
    pub minor: u32,
    /// Micro release, when the file says it (`PY_VERSION` in its read-only data).
    pub micro: Option<u32>,
}

impl fmt::Display for CPythonVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.micro {
            Some(micro) => write!(f, "{}.{}.{}", self.major, self.minor, micro),
            None => write!(f, "{}.{}", self.major, self.minor),
        }
    }
}

/// Whether a marker can fire on a given interpreter. Never claims more than is known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Firing {
    /// The marker fires as documented.
    Fires,
    /// 3.11's function__entry: fires only on the tracing path (line marker enabled).
    OnlyWhenLineEnabled,
    /// The file carries the note but the version is unknown (not a recognisable CPython).
    UnknownVersion,
    /// A version newer than those verified: the note exists, behaviour is unconfirmed.
    Unverified,
    /// The file has no note for this marker.
    NotInBinary,
}

impl Firing {
    /// Short machine-readable status.
    pub fn status(self) -> &'static str {
        match self {
            Firing::Fires => "fires",
            Firing::OnlyWhenLineEnabled => "line-mode-only",
            Firing::UnknownVersion => "unknown-version",
            Firing::Unverified => "unverified",
            Firing::NotInBinary => "absent",
        }
    }

    /// What a user needs to know about this status.
    pub fn explain(self, marker: &str, version: Option<CPythonVersion>) -> String {
        let v = version.map_or_else(
            || "this interpreter".to_string(),
            |v| format!("CPython {v}"),
        );
        match self {
            Firing::Fires if marker == "function__entry" && version >= Some(V3_15) => format!(
                "fires; {v}: also once when a generator or coroutine is created (no return \
                 follows); not from code the JIT runs"
            ),
            Firing::Fires if marker == "function__return" && version >= Some(V3_15) => format!(
                "fires; {v}: also at each yield, and at line -1 with no entry in the __init__ \
                 shim; not from code the JIT runs"
            ),
            Firing::Fires => "fires".into(),
            Firing::OnlyWhenLineEnabled => format!(
                "{v}: fires only on the slow tracing path (when the line marker is enabled), \
                 otherwise almost never (gh-98894); count calls with function__return"
            ),
            Firing::UnknownVersion => "present; CPython version not detected".into(),
            Firing::Unverified => format!("present; firing not verified on {v}"),
            Firing::NotInBinary if marker == "line" && version >= Some(V3_15) => {
                format!("{v} has no call site for line (3.15 restored only the function markers)")
            }
            Firing::NotInBinary if is_function_or_line(marker) && version >= Some(V3_12) => {
                format!("{v} has no call site for {marker} (removed in 3.12, PEP 669)")
            }
            Firing::NotInBinary => "not in this file".into(),
        }
    }
}

const V3_11: CPythonVersion = CPythonVersion {
    major: 3,
    minor: 11,
    micro: None,
};
const V3_12: CPythonVersion = CPythonVersion {
    major: 3,
    minor: 12,
    micro: None,
};
const V3_15: CPythonVersion = CPythonVersion {
    major: 3,
    minor: 15,
    micro: None,
};
/// The newest minor release whose marker behaviour was measured (docs/compatibility.md).
const NEWEST_KNOWN_MINOR: u32 = 15;

fn is_function_or_line(marker: &str) -> bool {
    matches!(marker, "function__entry" | "function__return" | "line")
}

/// The firing rule for `marker` on an interpreter of `version` whose file `present`s its note.
pub fn firing(marker: &str, version: Option<CPythonVersion>, present: bool) -> Firing {
    if !present {
        return Firing::NotInBinary;
    }
    let Some(v) = version else {
        return Firing::UnknownVersion;
    };
    if v.major != 3 || v.minor > NEWEST_KNOWN_MINOR {
        return Firing::Unverified;
    }
    let same_minor =
        |a: CPythonVersion, b: CPythonVersion| (a.major, a.minor) == (b.major, b.minor);
    match marker {
        "function__entry" if same_minor(v, V3_11) => Firing::OnlyWhenLineEnabled,
        // Measured on 3.15.0: both fire at every frame start and exit (see `explain`).
        "function__entry" | "function__return" if same_minor(v, V3_15) => Firing::Fires,
        // A 3.12–3.14 file with such a note (or 3.15 with line) would be a patched build: do not
        // vouch for it.
        m if is_function_or_line(m) && v >= V3_12 => Firing::Unverified,
        _ => Firing::Fires,
    }
}

/// Detects the CPython version of an interpreter or libpython file.
///
/// The file name gives major.minor (`python3.11`, `libpython3.11.so.1.0`); the `PY_VERSION`
/// string in read-only data gives the micro release and covers files named otherwise. `name`
/// is the file's real name (`python3` is usually a symlink to `python3.X`: the caller resolves
/// it where that is safe).
pub fn detect(name: Option<&str>, data: &[u8], notes: &SdtNotes) -> Option<CPythonVersion> {
    if !looks_like_python(name, notes) {
        return None;
    }
    let from_name = name.and_then(version_from_file_name);
    let from_data = py_version_strings(data)
        .into_iter()
        .find(|v| from_name.is_none_or(|n| (n.major, n.minor) == (v.major, v.minor)));
    from_data.or(from_name)
}

/// Only CPython files are worth scanning for a version: named like one, or carrying python
/// markers.
pub fn looks_like_python(name: Option<&str>, notes: &SdtNotes) -> bool {
    name.and_then(version_from_file_name).is_some()
        || notes.markers.iter().any(|m| m.provider == "python")
}

/// `python3.11`, `python3.11d`, `libpython3.11.so.1.0`, `libpython3.13t.so` → 3.11 / 3.13.
fn version_from_file_name(name: &str) -> Option<CPythonVersion> {
    let rest = name
        .strip_prefix("libpython")
        .or_else(|| name.strip_prefix("python"))?;
    let (major, rest) = rest.split_once('.')?;
    let minor: String = rest.chars().take_while(char::is_ascii_digit).collect();
    Some(CPythonVersion {
        major: major.parse().ok()?,
        minor: minor.parse().ok()?,
        micro: None,
    })
}

/// NUL-delimited strings such as `3.11.2` or `3.13.0rc1` in `.rodata`.
fn py_version_strings(data: &[u8]) -> Vec<CPythonVersion> {
    let Ok(file) = object::File::parse(data) else {
        return Vec::new();
    };
    let Some(rodata) = file.section_by_name(".rodata").and_then(|s| s.data().ok()) else {
        return Vec::new();
    };
    rodata
        .split(|&b| b == 0)
        .filter_map(|s| std::str::from_utf8(s).ok())
        .filter_map(parse_py_version)
        .collect()
}

fn parse_py_version(s: &str) -> Option<CPythonVersion> {
    if s.len() > 16 {
        return None;
    }
    let mut parts = s.splitn(3, '.');
    let major: u32 = parts.next()?.parse().ok()?;
    let minor: u32 = parts.next()?.parse().ok()?;
    let tail = parts.next()?;
    let micro_digits: String = tail.chars().take_while(char::is_ascii_digit).collect();
    let suffix = &tail[micro_digits.len()..];
    let suffix_ok = suffix.is_empty()
        || suffix == "+"
        || ["a", "b", "rc"].iter().any(|p| {
            suffix
                .strip_prefix(p)
                .is_some_and(|n| n.chars().all(|c| c.is_ascii_digit() || c == '+'))
        });
    (major == 3 && minor < 100 && !micro_digits.is_empty() && suffix_ok).then(|| CPythonVersion {
        major,
        minor,
        micro: micro_digits.parse().ok(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(minor: u32) -> Option<CPythonVersion> {
        Some(CPythonVersion {
            major: 3,
            minor,
            micro: Some(0),
        })
    }

    #[test]
    fn version_table() {
        assert_eq!(firing("function__entry", v(10), true), Firing::Fires);
        assert_eq!(
            firing("function__entry", v(11), true),
            Firing::OnlyWhenLineEnabled
        );
        assert_eq!(firing("function__return", v(11), true), Firing::Fires);
        assert_eq!(firing("line", v(13), false), Firing::NotInBinary);
        assert_eq!(firing("line", v(13), true), Firing::Unverified);
        assert_eq!(firing("gc__start", v(13), true), Firing::Fires);
        assert_eq!(firing("audit", v(14), true), Firing::Fires);
        assert_eq!(firing("function__entry", v(14), false), Firing::NotInBinary);
        assert_eq!(firing("function__entry", v(14), true), Firing::Unverified);
        assert_eq!(firing("function__entry", v(15), true), Firing::Fires);
        assert_eq!(firing("function__return", v(15), true), Firing::Fires);
        assert_eq!(firing("line", v(15), true), Firing::Unverified);
        assert_eq!(firing("audit", v(15), true), Firing::Fires);
        // Newer than any measured: judged at run time, never assumed.
        assert_eq!(firing("function__entry", v(16), true), Firing::Unverified);
        assert_eq!(firing("gc__start", v(16), true), Firing::Unverified);
        assert_eq!(firing("audit", None, true), Firing::UnknownVersion);
        assert!(Firing::Fires
            .explain("function__entry", v(15))
            .contains("generator"));
        assert!(Firing::NotInBinary
            .explain("line", v(15))
            .contains("only the function markers"));
    }

    #[test]
    fn names_and_strings() {
        assert_eq!(
            version_from_file_name("libpython3.11.so.1.0").map(|v| v.minor),
            Some(11)
        );
        assert_eq!(
            version_from_file_name("python3.13t").map(|v| v.minor),
            Some(13)
        );
        assert_eq!(version_from_file_name("python3"), None);
        assert_eq!(version_from_file_name("bash"), None);
        assert_eq!(parse_py_version("3.11.2").and_then(|v| v.micro), Some(2));
        assert!(parse_py_version("3.13.0rc1").is_some());
        assert!(parse_py_version("3.1.2.3").is_none());
        assert!(parse_py_version("2.7.18").is_none());
        assert!(parse_py_version("3.11.2 (main)").is_none());
    }
}
