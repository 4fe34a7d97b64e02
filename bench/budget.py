#!/usr/bin/env python3
"""The overhead budget (--max-overhead), measured side by side, for the probes it governs.

function: the throughput of a call-heavy workload (bench/call_heavy.py, fib(15) in a loop for a
fixed time) untraced, under `pyusdt run --probes function` without a budget, and with
`--max-overhead 5`, interleaved.

top: the same call-heavy workload untraced, under `pyusdt top --once` counting every call,
and under `top --once --max-overhead 5`, interleaved; and whether the table still names fib.

audit: the throughput of an audit-heavy workload (bench/audit_heavy.py: dataclasses.asdict in
a loop, one `builtins.id` audit event per object, on Debian's python3.11) untraced, under
`pyusdt run --probes audit` (every event), and with `--max-overhead 5`, interleaved. Both it
and a light child process raise a rare audit event (`bench.rare`); the table says how many of
each arrived: all of the light process's, and about the observed share of the sampled one's.

short: processes of 0.2, 0.5 and 1 s (bench/short_work.py: fib(15) calls on the 3.9 build, id()
audit events on python3.11), started one after the other under one `pyusdt run --max-overhead 5`
per length as a test runner starts them, each paired with an untraced process of the same work
run just before or after it: each process's own wall time, the traced total against the
untraced. What pyusdt learns of the kind is kept from one length to the next (PYUSDT_STATE_DIR,
a directory of the bench's own, empty at its start): the very first traced process is the only
one of a kind never seen; the other parts keep no memory.

Prints the median throughput of each mode and its ratio to untraced, and what pyusdt's summary
says of the sampling. Needs root and a release build; fails loudly otherwise.

    python3 bench/budget.py [--only function|top|audit|short] [--runs 3] [--seconds 10] [--short-seconds 60]
        [--python /var/cache/pyusdt-test/python-3.9/bin/python3.9] [--audit-python /usr/bin/python3.11]

Function spans need function__entry: a 3.8-3.10 interpreter (the default, built by
scripts/python-matrix.sh), or Debian's 3.11 with `--line-mode` (added automatically).
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PYUSDT = os.environ.get("PYUSDT") or os.path.join(ROOT, "target", "release", "pyusdt")
CALL_HEAVY = os.path.join(ROOT, "bench", "call_heavy.py")
AUDIT_HEAVY = os.path.join(ROOT, "bench", "audit_heavy.py")


def run(cmd):
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"failed ({out.returncode}): {' '.join(cmd)}\n{out.stderr}")
    return out


def summary(path):
    """The closing summary record: the last line of pyusdt's -o file."""
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        f.seek(max(0, f.tell() - (1 << 20)))
        return json.loads(f.read().strip().splitlines()[-1])


def table(title, unit, results):
    base = statistics.median(results["untraced"])
    print(title)
    print(f"{'mode':<36} {unit:>10} {'vs untraced':>12}")
    for name, values in results.items():
        m = statistics.median(values)
        print(f"{name:<36} {m:>10.1f} {m / base:>11.3f}x")


def function_budget(args):
    minor = int(run([args.python, "-c", "import sys; print(sys.version_info[1])"]).stdout)
    mode = ["--line-mode"] if minor == 11 else []
    workload = [args.python, CALL_HEAVY, str(args.seconds)]
    trace = [PYUSDT, "run", "--quiet", "--probes", "function"] + mode
    modes = {
        "untraced": lambda out: workload,
        "function probes, no budget": lambda out: trace + ["--max-overhead", "off", "--"] + workload,
        "function probes, --max-overhead 5": lambda out: trace
        + ["--max-overhead", "5", "-o", out, "--"]
        + workload,
    }
    results = {name: [] for name in modes}
    observed = []
    with tempfile.TemporaryDirectory() as tmp:
        out_path = os.path.join(tmp, "summary.jsonl")
        for i in range(args.runs):
            for name, cmd in modes.items():
                done = run(cmd(out_path))
                results[name].append(float(done.stdout.split()[0]))
                if "--max-overhead 5" in name:
                    probes = summary(out_path)["processes"][0]["function_probes"]
                    observed.append(probes["observed_share"])
            print(f"function: run {i + 1}/{args.runs} done", file=sys.stderr)
    table(f"function probes: CPython 3.{minor}, {args.seconds:g} s per run, median of {args.runs} runs",
          "fib(15)/s", results)
    print(f"function probes attached {statistics.median(observed) * 100:.1f} % of the time "
          f"under --max-overhead 5 (median)")


