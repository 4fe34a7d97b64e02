#!/usr/bin/env python3
"""Footprint of `pyusdt agent` itself: memory, CPU and start-up, beside the targets of issue #6.

Measures, interleaved over --runs runs (medians printed):
  - RSS idle (VmRSS 5 s after "tracing") of `pyusdt agent --quiet` (gc,import, console exporter)
    with one idle Python process, and the same exporting OTLP/HTTP to a local sink;
  - CPU of that agent while the traced program is idle: utime+stime over 10 s, % of one core;
  - start-up to "attached": spawn to the agent's "tracing ..." line on stderr, with discovery
    and with --no-discover --python /usr/bin/python3.11;
  - RSS under load: peak RSS (VmHWM) of `--probes gc,import,audit` while two processes call id()
    in a loop (one audit event per call), with the event rate and drops from the agent's summary;
  - scaling: 100 idle Python processes on the same interpreter vs 1: RSS, BPF links and
    perf-event fds of the agent (attachment is per interpreter file), idle CPU, start-up.
Needs root, /usr/bin/python3.11 with USDT markers and a release build; fails loudly otherwise
(an error and a non-zero exit, never a partial table).

    python3 bench/footprint.py [--runs 3]
"""
import argparse
import os
import re
import signal
import statistics
import subprocess
import sys
import threading
import time

from otlp_sink import DiscardSink

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PYUSDT = os.environ.get("PYUSDT") or os.path.join(ROOT, "target", "release", "pyusdt")
PYTHON = "/usr/bin/python3.11"

SETTLE_S = 5.0          # after "tracing", before reading the idle RSS
CPU_WINDOW_S = 10.0     # idle CPU is measured over this window
LOAD_S = 10.0           # duration of the audit-event load
LOAD_PROCS = 2
MANY = 100              # idle processes of the scaling measure
START_TIMEOUT_S = 30.0

# A Python that says it is up (so it is mapped and running before the agent starts), then idles.
IDLE = "import sys, time; sys.stdout.write('up\\n'); sys.stdout.flush(); time.sleep(600)"
# One audit event (builtins.id) per iteration.
LOAD = "import sys; sys.stdout.write('up\\n'); sys.stdout.flush()\nfor i in range(10**9): id(i)"

MB = 1024 * 1024
CLK_TCK = os.sysconf("SC_CLK_TCK")

_children = []  # every process this script starts, ended in main()'s finally


class BenchError(Exception):
    pass


def spawn(argv, **kw):
    proc = subprocess.Popen(argv, **kw)
    _children.append(proc)
    return proc


def end(proc, sig=signal.SIGKILL, timeout=15.0):
    """Ends one process this script started, by its PID (SIGKILL if `sig` does not do it)."""
    if proc.poll() is None:
        try:
            proc.send_signal(sig)
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    if proc in _children:
        _children.remove(proc)


def end_all():
    for proc in list(reversed(_children)):
        end(proc, signal.SIGINT if getattr(proc, "is_agent", False) else signal.SIGKILL)


def status_kb(pid, field):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise BenchError(f"no {field} in /proc/{pid}/status")


def cpu_ticks(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)


def fd_kinds(pid):
    links = perf = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        links += target == "anon_inode:bpf_link"
        perf += target == "anon_inode:[perf_event]"
    return links, perf


