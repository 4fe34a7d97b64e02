#!/usr/bin/env python3
"""Cost of pyusdt's probes to the traced program, measured side by side.

Runs bench/mixed_workload.py untraced and under `pyusdt run` with each probe set, interleaved
(so machine noise hits all configurations alike), and prints the median of the workload's own
elapsed time and its ratio to the untraced median. Needs root and a release build.

    python3 bench/overhead.py [--runs 7]

With `--without-markers PYTHON` (a CPython built without --with-dtrace, e.g. the matrix's
python-3.13-official), it measures the default probes on it instead: imports traced through
hook points (docs/compatibility.md, "Builds without markers"), against untraced.
"""
import argparse
import os
import statistics
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PYUSDT = os.environ.get("PYUSDT") or os.path.join(ROOT, "target", "release", "pyusdt")
PYTHON = "/usr/bin/python3.11"
WORKLOAD = os.path.join(ROOT, "bench", "mixed_workload.py")

CONFIGS = [
    ("untraced", []),
    ("pyusdt --probes gc,import", [PYUSDT, "run", "--quiet", "--probes", "gc,import", "--"]),
    ("pyusdt --probes gc,import,audit", [PYUSDT, "run", "--quiet", "--probes", "gc,import,audit", "--"]),
    # Audit events counted in the kernel, no record per event (metrics only).
    ("pyusdt … audit --metrics-only",
     [PYUSDT, "run", "--quiet", "--probes", "gc,import,audit", "--metrics-only", "--"]),
]
# The floor any USDT tracer pays for the audit marker: the interpreter builds each event's
# argument tuple and takes a uprobe trap. bpftrace's in-kernel count() is the reference.
BPFTRACE = "/usr/bin/bpftrace"
if os.path.exists(BPFTRACE):
    CONFIGS.append((
        "bpftrace count() on audit",
        [BPFTRACE, "-q", "-e", f"usdt:{PYTHON}:python:audit {{ @c = count(); }}", "-c"],
    ))


def once(prefix, python=PYTHON):
    command = [python, WORKLOAD]
    if prefix and prefix[-1] == "-c":  # bpftrace takes the command as one string
        command = [" ".join(command)]
    out = subprocess.run(prefix + command, capture_output=True, text=True, check=True)
    # The workload's line is the first (bpftrace prints its map after it).
    seconds = out.stdout.split()[0]
    return float(seconds)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--without-markers", metavar="PYTHON",
                        help="measure the default probes on this marker-less CPython instead")
    args = parser.parse_args()
    if not os.path.exists(PYUSDT):
        sys.exit("build first: cargo build --release")
    if args.without_markers:
        return without_markers(args.without_markers, args.runs)
    audit = subprocess.run([PYTHON, WORKLOAD, "--count-audit"], capture_output=True, text=True, check=True)
    events = int(audit.stdout.split()[1])
    print(f"workload raises {events:,} audit events per run (sys.addaudithook count)")
    times = {name: [] for name, _ in CONFIGS}
    for _ in range(args.runs):
        for name, prefix in CONFIGS:
            times[name].append(once(prefix))
    base = statistics.median(times["untraced"])
    print(f"{'configuration':<34} {'median s':>9} {'ratio':>7}   ({args.runs} interleaved runs)")
    for name, _ in CONFIGS:
        m = statistics.median(times[name])
        print(f"{name:<34} {m:>9.4f} {m / base:>6.2f}x")
    # Per audit event: the time added to the workload, over the events it raised.
    floor = "bpftrace count() on audit"
    if floor in times:
        per = {name: (statistics.median(times[name]) - base) / events * 1e6
               for name, _ in CONFIGS if "audit" in name}
        print(f"per audit event (added time / {events:,} events):")
        for name, us in per.items():
            print(f"  {name:<32} {us:>6.2f} µs  {us / per[floor]:>5.2f}x bpftrace count()")


def without_markers(python, runs):
    """The default probes (gc, import) on a build without markers: imports at hook points."""
    configs = [("untraced", []),
               ("pyusdt (default probes, hooks)", [PYUSDT, "run", "--quiet", "--"])]
    times = {name: [] for name, _ in configs}
    for _ in range(runs):
        for name, prefix in configs:
            times[name].append(once(prefix, python))
    base = statistics.median(times["untraced"])
    print(f"{python} (no markers), {runs} interleaved runs:")
    print(f"  {'configuration':<34} {'median s':>9} {'ratio':>7}")
    for name, _ in configs:
        m = statistics.median(times[name])
        print(f"  {name:<34} {m:>9.4f} {m / base:>6.3f}x")


if __name__ == "__main__":
    main()
