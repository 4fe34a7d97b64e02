//! Draining the ring buffer: records handed over as they come, `keep_going` asked between
//! batches, and a last drain bounded in time.
use std::time::Duration;

use libbpf_rs::RingBufferBuilder;

use super::{AttachError, Tracer};

/// How long one poll waits when no wakeup comes: the latency bound of a quiet stream,
/// since the BPF side only wakes user space once a CPU has written `wakeup_bytes`.
const DRAIN_INTERVAL: Duration = Duration::from_millis(100);
/// The same while probes attached per process are on: the overhead budget decides between
/// polls when to detach them (src/budget.rs), and each poll it waits costs the process the
/// probes' full cost (a 100 ms wait made a first stretch of 118 ms where 60 ms showed the cost).
const BUDGET_DRAIN_INTERVAL: Duration = Duration::from_millis(25);
/// The longest the last drain of `Tracer::run` goes on while producers still write.
const FINAL_DRAIN: Duration = Duration::from_secs(3);

/// Records handled between two looks at `keep_going` (a few ms of work).
const CONSUME_BATCH: usize = 8192;

impl Tracer<'_> {
    /// Delivers every record to `on_record` until `keep_going` says stop, then drains what is
    /// left. `keep_going` is asked at least every `DRAIN_INTERVAL` (`BUDGET_DRAIN_INTERVAL`
    /// while probes are attached per process).
    pub fn run(
        &self,
        on_record: impl FnMut(&[u8]),
        mut keep_going: impl FnMut() -> bool,
    ) -> Result<(), AttachError> {
        let mut on_record = on_record;
        let mut builder = RingBufferBuilder::new();
        builder
            .add(&self.skel.maps.events, move |data| {
                on_record(data);
                0
            })
            .map_err(AttachError::RingBuffer)?;
        let ring = builder.build().map_err(AttachError::RingBuffer)?;
        let check = |ret: i32| -> Result<(), AttachError> {
            // EINTR: a signal arrived (SIGINT/SIGTERM/SIGCHLD); the loop condition decides.
            if ret < 0 && ret != -libc::EINTR {
                return Err(AttachError::RingBufferPoll(
                    std::io::Error::from_raw_os_error(-ret),
                ));
            }
            Ok(())
        };
        while keep_going() {
            // Waits for a wakeup or the drain timer without consuming: libbpf's poll consumes
            // until the ring is empty, which under a flood the producers outpace for seconds,
            // and `keep_going` (the budget, new processes, exports) would wait as long.
            let mut ready = libc::epoll_event { events: 0, u64: 0 };
            let wait = if self.process_links.borrow().is_empty() {
                DRAIN_INTERVAL
            } else {
                BUDGET_DRAIN_INTERVAL
            };
            // SAFETY: the epoll descriptor belongs to `ring`, alive here; `ready` is one
            // writable event, as maxevents says.
            let n = unsafe {
                libc::epoll_wait(ring.epoll_fd(), &mut ready, 1, wait.as_millis() as i32)
            };
            if n < 0 {
                check(
                    -std::io::Error::last_os_error()
                        .raw_os_error()
                        .unwrap_or(libc::EIO),
                )?;
            }
            // Records below the wakeup threshold are taken here too, on the timer.
            check(ring.consume_raw_n(CONSUME_BATCH))?;
        }
        // What is pending, in batches, until a batch comes back short: not libbpf's
        // consume-until-empty, which a producer faster than this reader (a loop of
        // gc.collect(0)) never lets end, so that a SIGTERM would wait for the flood to stop
        // and the kubelet's SIGKILL lose the counts. Bounded in time; the caller detaches the
        // probes and drains again (`Session::finish`), and then nothing refills the ring.
        let deadline = std::time::Instant::now() + FINAL_DRAIN;
        loop {
            let n = ring.consume_raw_n(CONSUME_BATCH);
            check(n)?;
            if n < CONSUME_BATCH as i32 || std::time::Instant::now() >= deadline {
                return Ok(());
            }
        }
    }
}
