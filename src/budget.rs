//! The overhead budget (`--max-overhead PCT`) of the probes attached per process
//! (src/pipeline/probes.rs): function probes, the governed audit marker, `top`'s
//! counter.
//!
//! Every Python call under function probes takes uprobe traps (and every audit event a tuple
//! and a trap), so a call-heavy process can run tens of times slower. pyusdt measures what the
//! probes cost each process: a uprobe trap and the BPF program run in the kernel, in the
//! process's own context, so they show as its system time (above what it spends there with the
//! probes off). When that share of its time exceeds
//! the budget, pyusdt detaches the process's function probes and attaches them again in short
//! windows: on for `ON_WINDOW`, off long enough that on average the cost stays within the
//! budget. The kernel releases the semaphores while they are detached, so the interpreter does
//! not even call the markers. The share of time the probes were on is exported, so that counts
//! can be scaled.
//!
//! A process whose probes take a share p of its time while on, sampled at duty ratio r, keeps
//! 1 − r·p of its untraced throughput: r = budget / p keeps the loss within the budget.
//!
//! The budget is kept as an account, not only as a ratio: each process earns the budget's
//! share of the time it is followed, and pays what its probes were measured to cost; the probes
//! are attached again only when the balance covers a window. So what a ratio alone would let
//! through is paid back: the first stretch, on until the cost is known, the ends of windows
//! that ran late, and the switches themselves. A short process cannot pay back its own first
//! stretch: the balance of its kind (the same interpreter running the same program) is carried
//! to the kind's next process, which then starts detached and waits its turn, so that many
//! short processes (a test runner's, a cron job's) pay the budget together, as one long one
//! would.
//!
//! Switching is not instant: detaching a uprobe takes 24–140 ms here (the kernel removes the
//! breakpoints and clears the semaphore first, then waits for RCU grace periods), attaching
//! 5–17 ms, against a 100 ms window. Neither belongs to a phase: the probes are measured from
//! the end of an attach to the decision to detach, the process's own kernel time from the end of
//! a detach to the decision to attach (`switched` reports the ends), and what a switch cost the
//! process is charged to the account: an attach at its measured share, a detach at no less
//! than the process's known share for its whole length (the breakpoints of links not yet
//! released stay in, which its system time does not show whole).
//!
//! System time comes in clock ticks of 10 ms, charged whole to what the process was doing when
//! the tick came, so a 100 ms window's share is off by tens of percent either way. The account
//! is charged each window's own measurement (unbiased: the noise cancels over windows), while
//! the expected cost of the next window follows a moving average of the measured shares.
use std::time::{Duration, Instant};

