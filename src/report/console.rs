//! The live console stream, in the spirit of BCC's `ugc`: one line per collection, import and
//! audit event.
use std::io::{self, Write};

use super::clock::Clock;
use super::text::{duration, safe};
use crate::decode::Event;

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

    pub fn write(&mut self, event: &Event<'_>) {
        let h = event.header();
        let t = self.clock.relative_secs(h.end_ns);
        let took = |d: Option<u64>| d.map_or_else(|| "start not seen".to_string(), duration);
        match event {
            Event::Gc {
                generation,
                collected,
                ..
            } => {
                let gen = generation.map_or_else(|| "?".to_string(), |g| g.to_string());
                self.line(format_args!(
                    "{t:>9.4} {:>7} {:>7} {:<6} gen {gen}: {collected} collected, {}",
                    h.pid,
                    h.tid,
                    "gc",
                    took(h.duration_ns())
                ))
            }
            Event::Import { module, found, .. } => {
                let not_found = if *found { "" } else { " NOT FOUND" };
                self.line(format_args!(
                    "{t:>9.4} {:>7} {:>7} {:<6} {}{}{not_found}, {}",
                    h.pid,
                    h.tid,
                    "import",
                    "  ".repeat(h.import_depth as usize),
                    safe(module),
                    took(h.duration_ns())
                ))
            }
            Event::Audit { name, nargs, .. } => {
                let args = nargs.map_or_else(String::new, |n| format!(" ({n} args)"));
                self.line(format_args!(
                    "{t:>9.4} {:>7} {:>7} {:<6} {}{args}",
                    h.pid,
                    h.tid,
                    "audit",
                    safe(name)
                ))
            }
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