def top_budget(args):
    """`top` counting every call, and within --max-overhead 5, on the call-heavy loop."""
    workload = [args.python, CALL_HEAVY, str(args.seconds)]
    top = [PYUSDT, "top", "--once", "--no-discover"]
    modes = {
        "untraced": workload,
        "top, every call counted and timed": top + ["--"] + workload,
        "top, --max-overhead 5": top + ["--max-overhead", "5", "--"] + workload,
    }
    results = {name: [] for name in modes}
    covered, named = [], 0
    for i in range(args.runs):
        for name, cmd in modes.items():
            out = run(cmd).stdout
            results[name].append(float(out.split()[0]))
            if "--max-overhead" in name:
                # The first row of the table names the hot function; the note gives the share.
                rows = [l for l in out.splitlines() if l.strip().endswith(" fib")]
                named += bool(rows)
                note = [l for l in out.splitlines() if "counter attached " in l and "% of the time" in l]
                if note:
                    covered.append(float(note[0].split("counter attached ")[1].split(" %")[0]))
        print(f"top: run {i + 1}/{args.runs} done", file=sys.stderr)
    minor = run([args.python, "-c", "import sys; print(sys.version_info[1])"]).stdout.strip()
    table(f"top: CPython 3.{minor}, {args.seconds:g} s per run, median of {args.runs} runs",
          "fib(15)/s", results)
    share = f"{statistics.median(covered):.1f} %" if covered else "-"
    print(f"the counter was attached {share} of the time (median); the table named fib in "
          f"{named} of {args.runs} runs")


def audit_budget(args):
    workload = [args.audit_python, AUDIT_HEAVY, str(args.seconds)]
    # The summary (-o) has the audit events per process and name. The events themselves are
    # written too, so the file goes to a temporary directory.
    trace = [PYUSDT, "run", "--quiet", "--probes", "audit"]
    modes = {
        "untraced": lambda out: workload,
        "audit, every event": lambda out: trace + ["-o", out, "--"] + workload,
        "audit, --max-overhead 5": lambda out: trace
        + ["--max-overhead", "5", "-o", out, "--"]
        + workload,
    }
    results = {name: [] for name in modes}
    rare = {name: [] for name in modes if name != "untraced"}
    observed = []
    with tempfile.TemporaryDirectory() as tmp:
        out_path = os.path.join(tmp, "events.jsonl")
        for i in range(args.runs):
            for name, cmd in modes.items():
                done = run(cmd(out_path))
                rate, own_rare, child_pid, child_rare = done.stdout.split()
                results[name].append(float(rate))
                if name == "untraced":
                    continue
                record = summary(out_path)
                by_pid = {p["pid"]: p for p in record["processes"]}
                child = by_pid.get(int(child_pid), {})
                heavy = [p for pid, p in by_pid.items() if pid != int(child_pid)]
                got_child = child.get("audit_by_name", {}).get("bench.rare", 0)
                got_heavy = sum(p.get("audit_by_name", {}).get("bench.rare", 0) for p in heavy)
                rare[name].append((got_heavy, int(own_rare), got_child, int(child_rare)))
                if "--max-overhead" in name:
                    observed.append(heavy[0]["audit_marker"]["observed_share"])
                    if got_child != int(child_rare):
                        sys.exit(f"the light process raised {child_rare} bench.rare events, "
                                 f"{got_child} arrived")
            print(f"audit: run {i + 1}/{args.runs} done", file=sys.stderr)
    minor = run([args.audit_python, "-c", "import sys; print(sys.version_info[1])"]).stdout.strip()
    table(f"audit marker: CPython 3.{minor}, {args.seconds:g} s per run, median of {args.runs} runs",
          "batches/CPU s", results)
    print(f"audit marker attached {statistics.median(observed) * 100:.1f} % of the time in the "
          f"heavy process under --max-overhead 5 (median)")
    for name, runs in rare.items():
        heavy = sum(r[0] for r in runs), sum(r[1] for r in runs)
        child = sum(r[2] for r in runs), sum(r[3] for r in runs)
        print(f"bench.rare arrived, {name}: heavy process {heavy[0]}/{heavy[1]}, "
              f"light process {child[0]}/{child[1]}")


