//! The end of a session: probes detached, the last drain, the closing summary.
use std::io::Write;

use super::Session;
use crate::exit::{CliError, CliResult, Exit};
use crate::report::otlp::OwnStats;
use crate::report::summary::ExportSummary;

impl Session<'_> {
    /// Detaches every probe on the interpreters: markers of attached files and per-process
    /// probes (shutdown). The process tracepoints stay (they only forget state, and report
    /// execs), and the files stay open: the last records and counts may name their audit events.
    fn detach_probes(&mut self) {
        if let Some(f) = &self.functions {
            f.borrow().detach_all(&self.tracer);
        }
        for id in self.attached_ids.drain() {
            self.tracer.detach_links(id);
        }
        self.container_files.clear();
    }

    /// Prints the summary (and writes the JSON summary record); returns an error when the
    /// JSON output could not be written.
    pub fn finish(mut self) -> CliResult<()> {
        // No process is held at its start any more (those held are let go), then probes
        // off, then one more drain: events written until the detach are read (or counted as
        // dropped) and go into the flush below, and none is written during it.
        self.tracer.close_gate();
        self.detach_probes();
        self.trace(|| false)?;
        if let Some(a) = &mut self.kernel_metrics {
            // The last counts, before the summary and the final metrics export.
            a.finish(
                &self.tracer,
                &mut self.sinks,
                &mut self.code_names,
                self.pids_are_ours,
            );
        }
        let mut stats = self.tracer.stats()?;
        if stats.ungated > 0 {
            tracing::warn!(
                "{} processes were not held at their start (too many at once, or the kernel \
                 refused the stop): their first calls may have run without their probes",
                crate::text::count(stats.ungated)
            );
        }
        // Calls whose code names were not known are lost calls, like those the ring dropped.
        stats.function_dropped += self.code_names.unresolved;
        let elapsed = self.started.elapsed().as_secs_f64();
        self.sinks.flush();
        let own = OwnStats {
            received: self.sinks.summary.received(),
            dropped: stats.dropped,
            function_dropped: stats.function_dropped,
            attach_failures: self.attach_failures,
            process_dropped: stats.process_dropped,
            exec_dropped: stats.exec_dropped,
            undecodable: self.undecodable,
            resource_refused: crate::model::env_attributes::counted(),
        };
        let export = self.sinks.otlp.take().map(|o| {
            let (counts, (orphaned, without_start)) = o.finish(&own, self.flush_timeout);
            ExportSummary {
                counts,
                orphaned,
                without_start,
            }
        });
        let mut text = self.sinks.summary.render(&stats, elapsed, export.as_ref());
        if self.code_names.unresolved > 0 {
            text.push_str(&format!(
                "  of the calls dropped, {} because their code's names were not known\n",
                self.code_names.unresolved
            ));
        }
        if self.undecodable > 0 {
            text.push_str(&format!(
                "  {} undecodable records (a bug: please report)\n",
                self.undecodable
            ));
        }
        let mut out = self.terminal.writer();
        let _ = out.write_all(text.as_bytes()).and_then(|()| out.flush());
        if let Some(j) = &mut self.sinks.jsonl {
            j.put(&self.sinks.summary.to_record(&stats, export.as_ref()));
            j.finish()
                .map_err(|e| CliError::new(Exit::Failure, format!("writing --output: {e}")))?;
        }
        Ok(())
    }
}
