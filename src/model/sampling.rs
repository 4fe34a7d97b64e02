//! How the probes attached per process (src/pipeline/probes.rs) were sampled under the overhead
//! budget: the table the pipeline writes and the sinks read.
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

/// What the function markers of a process's interpreter do, as reported in the resource, the
/// summary and `list`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FunctionMarkers {
    /// Entries and returns fire for every call (3.8–3.10).
    EntryAndReturn,
    /// 3.11 with --line-mode: entries fire because the line marker is on (slow path).
    LineMode,
    /// A version whose behaviour is not verified: entries are watched for.
    Unverified,
    /// Watched on an unverified version: returns arrived, entries did not.
    EntriesDoNotFire,
}

impl FunctionMarkers {
    pub fn label(self) -> &'static str {
        match self {
            FunctionMarkers::EntryAndReturn => "entry+return",
            FunctionMarkers::LineMode => "entry+return (line mode)",
            FunctionMarkers::Unverified => "entry+return (unverified version)",
            FunctionMarkers::EntriesDoNotFire => "return only (entries never fired)",
        }
    }
}

/// How a process's per-process probes were sampled, shared with the sinks.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sampling {
    /// The current duty ratio (1.0: every call and audit event seen).
    pub ratio: f64,
    /// Share of the time the probes were attached so far.
    pub observed_share: f64,
    /// Seconds the probes were attached so far.
    pub observed_seconds: f64,
    /// The probes' cost measured with them on, as a share of the process's time (mean over
    /// the stretches measured).
    pub measured_share: f64,
    /// What the function markers do, when the process has function probes.
    pub functions: Option<FunctionMarkers>,
    /// Whether its audit marker is attached per process (governed by the budget, if any).
    pub audit: bool,
}

pub type SamplingTable = Rc<RefCell<HashMap<u32, Sampling>>>;
