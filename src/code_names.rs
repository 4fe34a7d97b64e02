//! The names of code locations, learnt from the first record of each (`Record::Function`), for
//! the compact records of its later calls (`Record::FunctionRef`): the BPF side copies a
//! function's name and file once per process image, not at every call (bpf: `code_sent`).
use std::collections::HashMap;

use crate::decode::{CodeRef, Event, Record};

/// The BPF side remembers at most this many locations (`code_sent`): more entries here than
/// twice that cannot all be of live processes.
const BPF_REMEMBERS: usize = 65_536;
/// Entries of exited processes are dropped when the table reaches a size, at least this one,
/// then twice what is left: the table stays within twice what live processes use.
const FIRST_PRUNE: usize = 8192;

pub struct CodeNames {
    names: HashMap<CodeRef, (Box<str>, Box<str>)>,
    next_prune: usize,
    /// References whose names were never received (a bug, or a record lost in between).
    pub unresolved: u64,
}

impl Default for CodeNames {
    fn default() -> Self {
        CodeNames {
            names: HashMap::new(),
            next_prune: FIRST_PRUNE,
            unresolved: 0,
        }
    }
}

impl CodeNames {
    /// The event a record carries: a function record's names are learnt, a reference's looked
    /// up. None for records that are not events, and for a reference whose names never arrived
    /// (counted in `unresolved`).
    pub fn event_of<'a>(&'a mut self, record: &'a Record<'a>) -> Option<Event<'a>> {
        match record {
            Record::Event(event) => Some(event.clone()),
            Record::Function { event, code } => {
                if let Event::Function { name, file, .. } = event {
                    self.learn(*code, name, file);
                }
                Some(event.clone())
            }
            Record::FunctionRef { header, code } => {
                let (name, file) = self.resolve(code)?;
                Some(Event::Function {
                    header: *header,
                    name: name.into(),
                    file: file.into(),
                    line: code.line,
                })
            }
            Record::Process(_) | Record::Flow(_) | Record::Exec { .. } => None,
        }
    }

    /// Remembers the names of `code` (again, if the BPF side forgot it had sent them).
    pub fn learn(&mut self, code: CodeRef, name: &str, file: &str) {
        if self.names.len() >= self.next_prune {
            self.prune(|pid| std::path::Path::new(&format!("/proc/{pid}")).exists());
            self.next_prune = (2 * self.names.len()).max(FIRST_PRUNE);
        }
        match self.names.get(&code) {
            Some((n, f)) if **n == *name && **f == *file => {}
            _ => {
                self.names.insert(code, (name.into(), file.into()));
            }
        }
    }

    /// The function name and file of `code`; None (counted) when they were never received.
    pub fn resolve(&mut self, code: &CodeRef) -> Option<(&str, &str)> {
        match self.names.get(code) {
            Some((name, file)) => Some((name, file)),
            None => {
                self.unresolved += 1;
                None
            }
        }
    }

    /// Drops the names of processes `alive` says are gone; everything if that is not enough.
    fn prune(&mut self, alive: impl Fn(u32) -> bool) {
        let mut verdicts: HashMap<u32, bool> = HashMap::new();
        self.names
            .retain(|code, _| *verdicts.entry(code.pid).or_insert_with(|| alive(code.pid)));
        if self.names.len() >= 2 * BPF_REMEMBERS {
            // More than the BPF side can remember: it sends the names again for what it
            // forgot, and what we forget now comes back the same way.
            self.names.clear();
        }
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

    #[test]
    fn references_resolve_to_the_names_sent_first() {
        let mut names = CodeNames::default();
        names.learn(code(1, 0x10), "fib", "/app/fib.py");
        assert_eq!(names.resolve(&code(1, 0x10)), Some(("fib", "/app/fib.py")));
        // Another process, or another image of the same PID (exec: another mm), is not it.
        assert_eq!(names.resolve(&code(2, 0x10)), None);
        let mut other_image = code(1, 0x10);
        other_image.mm += 4096;
        assert_eq!(names.resolve(&other_image), None);
        assert_eq!(names.unresolved, 2);
        // Sent again with other names (the location was reused): the new names win.
        names.learn(code(1, 0x10), "main", "/app/main.py");
        assert_eq!(
            names.resolve(&code(1, 0x10)),
            Some(("main", "/app/main.py"))
        );
    }

    #[test]
    fn pruning_keeps_live_processes() {
        let mut names = CodeNames::default();
        names.learn(code(1, 0x10), "a", "a.py");
        names.learn(code(2, 0x10), "b", "b.py");
        names.prune(|pid| pid == 2);
        assert_eq!(names.names.len(), 1);
        assert_eq!(names.resolve(&code(2, 0x10)), Some(("b", "b.py")));
    }
}
