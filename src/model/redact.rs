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
    // A secret-looking key word, ending at a separator (so `author` and `bypass` are not
    // `auth` and `pass`): password, passwd, passphrase, pwd, secret, token, api key, access key,
    // private key, credential(s), auth, authorization, session (id), cookie.
    let key = r"(?:pass(?:word|wd|phrase)?|pwd|secret|token|api[_-]?key|access[_-]?key|private[_-]?key|credentials?|auth(?:orization)?|session(?:[_-]?id)?|cookie)";
    [
        // PEM private keys, whole.
        (
            r"-----BEGIN [A-Z ]*PRIVATE KEY-----[\s\S]*?(?:-----END [A-Z ]*PRIVATE KEY-----|$)"
                .to_string(),
            REDACTED,
        ),
        // The password of a URL, also with an empty user, also when the value was cut (`…`).
        (
            r"(?P<head>[a-zA-Z][a-zA-Z0-9+.-]*://[^/\s:@]*:)[^/\s@]+(?P<end>@|…$)".to_string(),
            "${head}<redacted>${end}",
        ),
        // Authorization: Bearer/Basic <credentials>.
        (
            r"(?i)(?P<kind>\b(?:bearer|basic)\s+)[A-Za-z0-9._~+/=-]{8,}".to_string(),
            "${kind}<redacted>",
        ),
        // KEY=value, key: value, "key": "value", --key=value: the value up to a space or quote.
        (
            format!(r#"(?i)(?P<key>[\w.-]*{key}(?:[_.-][\w.-]*)?["']?\s*[=:]\s*["']?)[^\s"']+"#),
            "${key}<redacted>",
        ),
        // --key value, -key value (a flag, then a value that is not another flag).
        (
            format!(r"(?i)(?P<key>(?:^|\s)--?[\w-]*{key}(?:[_-][\w-]*)?\s+)[^\s-]\S*"),
            "${key}<redacted>",
        ),
        // Well-known token shapes, wherever they appear.
        (r"\bAKIA[0-9A-Z]{16}\b".to_string(), REDACTED),
        (r"\bgh[pousr]_[A-Za-z0-9]{36,}\b".to_string(), REDACTED),
        (r"\bgithub_pat_[A-Za-z0-9_]{22,}\b".to_string(), REDACTED),
        (r"\bxox[abposr]-[A-Za-z0-9-]{10,}\b".to_string(), REDACTED),
        (
            r"\beyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\b".to_string(),
            REDACTED,
        ),
    ]
    .into_iter()
    .map(|(p, r)| (Regex::new(&p).expect("built-in redaction pattern"), r))
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
        assert_eq!(r("--password=abc;def x"), "--password=<redacted> x");
        // Not secrets: words that merely contain a key word, and flags after flags.
        for s in [
            "pytest tests/test_auth.py -k login",
            "git log --author Alice",
            "python bypass.py out.txt",
            "app --no-session --verbose",
        ] {
            assert_eq!(r(s), s);
        }
    }

    #[test]
    fn urls_headers_and_token_shapes() {
        assert_eq!(
            r("postgres://app:pa55@db:5432/shop"),
            "postgres://app:<redacted>@db:5432/shop"
        );
        assert_eq!(
            r("redis://:s3cret@cache:6379/0"),
            "redis://:<redacted>@cache:6379/0"
        );
        // An audit argument cut at 64 characters, before the `@`.
        assert_eq!(
            r("postgresql+psycopg2://analytics_service_user:Xk29fj…"),
            "postgresql+psycopg2://analytics_service_user:<redacted>…"
        );
        assert_eq!(
            r("github_pat_11ABCDEFG0123456789_abcdefghijklmnop"),
            "<redacted>"
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