class Agent:
    """`pyusdt agent` with its stderr and stdout drained by threads, lines time-stamped."""

    def __init__(self, *flags, env=None):
        self.lines = []
        self.out = []
        self.tracing = threading.Event()
        environment = dict(os.environ, PYUSDT_LOG="info")
        environment.pop("OTEL_EXPORTER_OTLP_ENDPOINT", None)
        environment.update(env or {})
        self.argv = [PYUSDT, "agent", "--quiet", *flags]
        self.t0 = time.monotonic()
        self.proc = spawn(self.argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True, env=environment)
        self.proc.is_agent = True
        self.t_tracing = None
        threading.Thread(target=self._err, daemon=True).start()
        self._out_thread = threading.Thread(target=self._out, daemon=True)
        self._out_thread.start()

    def _err(self):
        for line in self.proc.stderr:
            self.lines.append(line.rstrip("\n"))
            if self.t_tracing is None and " tracing " in line:
                self.t_tracing = time.monotonic()
                self.tracing.set()
        self.tracing.set()  # exited: wake the waiter

    def _out(self):
        for line in self.proc.stdout:
            self.out.append(line.rstrip("\n"))

    @property
    def pid(self):
        return self.proc.pid

    def wait_tracing(self):
        """Seconds from spawn to the "tracing" line."""
        self.tracing.wait(START_TIMEOUT_S)
        if self.t_tracing is None:
            self.stop()
            raise BenchError(f"{' '.join(self.argv)} did not print 'tracing' within "
                             f"{START_TIMEOUT_S:.0f} s; stderr:\n  " + "\n  ".join(self.lines[-20:]))
        if self.proc.poll() is not None:
            raise BenchError(f"agent exited early ({self.proc.returncode}):\n  " + "\n  ".join(self.lines))
        return self.t_tracing - self.t0

    def files(self):
        """Interpreter files attached so far (at start-up and by later rescans)."""
        return len({m.group(1) for m in map(re.compile(r" attached (\S+)").search, list(self.lines)) if m})

    def alive(self):
        if self.proc.poll() is not None:
            raise BenchError(f"agent exited ({self.proc.returncode}) during the measure:\n  "
                             + "\n  ".join(self.lines[-20:]))

    def stop(self):
        """SIGINT, wait, and return its stdout (the summary)."""
        end(self.proc, signal.SIGINT, timeout=30.0)
        self._out_thread.join(5)
        return "\n".join(self.out)


def idle_pythons(n):
    procs = [spawn([PYTHON, "-c", IDLE], stdout=subprocess.PIPE, text=True) for _ in range(n)]
    for p in procs:
        if p.stdout.readline().strip() != "up":
            raise BenchError(f"idle {PYTHON} (pid {p.pid}) did not start")
    return procs


SUMMARY = re.compile(r"([\d,]+) events received \(([\d,]+) gc, ([\d,]+) import, ([\d,]+) audit\), "
                     r"([\d,]+) dropped")


def num(s):
    return int(s.replace(",", ""))


def check_prerequisites():
    if os.geteuid() != 0:
        raise BenchError("needs root (BPF uprobes): run with sudo")
    for need, fix in ((PYUSDT, "cargo build --release --locked"), (PYTHON, "scripts/setup.sh")):
        if not os.path.exists(need):
            raise BenchError(f"missing {need}: {fix}")
    out = subprocess.run([PYUSDT, "list", PYTHON], capture_output=True, text=True)
    for marker in ("audit", "gc__start", "import__find__load__start"):
        if out.returncode != 0 or not re.search(rf"\s{marker}\s", out.stdout):
            raise BenchError(f"{PYTHON} has no {marker} marker (pyusdt list: {out.stdout or out.stderr})")


def measure_settled(r, processes):
    """With `processes` idle Pythons: start-up with discovery, RSS after settling, the agent's
    descriptors and files, and its CPU while they stay idle (keys suffixed _<processes>)."""
    k = f"_{processes}"
    pys = idle_pythons(processes)
    try:
        agent = Agent("--exporter", "console")
        try:
            r["start" + k].append(agent.wait_tracing())
            time.sleep(SETTLE_S)
            agent.alive()
            r["rss" + k].append(status_kb(agent.pid, "VmRSS") / 1024)
            r["fds" + k].append(fd_kinds(agent.pid) + (agent.files(),))
            t0, c0 = time.monotonic(), cpu_ticks(agent.pid)
            time.sleep(CPU_WINDOW_S)
            agent.alive()
            t1, c1 = time.monotonic(), cpu_ticks(agent.pid)
            r["cpu" + k].append((c1 - c0) / CLK_TCK / (t1 - t0) * 100)
        finally:
            agent.stop()
    finally:
        for p in pys:
            end(p)


