//! The event loop: ring-buffer records routed to the sinks (with audit and code names
//! resolved), and the periodic tasks run between polls (per-process probes, in-kernel
//! aggregates, name pruning, flushes, telemetry export).
use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::{Duration, Instant};

use super::Session;
use crate::decode;
use crate::exit::CliResult;
use crate::model::resource::ProcessFacts;
use crate::report::otlp::OwnStats;
use crate::report::summary::Summary;
use crate::report::Sinks;

/// How often the console stream and JSON lines are flushed.
const FLUSH_INTERVAL: Duration = Duration::from_millis(200);

impl Session<'_> {
    /// Delivers events until `keep_going` returns false, then drains what is pending.
    /// Output is flushed every `FLUSH_INTERVAL`, not per event; telemetry is shipped when due.
    pub fn trace(&mut self, mut keep_going: impl FnMut() -> bool) -> CliResult<()> {
        let builds_resources = self.sinks.otlp.is_some() || self.sinks.prom.is_some();
        let sinks = RefCell::new(&mut self.sinks);
        let undecodable = Cell::new(self.undecodable);
        let code_names = RefCell::new(&mut self.code_names);
        let mut flushed_at = Instant::now();
        let tracer = &self.tracer;
        let functions = self.functions.as_ref();
        let pids_are_ours = self.pids_are_ours;
        let follow_processes = self.follow_processes;
        // Processes that sent their first event: candidates for function probes (`agent`).
        let new_pids = RefCell::new(Vec::new());
        let execs = Rc::clone(&self.execs);
        let attach_failures = self.attach_failures;
        let mut kernel_metrics = self.kernel_metrics.as_mut();
        let own = |summary: &Summary| {
            let stats = tracer.stats().unwrap_or_default();
            OwnStats {
                received: summary.received(),
                dropped: stats.dropped,
                function_dropped: stats.function_dropped + code_names.borrow().unresolved,
                attach_failures,
                process_dropped: stats.process_dropped,
                exec_dropped: stats.exec_dropped,
                undecodable: undecodable.get(),
                resource_refused: crate::model::env_attributes::counted(),
            }
        };
        let mut pruned_at = Instant::now();
        tracer.run(
            |data| match decode::decode(data) {
                Ok(record) => {
                    if let decode::Record::Process(p) = &record {
                        // Once per description, whichever sinks build its resource.
                        if builds_resources {
                            let env = ProcessFacts::environment_of(p, pids_are_ours);
                            crate::model::env_attributes::count(&env.refused);
                        }
                    }
                    match &record {
                        decode::Record::Process(p) if functions.is_some() => {
                            new_pids.borrow_mut().push(p.pid);
                        }
                        // `agent`: looked at for new files. `run`: a wakeup of the start gate.
                        decode::Record::Exec { pid } if !follow_processes => {
                            execs.borrow_mut().push(*pid)
                        }
                        decode::Record::AuditRef {
                            header,
                            nargs,
                            image,
                            name_vaddr,
                        } => {
                            let name = tracer.audit_name(*image, *name_vaddr);
                            let event = decode::Event::Audit {
                                header: *header,
                                name: std::borrow::Cow::Borrowed(&name),
                                nargs: *nargs,
                                args: None,
                            };
                            return sinks.borrow_mut().handle(&decode::Record::Event(event));
                        }
                        decode::Record::Function { .. } | decode::Record::FunctionRef { .. } => {
                            let mut names = code_names.borrow_mut();
                            if let Some(event) = names.event_of(&record) {
                                return sinks.borrow_mut().handle(&decode::Record::Event(event));
                            }
                            if let decode::Record::FunctionRef { code, .. } = &record {
                                // Its next call sends the names again.
                                tracer.forget_code(code);
                            }
                            if names.unresolved == 1 {
                                tracing::warn!(
                                    "a call whose code's names are not known was dropped \
                                     (counted with the dropped calls; further ones not logged)"
                                );
                            }
                            return;
                        }
                        _ => {}
                    }
                    sinks.borrow_mut().handle(&record)
                }
                Err(e) => {
                    undecodable.set(undecodable.get() + 1);
                    if undecodable.get() == 1 {
                        tracing::error!(
                            "undecodable ring buffer record: {e} (counted; further ones not logged)"
                        );
                    }
                }
            },
            || {
                // Processes held at their start (`run`'s gate) get their probes, and go on, at
                // once: each poll, not each look of the budget.
                if let Some(f) = functions {
                    for pid in tracer.held() {
                        f.borrow_mut().offer_started(tracer, pid);
                        tracer.release(pid);
                    }
                }
                if let Some(f) = functions.filter(|f| f.borrow_mut().due()) {
                    let mut f = f.borrow_mut();
                    if pids_are_ours {
                        // A process that sent its first event runs an interpreter now, even if
                        // it was something else (`sh -c 'exec python3 …'`) when last looked at.
                        for pid in std::mem::take(&mut *new_pids.borrow_mut()) {
                            f.offer(tracer, pid, true);
                        }
                        if follow_processes {
                            for pid in tracer.traced_pids() {
                                f.offer(tracer, pid, false);
                            }
                        }
                    }
                    f.tick(tracer, pids_are_ours);
                }
                let prune = pids_are_ours && pruned_at.elapsed() >= Duration::from_secs(1);
                let mut s = sinks.borrow_mut();
                if let Some(a) = kernel_metrics.as_deref_mut() {
                    // Before names are pruned: an exited process's calls are read with them.
                    a.read(
                        tracer,
                        &mut s,
                        &mut code_names.borrow_mut(),
                        pids_are_ours,
                        prune,
                    );
                }
                // Between polls, once a second: the names of processes gone since the last time.
                if prune {
                    code_names
                        .borrow_mut()
                        .prune_exited(crate::discover::process::is_alive);
                    pruned_at = Instant::now();
                }
                if flushed_at.elapsed() >= FLUSH_INTERVAL {
                    s.flush();
                    flushed_at = Instant::now();
                }
                let Sinks {
                    otlp,
                    summary,
                    prom,
                    ..
                } = &mut **s;
                if let Some(o) = otlp {
                    o.tick(&|| own(summary));
                }
                if let Some(p) = prom {
                    // Asked for only when due (once a second), not per poll.
                    p.tick(&|| (own(summary), otlp.as_ref().map(|o| o.export_stats())));
                }
                keep_going()
            },
        )?;
        sinks.borrow_mut().flush();
        self.undecodable = undecodable.get();
        Ok(())
    }
}