/// How long the probes stay on in a sampling window (the cost is measured over it).
pub const ON_WINDOW: Duration = Duration::from_millis(100);
/// How long an always-on process runs before its cost is measured when the evidence is thin.
const CHECK_EVERY: Duration = Duration::from_secs(1);
/// System time misses part of what the probes cost: the interpreter prepares the markers'
/// arguments in user space (names as UTF-8, the line number), and each trap leaves the caches
/// colder. bench/budget.py measured the function probes' true share of a call-heavy process's
/// time (1 − untraced/traced throughput: 0.96) at 1.25× its system-time share (0.77), so the
/// measured share is scaled by this much.
pub const FUNCTION_USER_SPACE_FACTOR: f64 = 1.25;
/// The same for the audit marker, whose events make the interpreter build an argument tuple
/// first: bench/audit_heavy.py for 5 s under every audit event ran at 0.38× its untraced
/// throughput (probes: 62 % of its time) with 2.1 s system and 2.9 s user time (42 %).
pub const AUDIT_USER_SPACE_FACTOR: f64 = 1.5;
/// The share of the budget the account earns: the budget is a ceiling, and the cost is
/// measured from clock ticks (each window's share is off by tens of percent either way), so
/// the account aims 15 % under it rather than at it.
const EARN_SHARE: f64 = 0.85;
/// The longest a process's probes stay detached: a window at least every 50 s, whatever the
/// balance, so that the process stays visible (with a budget below 0.2 % this is what limits).
const MAX_OFF: Duration = Duration::from_secs(50);
/// The smallest duty ratio reported: 100 ms in `MAX_OFF`.
const MIN_RATIO: f64 = 0.002;
/// Weight of the newest window's share in the moving average (a quarter: the tick noise of
/// one window shrinks to about 40 %, and a changed workload is followed within a few windows).
const SMOOTHING: f64 = 0.25;
/// System time a short stretch must show before an always-on process is judged on it (five
/// clock ticks: a process's own start-up, reading files, shows less).
const MIN_EVIDENCE_NS: u64 = 50_000_000;
/// Sooner, when the stretch is mostly system time: three ticks at 40 % of the time or more.
/// Python's start-up spends 15–30 % of its time in the kernel (stdlib imports, warm cache);
/// fib under function probes 60–75 %, id() under the audit marker 60 %. Each tick the probes
/// stay on costs a short process as much as its work: a 0.2 s process paid 1.6× its time for
/// the 120 ms it took to gather five ticks.
const QUICK_EVIDENCE_NS: u64 = 30_000_000;
const QUICK_EVIDENCE_SHARE: f64 = 0.4;
/// The shortest stretch with the probes off that says how much kernel time a process spends
/// of its own (subtracted from what the next windows measure).
const BASELINE_AFTER: Duration = Duration::from_millis(250);
/// The shortest stretch with the probes on that says what they cost a process's kind.
const LEARN_AFTER: Duration = Duration::from_millis(40);
/// The most debt a kind carries to its next process: a second of probe time, so that one
/// costly start (a process on for its first second) is paid back without starving the kind.
const MAX_CARRIED_DEBT_NS: f64 = 1e9;

/// What to do with a process's function probes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Switch {
    Attach,
    Detach,
}

/// The budget state of one process.
#[derive(Debug, Clone)]
pub struct ProcessBudget {
    /// Cost share allowed (0.05 = 5 %), or `None`: always on.
    max_share: Option<f64>,
    /// What the measured (system-time) share is scaled by: `*_USER_SPACE_FACTOR`.
    user_space_factor: f64,
    on: bool,
    /// When the current phase (on or off) began, and the process's time counter then.
    phase_start: Instant,
    phase_cost: u64,
    /// Share of its time the process spends in the kernel with the probes off (measured in
    /// the off phases; 0 until then): not the probes' doing.
    baseline_share: f64,
    /// Duty ratio aimed at: 1.0 while unsampled.
    ratio: f64,
    /// Total time the probes were attached, and since when the process is followed.
    on_time: Duration,
    followed_since: Instant,
    /// The last measured cost share with the probes on.
    pub measured_share: f64,
    /// Sum of measured shares × the seconds each was measured over, and those seconds: the
    /// mean cost share while on (the last one alone can be a quiet stretch at exit).
    measured_weighted: f64,
    measured_seconds: f64,
    /// Moving average of the measured shares (see the module's comment).
    smoothed_share: Option<f64>,
    /// What the process's kind was measured to cost before (`learned`), until its own windows
    /// say.
    prior_share: Option<f64>,
    /// The account: the balance brought from the process's kind, and what its probes cost so
    /// far (ns of its time).
    carried_ns: f64,
    spent_ns: f64,
    /// A switch asked for by `tick` and not yet reported done by `switched`, and when it was
    /// asked for.
    switching: Option<Switch>,
    /// When the probes were last detached.
    off_since: Instant,
}

impl ProcessBudget {
    /// A process whose probes were just attached, at `now`, with `cost_ns` of (system) time
    /// so far; `user_space_factor`: see `FUNCTION_USER_SPACE_FACTOR`.
    pub fn new(
        max_share: Option<f64>,
        user_space_factor: f64,
        now: Instant,
        cost_ns: u64,
    ) -> ProcessBudget {
        ProcessBudget {
            max_share,
            user_space_factor,
            on: true,
            phase_start: now,
            phase_cost: cost_ns,
            baseline_share: 0.0,
            ratio: 1.0,
            on_time: Duration::ZERO,
            followed_since: now,
            measured_share: 0.0,
            measured_weighted: 0.0,
            measured_seconds: 0.0,
            smoothed_share: None,
            prior_share: None,
            carried_ns: 0.0,
            spent_ns: 0.0,
            switching: None,
            off_since: now,
        }
    }

