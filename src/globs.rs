//! Comma-separated shell-style globs given on the command line or in the configuration file
//! (`--audit-logs open,subprocess.*`, `--function-include 'app.*'`).
use globset::{Glob, GlobSet, GlobSetBuilder};

/// A pattern that is not a glob.
#[derive(Debug, thiserror::Error)]
#[error("bad {what} `{pattern}`: {source} (give comma-separated shell-style globs, e.g. `open,subprocess.*`)")]
pub struct PatternError {
    /// What the patterns select, as the user named it (`audit event pattern`, `--function-include`).
    pub what: &'static str,
    pub pattern: String,
    #[source]
    pub source: globset::Error,
}

/// The globs of `list` (empty items skipped); `what` names them in an error.
pub fn parse(list: &str, what: &'static str) -> Result<GlobSet, PatternError> {
    let error = |pattern: &str, source| PatternError {
        what,
        pattern: pattern.to_string(),
        source,
    };
    let mut builder = GlobSetBuilder::new();
    for pattern in list.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        builder.add(Glob::new(pattern).map_err(|e| error(pattern, e))?);
    }
    builder.build().map_err(|e| error(list, e))
}

#[cfg(test)]
mod tests {
    #[test]
    fn globs_and_what_a_bad_one_says() {
        let set = super::parse("open, subprocess.*,,", "audit event pattern").unwrap();
        assert!(set.is_match("subprocess.Popen") && set.is_match("open"));
        assert!(!set.is_match("socket.connect"));
        let e = super::parse("ok,[", "--function-include").unwrap_err();
        assert!(
            e.to_string().starts_with("bad --function-include `[`: "),
            "{e}"
        );
        assert!(e.to_string().contains("shell-style globs"), "{e}");
    }
}