def measure_no_discover(r):
    agent = Agent("--exporter", "console", "--no-discover", "--python", PYTHON)
    try:
        r["start_nd"].append(agent.wait_tracing())
    finally:
        agent.stop()


def measure_otlp(r):
    with DiscardSink() as sink:
        pys = idle_pythons(1)
        agent = None
        try:
            agent = Agent(*sink.exporter_args(), "--flush-timeout", "2")
            agent.wait_tracing()
            # A short-lived traced process, so there is something to export.
            subprocess.run([PYTHON, "-c", "import json, gc; gc.collect()"], check=True)
            time.sleep(SETTLE_S)
            agent.alive()
            r["rss_otlp"].append(status_kb(agent.pid, "VmRSS") / 1024)
        finally:
            if agent:
                agent.stop()
            for p in pys:
                end(p)
        r["otlp_requests"].append(sink.requests)


def measure_load(r):
    agent = Agent("--exporter", "console", "--probes", "gc,import,audit")
    loads = []
    try:
        agent.wait_tracing()
        time.sleep(1.0)
        loads = [spawn([PYTHON, "-c", LOAD], stdout=subprocess.PIPE, text=True) for _ in range(LOAD_PROCS)]
        for p in loads:
            if p.stdout.readline().strip() != "up":
                raise BenchError(f"load process {p.pid} did not start")
        t0, c0 = time.monotonic(), cpu_ticks(agent.pid)
        peak = 0
        while time.monotonic() - t0 < LOAD_S:
            agent.alive()
            peak = max(peak, status_kb(agent.pid, "VmRSS"))
            time.sleep(0.1)
        c1 = cpu_ticks(agent.pid)
        for p in loads:
            end(p)
        elapsed = time.monotonic() - t0
        r["cpu_load"].append((c1 - c0) / CLK_TCK / elapsed * 100)
        time.sleep(1.0)  # let the agent drain its ring buffer
        agent.alive()
        peak = max(peak, status_kb(agent.pid, "VmHWM"))
    finally:
        for p in loads:
            end(p)
        summary = agent.stop()
    m = SUMMARY.search(summary)
    if not m:
        raise BenchError(f"no summary from the agent under load; stdout:\n{summary}\nstderr:\n"
                         + "\n".join(agent.lines[-20:]))
    received, dropped = num(m.group(1)), num(m.group(5))
    r["rss_load"].append(peak / 1024)
    r["rate"].append((received + dropped) / elapsed)
    r["rate_received"].append(received / elapsed)
    r["dropped"].append(dropped)
    r["drop_pct"].append(dropped / max(1, received + dropped) * 100)



