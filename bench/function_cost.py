#!/usr/bin/env python3
"""Per-call cost of pyusdt's function probes, side by side with bpftrace's count() (the uprobe
trap is the floor of any USDT tracer).

Runs bench/fib.py (fib(27): 635,621 calls) untraced and under each tracer, interleaved, and
prints the median of the workload's own time, the cost per call above untraced, and the ratio
of that cost to bpftrace's. Needs root, bpftrace and a release build; fails loudly otherwise.

    python3 bench/function_cost.py [--runs 5] [--python /var/cache/pyusdt-test/python-3.9/bin/python3.9]

On 3.11 the counted marker is function__return (entries need line mode); timed `top` and
function spans need entries, so their rows are only run on 3.8-3.10 and 3.15 interpreters.
Each pyusdt row is compared with the bpftrace row above it doing the same work: `top
--calls-only` with count() per function on one marker (one trap per call); timed `top` with a
timestamp per thread at entry and a histogram per function at return (two traps per call); the
span rows with count() on entry and return.

The span rows export OTLP/HTTP to a local receiver that discards (bench/otlp_sink.py), as to a
collector; a run in which pyusdt dropped or failed to export anything fails the bench, since a
dropped span costs less than a delivered one.
"""
import argparse
import os
import re
import signal
import statistics
import subprocess
import sys

from otlp_sink import DiscardSink

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PYUSDT = os.environ.get("PYUSDT") or os.path.join(ROOT, "target", "release", "pyusdt")
WORKLOAD = os.path.join(ROOT, "bench", "fib.py")
BPFTRACE = "/usr/bin/bpftrace"
N = "27"
# Spans of every call: 635,621 spans in about a second, more than the default export queue
# (2,048 spans) takes between two exports; dropped spans would make the row cheaper than the
# delivery it stands for.
EXPORT_ENV = {**os.environ, "OTEL_BSP_MAX_QUEUE_SIZE": "1048576", "OTEL_BSP_MAX_EXPORT_BATCH_SIZE": "8192"}


def marker_file(python):
    """The file carrying the markers: the interpreter, or the libpython it links."""
    out = subprocess.run(["ldd", python], capture_output=True, text=True).stdout
    for line in out.splitlines():
        if "libpython" in line and "=>" in line:
            return line.split("=>")[1].split()[0]
    return os.path.realpath(python)


def under_bpftrace(program, cmd):
    """bpftrace attached to the file system-wide (its -c cannot find probes in a libpython that
    the command maps only after it starts), the workload run meanwhile."""
    tracer = subprocess.Popen([BPFTRACE, "-e", program], stdout=subprocess.PIPE, text=True)
    try:
        line = tracer.stdout.readline()
        if not line.startswith("Attaching"):
            sys.exit(f"bpftrace did not attach: {line!r}")
        return subprocess.run(cmd, capture_output=True, text=True, check=True)
    finally:
        stop_bpftrace(tracer)


def stop_bpftrace(tracer):
    """SIGINT, as a user would stop it; killed if it does not stop within 60 s (bpftrace 0.17
    sometimes hangs detaching on a host without tracefs mounted). The workload has finished by
    then, so its time stands; the kill closes bpftrace's probes before the next run starts."""
    tracer.send_signal(signal.SIGINT)
    try:
        tracer.wait(timeout=60)
    except subprocess.TimeoutExpired:
        tracer.kill()
        tracer.wait()
        print("note: bpftrace did not stop on SIGINT within 60 s: killed", file=sys.stderr)


# The summary's counts of lost events: ring-buffer drops ("N dropped"), and export failures and
# drops ("failed N, dropped N (queue full)").
NUMBER = r"(\d+(?:,\d{3})*)"
LOST = re.compile(rf"{NUMBER} dropped|failed {NUMBER}|dropped {NUMBER}")