SHORT_WORK = os.path.join(ROOT, "bench", "short_work.py")


def libpython(python):
    """The libpython a --enable-shared interpreter links (where its markers are), or None."""
    out = subprocess.run(["ldd", python], capture_output=True, text=True).stdout
    for line in out.splitlines():
        if "libpython" in line and "=>" in line:
            return line.split("=>")[1].split()[0]
    return None


def short_runner(prefix, python, kind, log=None):
    """A shell, under `prefix` (a pyusdt run, or nothing), that starts one short process per
    line it reads (the work, N), as a test runner or a cron job starts them, and prints the
    process's whole wall time, from before its fork to after its exit (start-up and, under
    pyusdt, the start gate included), and the time it measured of its own work. Both sides
    of a pair go through such a shell. pyusdt's summary goes to `log`."""
    loop = (f'while read -r n; do s=$EPOCHREALTIME; w=$({python} {SHORT_WORK} {kind} "$n" '
            f'</dev/null); e=$EPOCHREALTIME; echo "$s $e $w"; done')
    return subprocess.Popen(prefix + ["bash", "-c", loop], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=log, text=True, bufsize=1)


def short_process(runner, n):
    """One short process started by `runner`: its whole wall time and its work's, in s."""
    runner.stdin.write(f"{n}\n")
    runner.stdin.flush()
    line = runner.stdout.readline()
    if not line:
        sys.exit(f"a short-process runner ended early (exit {runner.wait()})")
    start, end, work = (float(x) for x in line.split())
    return end - start, work


def ratio(traced, untraced):
    """The traced total against the untraced, and two standard errors of that ratio from the
    pairs' differences (the machine's speed moves by tens of percent between processes)."""
    diffs = [t - u for t, u in zip(traced, untraced)]
    spread = 2 * statistics.stdev(diffs) / len(diffs) ** 0.5 / statistics.mean(untraced)
    return sum(traced) / sum(untraced), spread