    /// A process of a kind (the same interpreter running the same program) whose probes were
    /// measured before at `share` of its time, and whose earlier processes left `carried_ns`
    /// on the account (`settle`; negative: a debt). A costly kind starts detached, sampled
    /// from its start: its first window comes when the balance covers one, so that a process
    /// too short for the budget to converge (a command-line tool, a test worker) pays no more
    /// than the budget either. A cheap kind starts as `new` does.
    pub fn learned(
        max_share: f64,
        user_space_factor: f64,
        now: Instant,
        cost_ns: u64,
        share: f64,
        carried_ns: f64,
    ) -> ProcessBudget {
        let mut b = ProcessBudget::new(Some(max_share), user_space_factor, now, cost_ns);
        let ratio = (max_share / share.max(f64::MIN_POSITIVE)).clamp(MIN_RATIO, 1.0);
        if ratio >= 1.0 {
            return b;
        }
        b.ratio = ratio;
        b.on = false;
        b.prior_share = Some(share);
        b.carried_ns = carried_ns;
        b
    }

    /// What the probes cost the process, as a share of its time, as far as known at `now`:
    /// the moving average of its measured windows, else the current stretch with the probes
    /// on once it is `LEARN_AFTER` long. For `learned` processes of the same kind.
    pub fn known_share(&self, now: Instant, cost_ns: u64) -> Option<f64> {
        if self.smoothed_share.is_some() {
            return self.smoothed_share;
        }
        let elapsed = now.duration_since(self.phase_start);
        if !self.on || self.switching.is_some() || elapsed < LEARN_AFTER {
            return None;
        }
        Some(self.share_over(elapsed, cost_ns))
    }

    /// Whether the probes are attached.
    pub fn is_on(&self) -> bool {
        self.on
    }

    /// The duty ratio aimed at (1.0: every call is seen).
    pub fn ratio(&self) -> f64 {
        self.ratio
    }

    /// Share of the followed time the probes were attached, up to `now`.
    pub fn observed_share(&self, now: Instant) -> f64 {
        let total = now.duration_since(self.followed_since).as_secs_f64();
        if total <= 0.0 {
            return 1.0;
        }
        (self.observed(now).as_secs_f64() / total).min(1.0)
    }

    /// Time the probes were attached, up to `now`.
    pub fn observed(&self, now: Instant) -> Duration {
        let current = if self.on {
            now.duration_since(self.phase_start)
        } else {
            Duration::ZERO
        };
        self.on_time + current
    }

    /// The account at `now`, in ns of the process's time: what the budget allowed since the
    /// process is followed, plus what its kind carried, less what the probes cost.
    pub fn balance_ns(&self, now: Instant) -> f64 {
        let earned = self.max_share.unwrap_or(1.0)
            * EARN_SHARE
            * now.duration_since(self.followed_since).as_nanos() as f64;
        earned + self.carried_ns - self.spent_ns
    }

    /// What one window is expected to cost, in ns.
    fn window_cost_ns(&self) -> f64 {
        let share = self.smoothed_share.or(self.prior_share).unwrap_or(1.0);
        share * ON_WINDOW.as_nanos() as f64
    }