def check_nothing_lost(name, stderr):
    lost = [n for m in LOST.finditer(stderr) for n in m.groups() if n and n != "0"]
    if lost or "OpenTelemetry: exported" not in stderr:
        sys.exit(f"{name}: pyusdt lost events or did not export (the figure would be too low):\n{stderr}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--python", default="/usr/bin/python3.11")
    args = parser.parse_args()
    for need in (PYUSDT, BPFTRACE, args.python):
        if not os.path.exists(need):
            sys.exit(f"missing {need}: run scripts/setup.sh and cargo build --release")
    version = subprocess.run([args.python, "-c", "import sys; print(sys.version_info[1])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    minor = int(version)
    entries = minor <= 10 or minor == 15  # function__entry fires for every call
    marker = "function__entry" if entries else "function__return"
    lib = marker_file(args.python)
    with DiscardSink() as sink:
        run_and_print(args, minor, marker, lib, sink)


def run_and_print(args, minor, marker, lib, sink):
    configs = [
        ("untraced", []),
        (f"bpftrace count() on {marker}", "bpftrace"),
        # What `top` does: a count per function, keyed by the marker's arguments.
        ("bpftrace count() per function", "bpftrace-keyed"),
        ("pyusdt top --calls-only", [PYUSDT, "top", "--once", "--calls-only", "--no-discover", "--"]),
    ]
    if minor <= 10 or minor == 15:
        # What timed `top` does: a timestamp at entry, a duration per function at return.
        configs += [
            ("bpftrace timestamp + hist() per fn", "bpftrace-timed"),
            ("pyusdt top (own and total time)", [PYUSDT, "top", "--once", "--no-discover", "--"]),
        ]
        # Spans need both markers: their floor is bpftrace counting both (two traps per call).
        configs += [
            ("bpftrace count() on entry+return", "bpftrace2"),
            ("pyusdt spans, --min-duration 1s", [PYUSDT, "run", "-q", "--no-discover", "--probes", "function",
                                                 "--min-duration", "1s", *sink.exporter_args(), "--"]),
            ("pyusdt spans of every call", [PYUSDT, "run", "-q", "--no-discover", "--probes", "function",
                                            "--min-duration", "0", *sink.exporter_args(),
                                            "--ring-buffer-size", "64M", "--"]),
            # Every call in the metrics, aggregated in the kernel per code location.
            ("pyusdt function metrics, --metrics-only", [PYUSDT, "run", "-q", "--no-discover", "--probes",
                                                         "function", "--min-duration", "0", "--metrics-only",
                                                         *sink.exporter_args(), "--"]),
        ]
    times = {name: [] for name, _ in configs}
    calls = None
    program = f"usdt:{lib}:python:{marker} {{ @c = count(); }}"
    both = (f"usdt:{lib}:python:function__entry,usdt:{lib}:python:function__return "
            "{ @c = count(); }")
    keyed = f"usdt:{lib}:python:{marker} {{ @c[pid, arg0, arg1, arg2] = count(); }}"
    timed = (f"usdt:{lib}:python:function__entry {{ @ts[tid] = nsecs; }} "
             f"usdt:{lib}:python:function__return {{ @t[pid, arg0, arg1] = hist(nsecs - @ts[tid]); }}")

    for _ in range(args.runs):
        for name, prefix in configs:
            cmd = [args.python, WORKLOAD, N]
            if prefix == "bpftrace":
                out = under_bpftrace(program, cmd)
            elif prefix == "bpftrace2":
                out = under_bpftrace(both, cmd)
            elif prefix == "bpftrace-keyed":
                out = under_bpftrace(keyed, cmd)
            elif prefix == "bpftrace-timed":
                out = under_bpftrace(timed, cmd)
            else:
                out = subprocess.run(prefix + cmd, capture_output=True, text=True, check=True,
                                     env=EXPORT_ENV)
                if "--probes" in prefix:
                    check_nothing_lost(name, out.stderr)
            line = next(l for l in out.stdout.splitlines() if l.count(" ") == 1 and l[0].isdigit())
            seconds, calls = line.split()
            times[name].append(float(seconds))
    base = statistics.median(times["untraced"])
    floor = None
    # Each row is compared with the bpftrace row above it: for `top`, counting per function
    # (keyed by the marker's arguments, as `top` does; the unkeyed count() is the trap floor),
    # for the span rows, counting both markers (two traps per call).
    print(f"CPython 3.{minor} ({lib}), fib({N}): {int(calls):,} calls, {args.runs} interleaved runs")
    print(f"{'configuration':<36} {'median s':>9} {'ns/call':>8} {'vs row above':>12} "
          f"{'vs count()':>10}")
    trap_floor = None
    for name, _ in configs:
        m = statistics.median(times[name])
        per_call = (m - base) / int(calls) * 1e9
        if name.startswith("bpftrace"):
            floor = per_call
            if trap_floor is None:
                trap_floor = per_call
        ratio = f"{per_call / floor:.2f}x" if floor and name != "untraced" else "-"
        vs_trap = f"{per_call / trap_floor:.2f}x" if trap_floor and name != "untraced" else "-"
        print(f"{name:<36} {m:>9.4f} {per_call:>8.0f} {ratio:>12} {vs_trap:>10}")


if __name__ == "__main__":
    main()
