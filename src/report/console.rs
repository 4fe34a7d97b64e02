//! The live console stream, in the spirit of BCC's `ugc`: one line per collection, import and
//! audit event.
use std::io::{self, Write};

use crate::decode::Event;
use crate::model::clock::Clock;
use crate::text::{safe, Count, Duration};

pub struct Console {
    out: Box<dyn Write>,
    clock: Clock,
    /// A write failed (closed pipe): stop writing, keep tracing.
    broken: bool,
}

impl Console {
    pub fn new(out: Box<dyn Write>, clock: Clock) -> Console {
        let mut c = Console {
            out,
            clock,
            broken: false,
        };
        c.line(format_args!(
            "{:>9} {:>7} {:>7} {:<6} DETAIL",
            "TIME(s)", "PID", "TID", "EVENT"
        ));
        c
    }

    /// One line per event; formatted straight into the buffered writer (no allocation).
    pub fn write(&mut self, event: &Event<'_>) {
        let h = event.header();
        let t = self.clock.relative_secs(h.end_ns);
        let took = Duration(h.duration_ns());
        match event {
            Event::Gc {
                generation,
                collected,
                ..
            } => match generation {
                Some(g) => self.line(format_args!(
                    "{t:>9.4} {:>7} {:>7} gc     gen {g}: {} collected, {took}",
                    h.pid,
                    h.tid,
                    Count(*collected)
                )),
                None => self.line(format_args!(
                    "{t:>9.4} {:>7} {:>7} gc     gen ?: {} collected, {took}",
                    h.pid,
                    h.tid,
                    Count(*collected)
                )),
            },
            Event::Import { module, found, .. } => {
                let not_found = if *found { "" } else { " NOT FOUND" };
                let indent = 2 * usize::from(h.depth);
                self.line(format_args!(
                    "{t:>9.4} {:>7} {:>7} import {:indent$}{}{not_found}, {took}",
                    h.pid,
                    h.tid,
                    "",
                    safe(module)
                ))
            }
            Event::Function {
                name, file, line, ..
            } => {
                let indent = 2 * usize::from(h.depth);
                self.line(format_args!(
                    "{t:>9.4} {:>7} {:>7} call   {:indent$}{}:{}:{line}, {took}",
                    h.pid,
                    h.tid,
                    "",
                    safe(file),
                    safe(name)
                ))
            }
            Event::Audit { name, nargs, .. } => match nargs {
                Some(n) => self.line(format_args!(
                    "{t:>9.4} {:>7} {:>7} audit  {} ({n} args)",
                    h.pid,
                    h.tid,
                    safe(name)
                )),
                None => self.line(format_args!(
                    "{t:>9.4} {:>7} {:>7} audit  {}",
                    h.pid,
                    h.tid,
                    safe(name)
                )),
            },
        }
    }

    fn line(&mut self, args: std::fmt::Arguments<'_>) {
        if self.broken {
            return;
        }
        if writeln!(self.out, "{args}").is_err() {
            self.broken = true;
        }
    }

    pub fn flush(&mut self) -> io::Result<()> {
        if self.broken {
            return Ok(());
        }
        self.out.flush()
    }
}