    /// Looks at the process at `now`, whose probes can have cost at most `cost_ns` so far (its
    /// system time); says when to switch its probes. The caller then switches them and calls
    /// `switched`.
    pub fn tick(&mut self, now: Instant, cost_ns: u64) -> Option<Switch> {
        if self.switching.is_some() {
            return None;
        }
        let elapsed = now.duration_since(self.phase_start);
        let Some(max) = self.max_share else {
            // No budget: the cost is still measured, for the summary.
            if elapsed >= ON_WINDOW {
                self.measure(elapsed, cost_ns);
                self.on_time += elapsed;
                self.start_phase(true, now, cost_ns);
            }
            return None;
        };
        if !self.on {
            if self.balance_ns(now) < self.window_cost_ns()
                && now.duration_since(self.off_since) < MAX_OFF
            {
                return None;
            }
            // The process's own kernel time, from a stretch long enough to tell it: 25 clock
            // ticks. A short one tells little, and the first one of a process started
            // detached is its start-up, reading files (15-30 % in the kernel for Python's):
            // taken as its own, it would hide that much of the next window's cost.
            if elapsed >= BASELINE_AFTER {
                let share =
                    cost_ns.saturating_sub(self.phase_cost) as f64 / elapsed.as_nanos() as f64;
                self.baseline_share = share.min(1.0);
            }
            self.switching = Some(Switch::Attach);
            self.start_phase(true, now, cost_ns);
            return Some(Switch::Attach);
        }
        if self.ratio >= 1.0 {
            // System time comes in clock ticks (10 ms): an always-on process is judged on a
            // short stretch only when the evidence is clear (5 ticks, or 3 making up most of
            // the stretch), else after a second, so that one busy tick of its own does not
            // switch its probes off.
            let evidence = cost_ns.saturating_sub(self.phase_cost);
            let quick = evidence >= QUICK_EVIDENCE_NS
                && evidence as f64 >= QUICK_EVIDENCE_SHARE * elapsed.as_nanos() as f64;
            let clear = (evidence >= MIN_EVIDENCE_NS || quick) && elapsed >= LEARN_AFTER;
            if !clear && elapsed < CHECK_EVERY {
                return None;
            }
        } else if elapsed < ON_WINDOW {
            return None;
        }
        self.measure(elapsed, cost_ns);
        self.on_time += elapsed;
        let smoothed = self.smoothed_share.unwrap_or(self.measured_share);
        self.ratio = (max / smoothed.max(f64::MIN_POSITIVE)).clamp(MIN_RATIO, 1.0);
        if self.ratio >= 1.0 {
            // Within budget: stay on, measure the next stretch.
            self.start_phase(true, now, cost_ns);
            return None;
        }
        self.off_since = now;
        self.start_phase(false, now, cost_ns);
        self.switching = Some(Switch::Detach);
        Some(Switch::Detach)
    }

    /// The switch `tick` asked for is done, at `now`, with `cost_ns` of system time so far:
    /// the phase it began is measured from here, and what the process spent in the kernel
    /// during the switch, above its own share, is charged to the account.
    pub fn switched(&mut self, now: Instant, cost_ns: u64) {
        if let Some(switch) = self.switching.take() {
            let elapsed = now.duration_since(self.phase_start);
            let mut share = self.share_over(elapsed, cost_ns);
            if switch == Switch::Detach {
                // Until the kernel is done, the probes are on as far as the account knows: a
                // detach releases its links one after the other, each waiting for grace
                // periods, and their breakpoints stay until then, which the system time of
                // the detach does not show whole (short processes paid 140-190 ms for a
                // 100 ms window and its 100 ms detach, where its system time said 110).
                let known = self.smoothed_share.or(self.prior_share).unwrap_or(0.0);
                share = share.max(known);
            }
            self.spent_ns += share * elapsed.as_nanos() as f64;
            self.start_phase(self.on, now, cost_ns);
        }
    }

    /// The process exited (noticed at `now`): what it leaves on the account for the next
    /// process of its kind. A stretch with the probes on since the last look is charged at
    /// the known share; a credit is kept up to one window's cost, a debt up to
    /// `MAX_CARRIED_DEBT_NS`.
    pub fn settle(&mut self, now: Instant) -> f64 {
        let share = self.smoothed_share.or(self.prior_share).unwrap_or(0.0);
        let since = now.duration_since(self.phase_start);
        let unmeasured = match self.switching {
            None if self.on => since,
            None => Duration::ZERO,
            // A switch under way when the process exited: the probes fire during an attach
            // from when the breakpoints are in, and during a detach until they are out
            // (measured here: the first 40 ms of a 120 ms detach).
            Some(_) => since.min(ON_WINDOW),
        };
        self.spent_ns += share * unmeasured.as_nanos() as f64;
        self.phase_start = now;
        let share = self.smoothed_share.or(self.prior_share).unwrap_or(1.0);
        carried(self.balance_ns(now), share)
    }

