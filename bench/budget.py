#!/usr/bin/env python3
"""The overhead budget of function probes, measured side by side: the throughput of a
call-heavy workload (bench/call_heavy.py, fib(15) in a loop for a fixed time) untraced, under
`pyusdt run --probes function` without a budget, and with `--max-overhead 5`, interleaved.

Prints the median throughput of each mode and its ratio to untraced, and what pyusdt's summary
says of the sampling. Needs root and a release build; fails loudly otherwise.

    python3 bench/budget.py [--runs 3] [--seconds 10] [--python /var/cache/pyusdt-test/python-3.9/bin/python3.9]

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
PYUSDT = os.path.join(ROOT, "target", "release", "pyusdt")
WORKLOAD = os.path.join(ROOT, "bench", "call_heavy.py")


def throughput(stdout):
    return float(stdout.split()[0])


def run(cmd):
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"failed ({out.returncode}): {' '.join(cmd)}\n{out.stderr}")
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--python", default="/var/cache/pyusdt-test/python-3.9/bin/python3.9")
    args = parser.parse_args()
    for need in (PYUSDT, args.python):
        if not os.path.exists(need):
            sys.exit(f"missing {need}: run scripts/setup.sh and cargo build --release")
    if os.geteuid() != 0:
        sys.exit("needs root (BPF)")
    minor = int(run([args.python, "-c", "import sys; print(sys.version_info[1])"]).stdout)
    mode = ["--line-mode"] if minor == 11 else []
    workload = [args.python, WORKLOAD, str(args.seconds)]
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
                results[name].append(throughput(done.stdout))
                if "--max-overhead 5" in name:
                    with open(out_path) as f:
                        record = [json.loads(l) for l in f if l.strip()][-1]
                    probes = record["processes"][0]["function_probes"]
                    observed.append(probes["observed_share"])
            print(f"run {i + 1}/{args.runs} done", file=sys.stderr)
    base = statistics.median(results["untraced"])
    print(f"CPython 3.{minor}, {args.seconds:g} s per run, median of {args.runs} runs")
    print(f"{'mode':<36} {'fib(15)/s':>10} {'vs untraced':>12}")
    for name, values in results.items():
        m = statistics.median(values)
        print(f"{name:<36} {m:>10.1f} {m / base:>11.3f}x")
    print(f"function probes attached {statistics.median(observed) * 100:.1f} % of the time "
          f"under --max-overhead 5 (median)")


if __name__ == "__main__":
    main()
