//! The names of code locations, learnt from the first record of each (`Record::Function`), for
//! the compact records of its later calls (`Record::FunctionRef`): the BPF side copies a
//! function's name and file once per process image, not at every call (bpf: `code_sent`).
//!
//! A reference whose names are not here (forgotten below, or a bug) is counted, never given
//! made-up names, and its key is deleted from the BPF map (`forget`), so that the next call of
//! that code sends the names again.
use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use crate::decode::{CodeRef, Event, Record};
use crate::model::location::CodeLocation;
use crate::model::FastHash;

/// Beyond this many entries, all are dropped: four times what the BPF side can remember, so
/// only a process with far more code locations than that gets here. Its references then
/// re-send the names, at the cost of one call per location (counted).
const MAX_ENTRIES: usize = 4 * 65_536;

#[derive(Default)]
pub struct CodeNames {
    names: HashMap<CodeRef, Arc<CodeLocation>, FastHash>,
    /// PIDs found exited at the last `prune_exited`: dropped at the next one, once the ring
    /// buffer has been drained of their records in between.
    exited: HashSet<u32>,
    /// References whose names were not here: calls lost (counted with the dropped calls).
    pub unresolved: u64,
}

impl CodeNames {
    /// The event a record carries: a function record's names are learnt, a reference's looked
    /// up. None for records that are not events, and for a reference whose names are not here
    /// (counted in `unresolved`; the caller deletes its key from the BPF map).
    pub fn event_of<'a>(&'a mut self, record: &'a Record<'a>) -> Option<Event<'a>> {
        match record {
            Record::Event(event) => Some(event.clone()),
            Record::Function { event, code } => match event {
                Event::Function {
                    header, name, file, ..
                } => Some(function_event(*header, self.learn(*code, name, file))),
                _ => Some(event.clone()),
            },
            Record::FunctionRef { header, code } => {
                Some(function_event(*header, self.resolve(code)?))
            }
            // Audit names are the session's to read (src/audit_names.rs).
            Record::AuditRef { .. }
            | Record::Process(_)
            | Record::Flow(_)
            | Record::Exec { .. } => None,
        }
    }

    /// Remembers the names of `code` (again, if the BPF side forgot it had sent them).
    pub fn learn(&mut self, code: CodeRef, name: &str, file: &str) -> &Arc<CodeLocation> {
        if self.names.len() >= MAX_ENTRIES {
            self.names.clear();
        }
        let known = self
            .names
            .entry(code)
            .or_insert_with(|| CodeLocation::new(name, file, code.line));
        if *known.name != *name || *known.file != *file {
            *known = CodeLocation::new(name, file, code.line);
        }
        known
    }

    /// The function name and file of `code`, if known (not counted when not).
    pub fn names_of(&self, code: &CodeRef) -> Option<(&str, &str)> {
        self.names
            .get(code)
            .map(|l| (l.name.as_ref(), l.file.as_ref()))
    }

    /// The location `code` names; None (counted) when its names are not here.
    pub fn resolve(&mut self, code: &CodeRef) -> Option<&Arc<CodeLocation>> {
        let found = self.names.get(code);
        if found.is_none() {
            self.unresolved += 1;
        }
        found
    }

    /// Drops the names of processes that `alive` found exited at the previous call too: a
    /// process's last records may still be in the ring buffer when it is first found gone.
    /// Call it between polls, every second or so, and only when PIDs are this namespace's.
    pub fn prune_exited(&mut self, alive: impl Fn(u32) -> bool) {
        let exited = std::mem::take(&mut self.exited);
        self.names.retain(|code, _| !exited.contains(&code.pid));
        let pids: HashSet<u32> = self.names.keys().map(|c| c.pid).collect();
        self.exited = pids.into_iter().filter(|&pid| !alive(pid)).collect();
    }
}

/// A call of the code at `location`, its names borrowed from it.
fn function_event(header: crate::decode::Header, location: &Arc<CodeLocation>) -> Event<'_> {
    Event::Function {
        header,
        name: Cow::Borrowed(&location.name),
        file: Cow::Borrowed(&location.file),
        line: location.line,
        location: Some(location),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(pid: u32, name_ptr: u64) -> CodeRef {
        CodeRef {
            pid,
            mm: 0xffff_8880_0000_0000,
            name_ptr,
            file_ptr: 0x7f00_0000_1000,
            line: 7,
        }
    }

    /// The function name and file `code` resolves to.
    fn resolved<'a>(names: &'a mut CodeNames, code: &CodeRef) -> Option<(&'a str, &'a str)> {
        names
            .resolve(code)
            .map(|l| (l.name.as_ref(), l.file.as_ref()))
    }

    #[test]
    fn references_resolve_to_the_names_sent_first() {
        let mut names = CodeNames::default();
        names.learn(code(1, 0x10), "fib", "/app/fib.py");
        assert_eq!(
            resolved(&mut names, &code(1, 0x10)),
            Some(("fib", "/app/fib.py"))
        );
        // Another process, or another image of the same PID (exec: another mm), is not it.
        assert_eq!(resolved(&mut names, &code(2, 0x10)), None);
        let mut other_image = code(1, 0x10);
        other_image.mm += 4096;
        assert_eq!(resolved(&mut names, &other_image), None);
        assert_eq!(names.unresolved, 2);
        // Sent again with the same names (the BPF side forgot it had sent them): the same
        // interned location, so its spans and metric series stay shared.
        let first = Arc::clone(names.learn(code(1, 0x10), "fib", "/app/fib.py"));
        let again = names.learn(code(1, 0x10), "fib", "/app/fib.py");
        assert!(Arc::ptr_eq(&first, again));
        // Sent again with other names (the location was reused): the new names win.
        let other = names.learn(code(1, 0x10), "main", "/app/main.py");
        assert_ne!(first.id, other.id);
        assert_eq!(
            resolved(&mut names, &code(1, 0x10)),
            Some(("main", "/app/main.py"))
        );
    }

    #[test]
    fn exited_processes_are_dropped_one_prune_later() {
        let mut names = CodeNames::default();
        names.learn(code(1, 0x10), "a", "a.py");
        names.learn(code(2, 0x10), "b", "b.py");
        // 1 is found gone, but its queued records may still need its names.
        names.prune_exited(|pid| pid == 2);
        assert_eq!(resolved(&mut names, &code(1, 0x10)), Some(("a", "a.py")));
        names.prune_exited(|pid| pid == 2);
        assert_eq!(resolved(&mut names, &code(1, 0x10)), None);
        assert_eq!(resolved(&mut names, &code(2, 0x10)), Some(("b", "b.py")));
    }
}