    /// Adds to the account the balance an earlier process of the kind left when it exited after
    /// this one started (its exit noticed late): the kind keeps one account.
    pub fn inherit(&mut self, balance_ns: f64) {
        self.carried_ns = (self.carried_ns + balance_ns).max(-MAX_CARRIED_DEBT_NS);
    }

    /// When the process began to be followed.
    pub fn followed_since(&self) -> Instant {
        self.followed_since
    }

    /// The probes' share of the process's time over `elapsed` until `cost_ns`: its kernel
    /// time above its own baseline, scaled for their user-space part.
    fn share_over(&self, elapsed: Duration, cost_ns: u64) -> f64 {
        let share =
            cost_ns.saturating_sub(self.phase_cost) as f64 / elapsed.as_nanos().max(1) as f64;
        ((share - self.baseline_share) * self.user_space_factor).clamp(0.0, 1.0)
    }

    /// Measures the probes' share of the process's time over the `elapsed` of this phase and
    /// charges it to the account.
    fn measure(&mut self, elapsed: Duration, cost_ns: u64) {
        self.measured_share = self.share_over(elapsed, cost_ns);
        self.smoothed_share = Some(match self.smoothed_share {
            Some(s) => s + SMOOTHING * (self.measured_share - s),
            None => self.measured_share,
        });
        self.spent_ns += self.measured_share * elapsed.as_nanos() as f64;
        self.measured_weighted += self.measured_share * elapsed.as_secs_f64();
        self.measured_seconds += elapsed.as_secs_f64();
    }

    /// The probes' mean cost share over the stretches measured with them on (0 before any).
    pub fn mean_measured_share(&self) -> f64 {
        if self.measured_seconds > 0.0 {
            self.measured_weighted / self.measured_seconds
        } else {
            0.0
        }
    }

    fn start_phase(&mut self, on: bool, now: Instant, cost_ns: u64) {
        self.on = on;
        self.phase_start = now;
        self.phase_cost = cost_ns;
    }
}

/// What a kind's account carries to its next process: a credit up to one window's cost at the
/// kind's `share` (a kind whose processes were cheap or idle banks no long stretch of probes),
/// a debt up to `MAX_CARRIED_DEBT_NS`.
pub fn carried(balance_ns: f64, share: f64) -> f64 {
    balance_ns.clamp(-MAX_CARRIED_DEBT_NS, share * ON_WINDOW.as_nanos() as f64)
}

