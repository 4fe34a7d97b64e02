//! The start gate (bpf/gate.h): with a command (`run -- CMD`, `top -- CMD`), a traced process
//! starting a Python program, or forked by one, is held (SIGSTOP in the kernel) until its
//! per-process probes are attached, then continued here. The costly markers are attached to
//! the traced processes alone, and none of their first calls is missed.
use libbpf_rs::{MapCore, MapFlags};

use super::Tracer;

/// How often `close_gate` looks again for a process whose stop is still being sent.
const CLOSE_RETRIES: u32 = 20;

impl Tracer<'_> {
    /// Starts holding traced processes at their start. Only where this process can signal
    /// them by the PIDs the kernel reports (its own PID namespace).
    pub fn open_gate(&mut self) {
        if let Some(bss) = self.skel.maps.bss_data.as_deref_mut() {
            bss.gate_python = true;
            self.gate_open = true;
        }
    }

    /// The processes held at their start now (host PIDs), to be given their probes and then
    /// `release`d. Those whose stop is still being sent are left for the next look.
    pub fn held(&self) -> Vec<u32> {
        if !self.gate_open {
            return Vec::new();
        }
        let map = &self.skel.maps.gated;
        map.keys()
            .filter(|k| {
                map.lookup(k, MapFlags::ANY)
                    .ok()
                    .flatten()
                    .is_some_and(|v| v.first() == Some(&1))
            })
            .filter_map(|k| <[u8; 4]>::try_from(k.as_slice()).ok())
            .map(u32::from_ne_bytes)
            .collect()
    }

    /// Lets a held process go on.
    pub fn release(&self, pid: u32) {
        let _ = self.skel.maps.gated.delete(&pid.to_ne_bytes());
        // SAFETY: kill has no memory-safety preconditions; `pid` was stopped by the gate and
        // is a traced process (a descendant of this one) of this PID namespace.
        unsafe { libc::kill(pid as libc::pid_t, libc::SIGCONT) };
    }

    /// Stops holding processes, and continues every process still held (at shutdown, and
    /// when the tracer is dropped on an error path): none is left stopped.
    pub fn close_gate(&mut self) {
        if !self.gate_open {
            return;
        }
        if let Some(bss) = self.skel.maps.bss_data.as_deref_mut() {
            bss.gate_python = false;
        }
        for _ in 0..CLOSE_RETRIES {
            let keys: Vec<Vec<u8>> = self.skel.maps.gated.keys().collect();
            if keys.is_empty() {
                break;
            }
            // An entry of 0 is a stop being sent: continuing before it would be undone by it.
            for pid in self.held() {
                self.release(pid);
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        for key in self.skel.maps.gated.keys().collect::<Vec<_>>() {
            if let Ok(pid) = <[u8; 4]>::try_from(key.as_slice()) {
                self.release(u32::from_ne_bytes(pid));
            }
        }
        self.gate_open = false;
    }
}
