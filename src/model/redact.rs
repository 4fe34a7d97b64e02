//! Secrets out of strings that come from traced processes: command lines (opt-in
//! `--resource-command-line`, and the summary) and audit arguments (opt-in `--audit-args`) can
//! carry passwords, tokens and keys. Values that look like one are replaced by `<redacted>`
//! before anything leaves pyusdt or reaches a terminal.
use std::borrow::Cow;
use std::sync::LazyLock;

use regex::Regex;

pub const REDACTED: &str = "<redacted>";

/// Each rule: a pattern, and what replaces a match (`$name` groups keep what is not secret).
static RULES: LazyLock<Vec<(Regex, &'static str)>> = LazyLock::new(|| {
    // A secret-looking key: password, passwd, pwd, secret, token, api key, access key,
    // private key, credential(s), auth, session, cookie.
    let key = r"(?:pass(?:word|wd)?|pwd|secret|token|api[_-]?key|access[_-]?key|private[_-]?key|credentials?|auth|session|cookie)";
    [
        // PEM private keys, whole.
        (
            r"-----BEGIN [A-Z ]*PRIVATE KEY-----[\s\S]*?(?:-----END [A-Z ]*PRIVATE KEY-----|$)",
            REDACTED,
        ),
        // user:password@ in URLs.
        (
            r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://[^/\s:@]+:)[^/\s@]+@",
            "${scheme}<redacted>@",
        ),
        // Authorization: Bearer/Basic <credentials>.
        (
            r"(?i)(?P<kind>\b(?:bearer|basic)\s+)[A-Za-z0-9._~+/=-]{8,}",
            "${kind}<redacted>",
        ),
        // KEY=value, key: value, "key": "value", --key=value, --key value, -key value.
        (
            &format!(r#"(?i)(?P<key>[\w.-]*{key}[\w.-]*["']?\s*(?:=|:|\s)\s*["']?)[^\s"'&,;]+"#),
            "${key}<redacted>",
        ),
        // Well-known token shapes, wherever they appear.
        (r"\bAKIA[0-9A-Z]{16}\b", REDACTED),
        (r"\bgh[pousr]_[A-Za-z0-9]{36,}\b", REDACTED),
        (r"\bxox[abposr]-[A-Za-z0-9-]{10,}\b", REDACTED),
        (
            r"\beyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\b",
            REDACTED,
        ),
    ]
    .into_iter()
    .map(|(p, r)| (Regex::new(p).expect("built-in redaction pattern"), r))
    .collect()
});

/// `s` with every secret-looking value replaced by `<redacted>` (borrowed when nothing is).
pub fn redact(s: &str) -> Cow<'_, str> {
    let mut out = Cow::Borrowed(s);
    for (re, with) in RULES.iter() {
        if re.is_match(&out) {
            out = Cow::Owned(re.replace_all(&out, *with).into_owned());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(s: &str) -> String {
        redact(s).into_owned()
    }

    #[test]
    fn keys_and_flags() {
        assert_eq!(
            r("app.py --password hunter2 --port 8080"),
            "app.py --password <redacted> --port 8080"
        );
        assert_eq!(r("DB_PASSWORD=s3cr3t x"), "DB_PASSWORD=<redacted> x");
        assert_eq!(
            r("--api-key=abc123 --verbose"),
            "--api-key=<redacted> --verbose"
        );
        assert_eq!(r(r#"{"token": "abc"}"#), r#"{"token": "<redacted>"}"#);
        assert_eq!(r("open /etc/hosts r"), "open /etc/hosts r");
    }

    #[test]
    fn urls_headers_and_token_shapes() {
        assert_eq!(
            r("postgres://app:pa55@db:5432/shop"),
            "postgres://app:<redacted>@db:5432/shop"
        );
        let header = r("curl -H 'X: Bearer abcdefghijk' https://api");
        assert!(
            !header.contains("abcdefghijk") && header.contains("Bearer"),
            "{header}"
        );
        assert_eq!(r("key AKIAABCDEFGHIJKLMNOP end"), "key <redacted> end");
        assert_eq!(r("ghp_abcdefghijklmnopqrstuvwxyz0123456789"), "<redacted>");
        assert_eq!(
            r("-----BEGIN RSA PRIVATE KEY-----\nMIIE\n-----END RSA PRIVATE KEY-----"),
            "<redacted>"
        );
        assert!(matches!(redact("python3 app.py"), Cow::Borrowed(_)));
    }
}
