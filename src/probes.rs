//! The probe groups a user selects with `--probes`, and what each costs the traced program.
use std::fmt;
use std::str::FromStr;

/// A group of markers traced together.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Probe {
    /// gc__start + gc__done: one event per collection, with its pause.
    Gc,
    /// import__find__load__start + done: one event per module loaded.
    Import,
    /// audit: one event per audit event. Opt-in: enabling it makes the interpreter build an
    /// argument tuple and take a uprobe trap for every audit event (`id()` raises one).
    Audit,
    /// function__entry + function__return: a span per call of at least --min-duration. Opt-in:
    /// every Python call takes two uprobe traps (bench/function_cost.py measures the cost).
    Function,
}

impl Probe {
    pub const ALL: [Probe; 4] = [Probe::Gc, Probe::Import, Probe::Audit, Probe::Function];

    /// The USDT markers of this group, as named in CPython's `Include/pydtrace.d`.
    pub fn markers(self) -> &'static [&'static str] {
        match self {
            // Ends before starts: a start seen before its end's probe exists would stay pushed
            // forever; an end without its start is merely reported without a duration.
            Probe::Gc => &["gc__done", "gc__start"],
            Probe::Import => &["import__find__load__done", "import__find__load__start"],
            Probe::Audit => &["audit"],
            Probe::Function => &["function__return", "function__entry"],
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Probe::Gc => "gc",
            Probe::Import => "import",
            Probe::Audit => "audit",
            Probe::Function => "function",
        }
    }
}

impl fmt::Display for Probe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A non-empty set of probe groups, e.g. `gc,import`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeSet(Vec<Probe>);

impl ProbeSet {
    pub fn iter(&self) -> impl Iterator<Item = Probe> + '_ {
        self.0.iter().copied()
    }
}

impl ProbeSet {
    /// No probe group: for commands that attach only their own programs (`top`).
    pub fn none() -> ProbeSet {
        ProbeSet(Vec::new())
    }
}

impl Default for ProbeSet {
    /// gc and import: their cost was not measurable on a mixed workload.
    fn default() -> Self {
        ProbeSet(vec![Probe::Gc, Probe::Import])
    }
}

impl fmt::Display for ProbeSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<_> = self.0.iter().map(|p| p.name()).collect();
        f.write_str(&names.join(","))
    }
}

impl FromStr for ProbeSet {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let mut set = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let probe = Probe::ALL
                .into_iter()
                .find(|p| p.name() == part)
                .ok_or_else(|| {
                    format!(
                        "unknown probe `{part}`: choose from gc, import, audit, function (comma-separated)"
                    )
                })?;
            if !set.contains(&probe) {
                set.push(probe);
            }
        }
        if set.is_empty() {
            return Err(
                "no probe selected: give at least one of gc, import, audit, function".into(),
            );
        }
        set.sort();
        Ok(ProbeSet(set))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_lists() {
        assert_eq!(
            "audit,gc".parse::<ProbeSet>().unwrap().to_string(),
            "gc,audit"
        );
        assert_eq!("gc, gc".parse::<ProbeSet>().unwrap().to_string(), "gc");
        assert!("gc,functions"
            .parse::<ProbeSet>()
            .unwrap_err()
            .contains("unknown probe `functions`"));
        assert!("".parse::<ProbeSet>().is_err());
        assert_eq!(ProbeSet::default().to_string(), "gc,import");
    }
}
