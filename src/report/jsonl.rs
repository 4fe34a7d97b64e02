//! `--output FILE`: every event as one JSON object per line, then a closing summary record.
use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::Path;

use serde::Serialize;

use crate::decode::Event;
use crate::model::clock::Clock;

pub struct JsonLines {
    out: BufWriter<File>,
    clock: Clock,
    /// The first write error, reported at the end instead of per event.
    error: Option<io::Error>,
}

/// One event as written. `type` is `gc`, `import` or `audit`.
#[derive(Serialize)]
struct Record<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    /// End of the event, ns since the Unix epoch.
    time_unix_nano: u64,
    /// CLOCK_MONOTONIC ns of the start marker (`null` when it was not seen) and of the end.
    start_ns: Option<u64>,
    end_ns: u64,
    duration_ns: Option<u64>,
    pid: u32,
    tid: u32,
    depth: u8,
    /// Where it was seen: `usdt`, or a hook point's `symbol_table`, `exported_symbol`,
    /// `derived` (docs/compatibility.md).
    source: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    generation: Option<Option<i32>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    collected: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    module: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    found: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    nargs: Option<Option<i64>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    file: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    line: Option<i32>,
}

impl JsonLines {
    pub fn create(path: &Path, clock: Clock) -> io::Result<JsonLines> {
        Ok(JsonLines {
            out: BufWriter::with_capacity(256 * 1024, File::create(path)?),
            clock,
            error: None,
        })
    }

    pub fn write(&mut self, event: &Event<'_>) {
        let h = event.header();
        let mut r = Record {
            kind: "",
            time_unix_nano: self.clock.unix_nanos(h.end_ns),
            start_ns: h.start_ns,
            end_ns: h.end_ns,
            duration_ns: h.duration_ns(),
            pid: h.pid,
            tid: h.tid,
            depth: h.depth,
            source: h.source.label(),
            generation: None,
            collected: None,
            module: None,
            found: None,
            name: None,
            nargs: None,
            file: None,
            line: None,
        };
        match event {
            Event::Gc {
                generation,
                collected,
                ..
            } => {
                r.kind = "gc";
                r.generation = Some(*generation);
                r.collected = Some(*collected);
            }
            Event::Import { module, found, .. } => {
                r.kind = "import";
                r.module = Some(module);
                r.found = Some(*found);
            }
            Event::Function {
                name, file, line, ..
            } => {
                r.kind = "function";
                r.name = Some(name);
                r.file = Some(file);
                r.line = Some(*line);
            }
            Event::Audit { name, nargs, .. } => {
                r.kind = "audit";
                r.name = Some(name);
                r.nargs = Some(*nargs);
            }
        }
        self.put(&r);
    }

    /// Writes any serialisable record on its own line (used for the closing summary).
    pub fn put<T: Serialize>(&mut self, record: &T) {
        if self.error.is_some() {
            return;
        }
        let res = serde_json::to_writer(&mut self.out, record)
            .map_err(io::Error::from)
            .and_then(|()| self.out.write_all(b"\n"));
        if let Err(e) = res {
            self.error = Some(e);
        }
    }

    /// Flushes, keeping a failure for `finish` to report.
    pub fn flush_quietly(&mut self) {
        if self.error.is_none() {
            if let Err(e) = self.out.flush() {
                self.error = Some(e);
            }
        }
    }

    /// Flushes; returns the first error met since the file was opened.
    pub fn finish(&mut self) -> io::Result<()> {
        self.flush_quietly();
        match self.error.take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}