def short_budget(args):
    """Processes of 0.2, 0.5 and 1 s, started one after the other under one `pyusdt run
    --max-overhead 5` per length (as a test runner or a shell loop starts them), each paired
    with an untraced process of the same work run just before or just after it (alternately):
    the machine's speed drifts by tens of percent over minutes here, and a pair sees the same
    machine. The ratio is the traced processes' total time against the untraced ones'."""
    # bash for $EPOCHREALTIME: the runners time their processes without forking a clock.
    cases = [("function", args.python), ("audit", args.audit_python)]
    state = tempfile.TemporaryDirectory(prefix="pyusdt-bench-state-")
    os.environ["PYUSDT_STATE_DIR"] = os.path.join(state.name, "pyusdt")
    for kind, python in cases:
        lib = libpython(python)
        probe = ["--probes", kind] + (["--python", lib] if lib else [])
        # Work per process for each length, from untraced processes of known work.
        unit = 200 if kind == "function" else 1_000_000
        plain = short_runner([], python, kind)
        per_unit = statistics.median(
            short_process(plain, unit * 5)[1] for _ in range(3)) / (unit * 5)
        minor = run([python, "-c", "import sys; print(sys.version_info[1])"]).stdout.strip()
        print(f"{kind} ({'fib(15) calls' if kind == 'function' else 'id() audit events'}), "
              f"CPython 3.{minor}, --max-overhead 5: {args.short_seconds:g} s of work per length, "
              f"in pairs of processes, each traced one beside an untraced one")
        print(f"{'length':<7} {'pairs':>5} {'untraced s':>10} {'traced s':>9} {'total':>7} {'+-':>6} "
              f"{'work':>7} {'+-':>6} {'attached':>9}")
        never_seen = None
        for length in (0.2, 0.5, 1.0):
            n = max(1, int(length / per_unit))
            pairs = max(10, round(args.short_seconds / length))
            with tempfile.TemporaryDirectory() as tmp, \
                    open(os.path.join(tmp, "stderr"), "w+") as log:
                out = os.path.join(tmp, "out.jsonl")
                traced = [PYUSDT, "run", "--quiet", "--max-overhead", "5", "-o", out] + probe
                runner = short_runner(traced + ["--"], python, kind, log)
                untraced, under = [], []
                for i in range(pairs):
                    if i % 2 == 0:
                        untraced.append(short_process(plain, n))
                        under.append(short_process(runner, n))
                    else:
                        under.append(short_process(runner, n))
                        untraced.append(short_process(plain, n))
                runner.stdin.close()
                if runner.wait() != 0:
                    log.seek(0)
                    sys.exit(f"pyusdt run failed ({runner.returncode}):\n{log.read()}")
                runner.stdout.close()
                # Seconds the probes were attached, of processes that had a window (the
                # others are not in the summary: they were never attached).
                field = "function_probes" if kind == "function" else "audit_marker"
                on = sum(p[field]["observed_seconds"] for p in summary(out)["processes"]
                         if p.get(field))
            if never_seen is None:
                never_seen = (length, under[0][0], untraced[0][0])
            whole = ratio([t[0] for t in under], [u[0] for u in untraced])
            work = ratio([t[1] for t in under], [u[1] for u in untraced])
            attached = on / sum(t[0] for t in under) * 100
            print(f"{length:<7g} {pairs:>5} {statistics.median(u[0] for u in untraced):>10.3f} "
                  f"{statistics.median(t[0] for t in under):>9.3f} {whole[0]:>6.3f}x "
                  f"{whole[1]:>6.3f} {work[0]:>6.3f}x {work[1]:>6.3f} {attached:>8.1f}%")
        plain.stdin.close()
        plain.wait()
        print(f"the first process of the kind, never seen before ({never_seen[0]:g} s of work): "
              f"{never_seen[1]:.3f} s traced, {never_seen[2]:.3f} s untraced beside it")
    print("(untraced s, traced s: the medians of the processes' whole time, fork to exit; "
          "total: the traced processes' whole time, summed, against the untraced ones', the "
          "first process of a kind never seen included; work: the same of the time each "
          "process measured of its own work; +-: two standard errors of the ratio before it, "
          "from the pairs' differences; attached: the share of the traced processes' time "
          "their probes were attached, from pyusdt's summary)")
    state.cleanup()
    os.environ["PYUSDT_STATE_DIR"] = ""


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=["function", "top", "audit", "short"])
    parser.add_argument("--short-seconds", type=float, default=60.0,
                        help="work per length, in s: that many pairs of short processes, "
                        "divided by the length (--only short)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--python", default="/var/cache/pyusdt-test/python-3.9/bin/python3.9")
    parser.add_argument("--audit-python", default="/usr/bin/python3.11")
    args = parser.parse_args()
    needs = [PYUSDT]
    if args.only in (None, "function", "top", "short"):
        needs.append(args.python)
    if args.only in (None, "audit", "short"):
        needs.append(args.audit_python)
    for need in needs:
        if not os.path.exists(need):
            sys.exit(f"missing {need}: run scripts/setup.sh and cargo build --release")
    if os.geteuid() != 0:
        sys.exit("needs root (BPF)")
    # Each part learns its processes' kinds from nothing (short_budget keeps a memory of its own).
    os.environ["PYUSDT_STATE_DIR"] = ""
    if args.only in (None, "function"):
        function_budget(args)
    if args.only in (None, "top"):
        top_budget(args)
    if args.only in (None, "audit"):
        audit_budget(args)
    if args.only in (None, "short"):
        short_budget(args)


if __name__ == "__main__":
    main()
