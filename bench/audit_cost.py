#!/usr/bin/env python3
"""Per-event cost of pyusdt's audit probe, side by side with bpftrace's count() on the audit
marker (the interpreter's argument tuple and the uprobe trap are the floor of any USDT tracer).

Runs bench/audit_loop.py (1,000,000 `builtins.id` events on Debian's python3.11) untraced and
under each tracer, interleaved, and prints the median of the workload's own CPU time, the cost
per event above untraced, and the ratio of that cost to bpftrace's. Needs root, bpftrace and a
release build; fails loudly otherwise.

    python3 bench/audit_cost.py [--runs 7] [--events 1000000]
    python3 bench/audit_cost.py --hook ~/.pyenv/versions/3.13.0/lib/libpython3.13.so.1.0 \
        --python ~/.pyenv/versions/3.13.0/bin/python3.13

--hook LIB: a build without markers (issue 24), traced at sys_audit_tstate: bpftrace probes
its entry by name (`uprobe:LIB:sys_audit_tstate`), so LIB must keep its symbol table (pyenv's
builds do; bpftrace 0.17 cannot probe an address in a stripped file), and pyusdt runs the same
BPF program there as at the function it derives in a stripped build. Without markers the
interpreter builds no argument tuple, so the floor is the trap alone. Where the kernel would
single-step the entry's instruction, pyusdt probes the first one it emulates instead
(src/discover/entry_probe.rs; `pyusdt list` says where), which bpftrace 0.17 cannot do (built
without libbfd, it refuses an address inside a function): the ratios are then against what a
bpftrace one-liner on the function costs, and the heading says where pyusdt's probe is.

bpftrace runs twice: `count()`, which records nothing, and `printf()` of the PID, thread and
time, its way of sending a record per event (as pyusdt's log records do); its output goes to
a file, and a run in which it lost events fails the bench.

pyusdt exports OTLP/HTTP to a local receiver that discards (bench/otlp_sink.py), as to a
collector; a run in which pyusdt dropped or failed to export anything fails the bench. The loop
raises about 600,000 events a second, a log record each: more than the default export queue
(2,048 records, batches of 512) holds between two requests to this Python receiver, so the
queue and batches are made larger, as they would be for such a source.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

from function_cost import check_nothing_lost, stop_bpftrace, under_bpftrace
from otlp_sink import DiscardSink

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PYUSDT = os.environ.get("PYUSDT") or os.path.join(ROOT, "target", "release", "pyusdt")
WORKLOAD = os.path.join(ROOT, "bench", "audit_loop.py")
PYTHON = "/usr/bin/python3.11"
BPFTRACE = "/usr/bin/bpftrace"
FLOOR = "bpftrace count() on audit"
RECORDS = "bpftrace printf() per event"
EXPORT_ENV = {**os.environ, "OTEL_BSP_MAX_QUEUE_SIZE": "262144", "OTEL_BSP_MAX_EXPORT_BATCH_SIZE": "8192"}


def placed_at(lib):
    """Where pyusdt's audit probe goes in LIB, from sys_audit_tstate's start (`pyusdt list`)."""
    out = subprocess.run([PYUSDT, "list", "--json", lib], capture_output=True, text=True,
                         check=True)
    found = json.loads(out.stdout)["files"][0]["hooks"]["found"]
    hook = next((h for h in found if h["name"] == "sys_audit_tstate"), None)
    if hook is None:
        sys.exit(f"{lib}: pyusdt finds no sys_audit_tstate")
    return (hook.get("entry_probe") or hook)["address"] - hook["address"]


def under_bpftrace_printf(program, cmd, events):
    """bpftrace printing a line per event into a file, the workload run meanwhile; exits when
    bpftrace lost events or printed fewer lines than the workload raised."""
    def printed(output, size=-1):
        with open(output.name) as f:
            return f.read(size)

    with tempfile.NamedTemporaryFile("w+", prefix="pyusdt-bench-") as output:
        tracer = subprocess.Popen([BPFTRACE, "-e", program], stdout=output,
                                  stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 60
            while "Attaching" not in printed(output, 200):
                if tracer.poll() is not None or time.monotonic() > deadline:
                    sys.exit(f"bpftrace did not attach: {printed(output, 2000)!r}")
                time.sleep(0.1)
            result = subprocess.run(cmd, capture_output=True, text=True, check=True)
            # bpftrace prints what its buffers still hold before it exits.
            time.sleep(1)
        finally:
            stop_bpftrace(tracer)
        text = printed(output)
    lines = text.count("\n")
    lost = [line for line in text.splitlines() if "Lost" in line]
    if lost or lines < events:
        sys.exit(f"bpftrace printf(): {lines:,} lines for {events:,} events, {lost[:3]}: "
                 "the figure would be too low")
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--python", default=PYTHON)
    parser.add_argument("--hook", metavar="LIB",
                        help="trace sys_audit_tstate in this marker-less libpython")
    args = parser.parse_args()
    python = args.python
    for need in (PYUSDT, BPFTRACE, python, args.hook or python):
        if not os.path.exists(need):
            sys.exit(f"missing {need}: run scripts/setup.sh and cargo build --release")
    with DiscardSink() as sink:
        run = [PYUSDT, "run", "-q", "--no-discover", *sink.exporter_args()]
        configs = [
            ("untraced", []),
            (FLOOR, "bpftrace"),
            (RECORDS, "bpftrace printf"),
            ("pyusdt --probes audit", [*run, "--probes", "audit", "--"]),
            ("pyusdt --probes gc,import,audit", [*run, "--probes", "gc,import,audit", "--"]),
            # Counted in the kernel per process and event name: no record per event.
            ("pyusdt … audit --metrics-only",
             [*run, "--probes", "gc,import,audit", "--metrics-only", "--"]),
        ]
        times = {name: [] for name, _ in configs}
        probe = f"uprobe:{args.hook}:sys_audit_tstate" if args.hook else f"usdt:{python}:python:audit"
        program = f"{probe} {{ @c = count(); }}"
        printf = f'{probe} {{ printf("%d %d %lld\\n", pid, tid, nsecs); }}'
        for _ in range(args.runs):
            for name, prefix in configs:
                cmd = [python, WORKLOAD, str(args.events)]
                if prefix == "bpftrace":
                    out = under_bpftrace(program, cmd)
                elif prefix == "bpftrace printf":
                    out = under_bpftrace_printf(printf, cmd, args.events)
                else:
                    out = subprocess.run(prefix + cmd, capture_output=True, text=True, check=True,
                                         env=EXPORT_ENV)
                    if prefix:
                        check_nothing_lost(name, out.stderr)
                seconds, _ = out.stdout.split()[:2]
                times[name].append(float(seconds))
    base = statistics.median(times["untraced"])
    floor = (statistics.median(times[FLOOR]) - base) / args.events * 1e9
    where = "at the audit marker"
    if args.hook:
        where = f"at sys_audit_tstate of {args.hook} (pyusdt at +{placed_at(args.hook):#x})"
    print(f"{python}, {args.events:,} builtins.id audit events {where}, "
          f"{args.runs} interleaved runs (the workload's CPU time)")
    print(f"{'configuration':<34} {'median s':>9} {'ns/event':>9} {'vs count()':>10}")
    for name, _ in configs:
        m = statistics.median(times[name])
        per_event = (m - base) / args.events * 1e9
        ratio = f"{per_event / floor:.2f}x" if name != "untraced" else "-"
        print(f"{name:<34} {m:>9.4f} {per_event:>9.0f} {ratio:>10}")


if __name__ == "__main__":
    main()
