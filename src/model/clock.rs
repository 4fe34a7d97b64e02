//! Maps the BPF side's CLOCK_MONOTONIC timestamps to wall-clock time and trace-relative seconds.
use std::time::{Duration, SystemTime, UNIX_EPOCH};

#[derive(Debug, Clone, Copy)]
pub struct Clock {
    mono_start_ns: u64,
    /// Wall-clock ns since the Unix epoch at `mono_start_ns`.
    wall_start_ns: u64,
}

impl Clock {
    pub fn now() -> Clock {
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO);
        Clock {
            mono_start_ns: monotonic_ns(),
            wall_start_ns: wall.as_nanos() as u64,
        }
    }

    /// Seconds since the trace started (negative for events stamped before it).
    pub fn relative_secs(&self, mono_ns: u64) -> f64 {
        (mono_ns as f64 - self.mono_start_ns as f64) / 1e9
    }

    /// Nanoseconds since the Unix epoch, as OTLP and JSON consumers want them.
    pub fn unix_nanos(&self, mono_ns: u64) -> u64 {
        self.wall_start_ns
            .wrapping_add(mono_ns.wrapping_sub(self.mono_start_ns))
    }
}

/// `bpf_ktime_get_ns()`'s clock, read from user space.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}