def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    # SIGTERM/SIGHUP end the run like Ctrl-C, so the finally below ends every child.
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda *_: sys.exit("interrupted"))
    keys = ("start_1", "rss_1", "fds_1", "cpu_1", "start_nd", "rss_otlp", "otlp_requests",
            "rss_load", "rate", "rate_received", "dropped", "drop_pct", "cpu_load", f"start_{MANY}", f"rss_{MANY}", f"fds_{MANY}", f"cpu_{MANY}")
    r = {k: [] for k in keys}
    began = time.monotonic()
    try:
        check_prerequisites()
        for i in range(args.runs):
            print(f"run {i + 1}/{args.runs} ...", file=sys.stderr, flush=True)
            measure_settled(r, 1)
            measure_no_discover(r)
            measure_otlp(r)
            measure_load(r)
            measure_settled(r, MANY)
    except BenchError as e:
        sys.exit(f"footprint: {e}")
    except subprocess.CalledProcessError as e:
        sys.exit(f"footprint: {e}")
    finally:
        end_all()

    med = {k: statistics.median(v) for k, v in r.items() if v and not isinstance(v[0], tuple)}
    # (BPF links, perf-event fds, interpreter files attached) per run; another interpreter file
    # in use on the host during one run adds links, so the comparison is per attached file.
    def per_file(runs):
        return (statistics.median(l / max(1, f) for l, _, f in runs),
                statistics.median(p for _, p, _ in runs), statistics.median(f for *_, f in runs))
    links_1, perf_1, files_1 = per_file(r["fds_1"])
    links_100, perf_100, files_100 = per_file(r[f"fds_{MANY}"])
    rate = med["rate"]

    rows = []  # (measure, value, target, ok or None)

    def row(measure, value, target, ok):
        rows.append((measure, value, target, None if ok is None else ("ok" if ok else "OVER")))

    row("RSS idle, console (1 idle process)", f"{med['rss_1']:.1f} MB", "<= 20 MB", med["rss_1"] <= 20)
    row("RSS idle, OTLP/HTTP to local sink", f"{med['rss_otlp']:.1f} MB", "<= 20 MB", med["rss_otlp"] <= 20)
    row(f"CPU idle ({CPU_WINDOW_S:.0f} s window)", f"{med['cpu_1']:.2f} %", "<= 1 %", med["cpu_1"] <= 1)
    row("start-up to 'tracing' (discovery)", f"{med['start_1'] * 1000:.0f} ms", "<= 200 ms", med["start_1"] <= 0.2)
    row("start-up to 'tracing' (--no-discover)", f"{med['start_nd'] * 1000:.0f} ms", "<= 200 ms",
        med["start_nd"] <= 0.2)
    row(f"event rate, {LOAD_PROCS} procs calling id()", f"{rate / 1e6:.2f} M/s", "1 M/s", None)
    row("  dropped (median per run)", f"{med['dropped']:,.0f} "
        f"({med['drop_pct']:.1f} %)", "-", None)
    row("  agent CPU under load", f"{med['cpu_load']:.0f} %", "-", None)
    row(f"peak RSS under load ({rate / 1e6:.2f} M/s)", f"{med['rss_load']:.1f} MB", "<= 64 MB",
        med["rss_load"] <= 64)
    row(f"RSS idle, {MANY} idle processes", f"{med[f'rss_{MANY}']:.1f} MB", "<= 20 MB", med[f"rss_{MANY}"] <= 20)
    row(f"  vs 1 process", f"{med[f'rss_{MANY}'] - med['rss_1']:+.1f} MB", "~0", None)
    row(f"BPF links per file / perf fds, 1 vs {MANY}", f"{links_1:g}/{perf_1:g} vs {links_100:g}/{perf_100:g}",
        "equal", (links_1, perf_1) == (links_100, perf_100))
    row(f"CPU idle, {MANY} idle processes", f"{med[f'cpu_{MANY}']:.2f} %", "<= 1 %", med[f"cpu_{MANY}"] <= 1)
    row(f"start-up to 'tracing', {MANY} procs", f"{med[f'start_{MANY}'] * 1000:.0f} ms", "<= 200 ms",
        med[f"start_{MANY}"] <= 0.2)

    print(f"pyusdt agent footprint: {args.runs} interleaved runs, medians; {os.cpu_count()} CPUs; "
          f"{time.monotonic() - began:.0f} s")
    w = max(len(m) for m, *_ in rows)
    print(f"{'measure':<{w}}  {'pyusdt':>18}  {'target':>10}  verdict")
    for measure, value, target, verdict in rows:
        print(f"{measure:<{w}}  {value:>18}  {target:>10}  {verdict or '-'}")
    print(f"interpreter files attached (median): {files_1:g} with 1 process, {files_100:g} with {MANY}")
    if med["otlp_requests"] == 0:
        print("note: the local OTLP sink received no request during the OTLP run")


if __name__ == "__main__":
    main()
