//! Formatting helpers for humans: durations, counts, and untrusted strings made terminal-safe.
use std::borrow::Cow;
use std::fmt::{self, Write};

/// `45.2 µs`, `1.20 ms`, `2.500 s`.
pub fn duration(ns: u64) -> String {
    Duration(Some(ns)).to_string()
}

/// A duration in ns, formatted without allocating (`None`: the start was not seen).
pub struct Duration(pub Option<u64>);

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            None => f.write_str("start not seen"),
            Some(ns @ 0..=999) => write!(f, "{ns} ns"),
            Some(ns @ 1_000..=999_999) => write!(f, "{:.1} µs", ns as f64 / 1e3),
            Some(ns @ 1_000_000..=999_999_999) => write!(f, "{:.2} ms", ns as f64 / 1e6),
            Some(ns) => write!(f, "{:.3} s", ns as f64 / 1e9),
        }
    }
}

/// `180,002` (or `-1`), written without allocating: the console stream formats one per event.
pub struct Count(pub i64);

impl fmt::Display for Count {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0 < 0 {
            f.write_str("-")?;
        }
        let n = self.0.unsigned_abs();
        // The groups from the most significant: the first as is, the others zero-padded.
        let mut groups = [0u64; 7];
        let mut len = 0;
        let mut rest = n;
        loop {
            groups[len] = rest % 1000;
            len += 1;
            rest /= 1000;
            if rest == 0 {
                break;
            }
        }
        write!(f, "{}", groups[len - 1])?;
        for g in groups[..len - 1].iter().rev() {
            write!(f, ",{g:03}")?;
        }
        Ok(())
    }
}

/// `180,002`.
pub fn count(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Strings from traced processes are untrusted: control characters (escape sequences that
/// could rewrite a terminal) are shown as `\x1b`-style escapes.
pub fn safe(s: &str) -> Cow<'_, str> {
    if !s.chars().any(char::is_control) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if c.is_control() {
            let _ = write!(out, "\\x{:02x}", c as u32);
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_have_thousands_separators() {
        for (n, text) in [
            (0, "0"),
            (999, "999"),
            (1_000, "1,000"),
            (63_852, "63,852"),
            (1_000_007, "1,000,007"),
            (-1_234, "-1,234"),
            (i64::MIN, "-9,223,372,036,854,775,808"),
        ] {
            assert_eq!(Count(n).to_string(), text);
        }
        assert_eq!(count(180_002), "180,002");
    }

    #[test]
    fn control_characters_never_reach_the_terminal() {
        // A module or function name from a traced process that tries to clear the screen.
        assert_eq!(safe("a\u{1b}[2Jb\n"), "a\\x1b[2Jb\\x0a");
        assert_eq!(safe("c\u{9b}31m"), "c\\x9b31m");
        assert!(matches!(safe("plain.name"), Cow::Borrowed(_)));
    }

    #[test]
    fn formats() {
        assert_eq!(duration(450), "450 ns");
        assert_eq!(duration(45_200), "45.2 µs");
        assert_eq!(duration(1_200_000), "1.20 ms");
        assert_eq!(count(180002), "180,002");
        assert_eq!(count(12), "12");
        assert_eq!(safe("ok"), "ok");
        assert_eq!(safe("a\x1b[2Jb\n"), "a\\x1b[2Jb\\x0a");
    }
}
