#!/usr/bin/env python3
"""What `pyusdt run -- CMD` and `pyusdt top -- CMD` cost a Python process they do not trace.

A bystander (Debian's python3.11, not started by pyusdt) runs a fixed workload: fib(25) (about
250,000 calls, each a function__return hit when the counter is on in its process) and 300,000
`id()` calls (each an audit event when the audit marker is on in its process). Its CPU time
(user + system, from wait4) is measured alone and while pyusdt traces another command, the
three interleaved per round so that the machine's drift hits all alike. Before the costly
markers were attached to the command's processes alone, the bystander paid 3-7x.

    sudo python3 bench/bystander.py --runs 5
"""
import argparse
import os
import statistics
import subprocess
import sys
import time

PYTHON = "/usr/bin/python3.11"
WORKLOAD = """
def fib(n): return n if n < 2 else fib(n - 1) + fib(n - 2)
fib(25)
for i in range(300000): id(i)
"""
# The traced command: waits until the bystander is done (pyusdt ends with it).
WAIT = "import sys, time\nwhile not __import__('os').path.exists(sys.argv[1]): time.sleep(0.01)"


def cpu_seconds():
    p = subprocess.Popen([PYTHON, "-c", WORKLOAD])
    _, status, usage = os.wait4(p.pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    return usage.ru_utime + usage.ru_stime


def while_traced(pyusdt, args, tag):
    done = f"/tmp/pyusdt-bystander-{os.getpid()}-{tag}"
    if os.path.exists(done):
        os.unlink(done)
    tracer = subprocess.Popen(
        [pyusdt, *args, "--", PYTHON, "-c", WAIT, done],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    time.sleep(1.0)  # attached by now (the command is held until it is)
    try:
        return cpu_seconds()
    finally:
        open(done, "w").close()
        tracer.wait(timeout=30)
        os.unlink(done)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--pyusdt", default="target/release/pyusdt")
    a = ap.parse_args()
    if not os.path.exists(a.pyusdt):
        sys.exit(f"{a.pyusdt} missing: cargo build --release")
    cases = {
        "alone": None,
        "run --probes audit -- CMD": ["run", "-q", "--probes", "gc,import,audit"],
        "top -- CMD": ["top", "--once"],
    }
    times = {k: [] for k in cases}
    for r in range(a.runs):
        for name, args in cases.items():
            t = cpu_seconds() if args is None else while_traced(a.pyusdt, args, r)
            times[name].append(t)
    base = statistics.median(times["alone"])
    print(f"bystander: {PYTHON}, fib(25) and 300,000 id() calls; median of {a.runs} runs")
    print("| while pyusdt runs | bystander CPU s | ratio to alone |")
    print("|---|---|---|")
    for name, ts in times.items():
        m = statistics.median(ts)
        print(f"| {name} | {m:.3f} | {m / base:.2f}x |")


if __name__ == "__main__":
    main()