/// Parses `--max-overhead`: a percentage (`5`, `5%`, `0.5`), or `off`/`0` for no budget.
pub fn parse_max_overhead(s: &str) -> Result<Option<f64>, String> {
    let t = s.trim().trim_end_matches('%').trim();
    if t.eq_ignore_ascii_case("off") || t.eq_ignore_ascii_case("none") {
        return Ok(None);
    }
    let pct: f64 = t
        .parse()
        .map_err(|_| format!("`{s}` is not a percentage (examples: 5, 2.5%, off)"))?;
    if !(0.0..=100.0).contains(&pct) {
        return Err(format!(
            "--max-overhead must be between 0 and 100 (percent of the traced process's time), got {pct}"
        ));
    }
    Ok((pct > 0.0).then_some(pct / 100.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `simulate_until` without system time of the process's own and with instant detaches.
    fn simulate(max: Option<f64>, share: f64, seconds: u64) -> (ProcessBudget, Duration) {
        let (b, on, _) = simulate_until(max, share, 0.0, Duration::ZERO, seconds);
        (b, on)
    }

    fn simulate_until(
        max: Option<f64>,
        share: f64,
        baseline: f64,
        detach: Duration,
        seconds: u64,
    ) -> (ProcessBudget, Duration, Instant) {
        let t0 = Instant::now();
        let b = ProcessBudget::new(max, FUNCTION_USER_SPACE_FACTOR, t0, 0);
        let ms = seconds * 1000;
        let own = (baseline, Duration::MAX);
        let (b, on) = simulate_process(b, t0, share, own, detach, ms, 0x2545_f491_4f6c_dd1d);
        (b, on, t0 + Duration::from_millis(ms))
    }

    /// A process followed from `t0` for `ms`, whose probes, while on, take `share` of its time
    /// (in the kernel), plus `own.0` of system time of its own during its first `own.1` (a
    /// start-up reading files; `Duration::MAX`: throughout). Its system time is counted
    /// as /proc gives it: in 10 ms clock ticks, each charged whole with the probability of
    /// being in the kernel. The budget looks every 25 ms; a detach takes `detach`, an attach
    /// 10 ms, with the probes off. Returns the budget and how long the probes were on.
    fn simulate_process(
        mut b: ProcessBudget,
        t0: Instant,
        share: f64,
        own: (f64, Duration),
        detach: Duration,
        ms: u64,
        seed: u64,
    ) -> (ProcessBudget, Duration) {
        let end = t0 + Duration::from_millis(ms);
        let mut now = t0;
        let mut on_time = Duration::ZERO;
        let mut stime = 0u64;
        let mut random = seed | 1;
        let tick = Duration::from_millis(5);
        // Runs for `d` in 5 ms steps; every other step ends a 10 ms clock tick.
        let mut steps = 0u64;
        let mut run = |now: &mut Instant, stime: &mut u64, on: bool, d: Duration| {
            for _ in 0..d.as_millis() / 5 {
                if *now >= end {
                    return;
                }
                *now += tick;
                steps += 1;
                let baseline = if now.duration_since(t0) <= own.1 {
                    own.0
                } else {
                    0.0
                };
                let s = baseline + if on { share } else { 0.0 };
                if on {
                    on_time += tick;
                }
                if steps % 2 == 0 {
                    random ^= random << 13;
                    random ^= random >> 7;
                    random ^= random << 17;
                    if (random % 10_000) as f64 / 10_000.0 < s {
                        *stime += 10_000_000;
                    }
                }
            }
        };
        while now < end {
            run(&mut now, &mut stime, b.is_on(), Duration::from_millis(25));
            match b.tick(now, stime) {
                Some(Switch::Detach) => run(&mut now, &mut stime, false, detach),
                Some(Switch::Attach) => run(&mut now, &mut stime, false, Duration::from_millis(10)),
                None => continue,
            }
            b.switched(now, stime);
        }
        (b, on_time)
    }

    #[test]
    fn cheap_processes_stay_on() {
        let (b, on) = simulate(Some(0.05), 0.01, 10);
        assert!(b.is_on());
        assert_eq!(b.ratio(), 1.0);
        assert_eq!(on, Duration::from_secs(10));
    }

    #[test]
    fn expensive_processes_are_sampled_within_budget() {
        // The probes take 97 % of the process's time while on (fib under function probes),
        // and the process spends 2 % in the kernel of its own.
        let (b, on, end) = simulate_until(Some(0.05), 0.97, 0.02, Duration::ZERO, 60);
        let duty = on.as_secs_f64() / 60.0;
        assert!(
            (b.ratio() - 0.05 / (0.97 * FUNCTION_USER_SPACE_FACTOR).min(1.0)).abs() < 0.002,
            "ratio {}",
            b.ratio()
        );
        // The throughput lost: duty × 97 % (the system-time share here stands for all of the
        // probes' cost, so the factor for their user-space part makes the budget stricter).
        let lost = duty * 0.97;
        assert!(lost > 0.035 && lost < 0.05, "lost {lost}");
        // What is exported for scaling counts is what was observed.
        assert!((b.observed_share(end) - duty).abs() < 0.01);
    }

    #[test]
    fn tick_noise_and_slow_switches_stay_within_budget() {
        // As the audit marker on bench/audit_heavy.py: 40 % of its time in the kernel while
        // on, 40 ms detaches; also fib under function probes, and a lighter process. The cost
        // is the kernel share times the user-space factor, as the budget assumes. The first
        // second, on until the cost was known, is paid back within the run.
        for (share, detach, seconds) in [
            (0.4, 40, 120),
            (0.97, 40, 120),
            (0.2, 25, 120),
            (0.97, 40, 5),
        ] {
            let (b, on, end) = simulate_until(
                Some(0.05),
                share,
                0.02,
                Duration::from_millis(detach),
                seconds,
            );
            let duty = on.as_secs_f64() / seconds as f64;
            let lost = duty * (share * FUNCTION_USER_SPACE_FACTOR).min(1.0);
            assert!(
                lost > 0.02 && lost < 0.052,
                "share {share} for {seconds} s: lost {lost}"
            );
            assert!((b.observed_share(end) - duty).abs() < 0.01);
        }
    }

    #[test]
    fn one_busy_tick_does_not_switch_probes_off() {
        // 10 ms of system time of its own in the first 100 ms, then nothing: 1 % over a
        // second, far below the budget.
        let t0 = Instant::now();
        let mut b = ProcessBudget::new(Some(0.05), FUNCTION_USER_SPACE_FACTOR, t0, 0);
        let ms = |n| Duration::from_millis(n);
        assert_eq!(b.tick(t0 + ms(100), 10_000_000), None);
        assert!(b.is_on());
        assert_eq!(b.tick(t0 + ms(1000), 10_000_000), None);
        assert!(b.is_on());
        assert_eq!(b.ratio(), 1.0);
    }

    #[test]
    fn a_costly_start_is_judged_within_its_first_tenth_of_a_second() {
        // Probes taking 60 % of the time: three ticks by 50 ms.
        let t0 = Instant::now();
        let mut b = ProcessBudget::new(Some(0.05), 1.0, t0, 0);
        let ms = |n| Duration::from_millis(n);
        assert_eq!(b.tick(t0 + ms(25), 20_000_000), None);
        assert_eq!(b.tick(t0 + ms(50), 30_000_000), Some(Switch::Detach));
        // A start-up reading files, 25 % in the kernel, is not judged on three ticks.
        let mut b = ProcessBudget::new(Some(0.05), 1.0, t0, 0);
        assert_eq!(b.tick(t0 + ms(120), 30_000_000), None);
        assert_eq!(b.tick(t0 + ms(160), 40_000_000), None);
    }

    #[test]
    fn a_known_costly_kind_starts_sampled() {
        // Measured at 60 % before: a window costs 60 ms, earned at 5 % × EARN_SHARE in
        // 1.41 s from the process's start when its kind left nothing on the account.
        let t0 = Instant::now();
        let ms = |n| Duration::from_millis(n);
        let mut b = ProcessBudget::learned(0.05, FUNCTION_USER_SPACE_FACTOR, t0, 0, 0.6, 0.0);
        assert!(!b.is_on());
        assert!((b.ratio() - 0.05 / 0.6).abs() < 1e-9);
        assert_eq!(b.tick(t0 + ms(1400), 0), None);
        assert_eq!(b.tick(t0 + ms(1420), 0), Some(Switch::Attach));
        // With a window's credit carried, it comes at once; with a debt, later.
        let mut b = ProcessBudget::learned(0.05, 1.0, t0, 0, 0.6, 60e6);
        assert_eq!(b.tick(t0 + ms(25), 0), Some(Switch::Attach));
        let mut b = ProcessBudget::learned(0.05, 1.0, t0, 0, 0.6, -60e6);
        assert_eq!(b.tick(t0 + ms(2800), 0), None);
        assert_eq!(b.tick(t0 + ms(2840), 0), Some(Switch::Attach));
        // A cheap kind starts on, unsampled.
        let b = ProcessBudget::learned(0.05, FUNCTION_USER_SPACE_FACTOR, t0, 0, 0.01, 0.0);
        assert!(b.is_on() && b.ratio() == 1.0);
    }

    #[test]
    fn short_processes_of_a_kind_pay_the_budget_together() {
        // Processes of 0.2, 0.5 and 1 s in a row, the probes taking 97 % of their time
        // while on: the first one is on until its cost is known, and the next ones start
        // sampled, with its debt carried. Over 40 of them the loss stays within the budget.
        for ms in [200u64, 500, 1000] {
            let plain = short_run_loss(ms, (0.0, Duration::ZERO));
            assert!(plain < 0.052, "{ms} ms processes: lost {plain}");
            assert!(plain > 0.02, "{ms} ms processes: hardly observed ({plain})");
            // A start-up that spends a quarter of its 30 ms in the kernel (Python's reads
            // files) is not taken for the process's own share during the windows: taken so,
            // it hid a quarter of their cost (0.2 s processes lost 4.2 % instead of 3.5 %).
            let startup = short_run_loss(ms, (0.25, Duration::from_millis(30)));
            assert!(
                startup < plain + 0.003 && startup < 0.052,
                "{ms} ms processes with a start-up in the kernel: lost {startup}, {plain} without"
            );
        }
    }

    /// The share of their time that 40 processes of `ms` of a kind in a row lose to probes
    /// costing 97 % of it while on (`simulate_process`'s `own`: their own kernel time).
    fn short_run_loss(ms: u64, own: (f64, Duration)) -> f64 {
        short_run_loss_noticed(ms, own, false)
    }

    /// `short_run_loss`; `late`: each exit is noticed after the next process started, which
    /// then inherits the balance (`inherit`) instead of being given it at its start.
    fn short_run_loss_noticed(ms: u64, own: (f64, Duration), late: bool) -> f64 {
        let t0 = Instant::now();
        let (mut lost, mut total, mut carried) = (0.0, 0.0, None::<f64>);
        for i in 0..40u64 {
            let b = match carried {
                None => ProcessBudget::new(Some(0.05), 1.0, t0, 0),
                Some(c) if late => {
                    let mut b = ProcessBudget::learned(0.05, 1.0, t0, 0, 0.97, 0.0);
                    b.inherit(c);
                    b
                }
                Some(c) => ProcessBudget::learned(0.05, 1.0, t0, 0, 0.97, c),
            };
            let detach = Duration::from_millis(40);
            let (mut b, on) = simulate_process(b, t0, 0.97, own, detach, ms, i + 7);
            lost += on.as_secs_f64() * 0.97;
            total += ms as f64 / 1000.0;
            carried = Some(b.settle(t0 + Duration::from_millis(ms)));
        }
        lost / total
    }

    #[test]
    fn an_exit_noticed_late_leaves_its_balance_to_the_next_process() {
        // A shell loop's next process starts before the last one's exit is seen: it inherits
        // the balance then, and the kind pays the budget as when it was carried at the start.
        for ms in [200u64, 500, 1000] {
            let late = short_run_loss_noticed(ms, (0.0, Duration::ZERO), true);
            let carried = short_run_loss(ms, (0.0, Duration::ZERO));
            assert!(
                late < 0.052 && late > 0.02,
                "{ms} ms processes: lost {late}"
            );
            assert!((late - carried).abs() < 0.002, "{late} vs {carried}");
        }
        // A debt inherited is bounded as one carried.
        let t0 = Instant::now();
        let mut b = ProcessBudget::learned(0.05, 1.0, t0, 0, 0.97, 0.0);
        b.inherit(-5e9);
        assert_eq!(b.balance_ns(t0), -MAX_CARRIED_DEBT_NS);
    }

    #[test]
    fn a_short_stretch_tells_the_cost_of_its_kind() {
        let t0 = Instant::now();
        let ms = |n| Duration::from_millis(n);
        let b = ProcessBudget::new(Some(0.05), 1.0, t0, 0);
        assert_eq!(
            b.known_share(t0 + ms(30), 20_000_000),
            None,
            "too short to say"
        );
        let share = b.known_share(t0 + ms(100), 60_000_000).unwrap();
        assert!((share - 0.6).abs() < 1e-9, "{share}");
    }

    #[test]
    fn no_budget_never_switches() {
        let (b, on) = simulate(None, 0.97, 5);
        assert!(b.is_on());
        assert_eq!(on, Duration::from_secs(5));
    }

    #[test]
    fn parses_percentages() {
        assert_eq!(parse_max_overhead("5"), Ok(Some(0.05)));
        assert_eq!(parse_max_overhead("2.5%"), Ok(Some(0.025)));
        assert_eq!(parse_max_overhead("off"), Ok(None));
        assert_eq!(parse_max_overhead("0"), Ok(None));
        assert!(parse_max_overhead("150").is_err());
        assert!(parse_max_overhead("lots").is_err());
    }
}
