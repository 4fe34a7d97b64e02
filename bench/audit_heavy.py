"""Benchmark workload for the audit marker's overhead budget (bench/budget.py).

For a fixed time, converts dataclasses with `dataclasses.asdict` in a loop: asdict → deepcopy
→ id() raises a `builtins.id` audit event per object (the costly case of the audit marker,
see ../shared/docs/cpython-markers.md). Every 0.2 s it also raises one rare audit event of its
own, `bench.rare`. Beside it runs a light child process that only raises `bench.rare` every
0.1 s (its first after 1 s, once a tracer following new processes has attached).

Prints one line: batches per CPU second of the heavy loop (its own CPU time, system time
included, so that other load on a shared machine does not count as overhead), `bench.rare` events raised by this process, the
child's PID and the `bench.rare` events the child raised. No audit hook is installed: a hook
would make the interpreter build every event's arguments whether traced or not.

    python3 bench/audit_heavy.py [SECONDS]
"""
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field

CHILD = r"""
import sys, time
time.sleep(1.0)
n = 0
end = time.monotonic() + float(sys.argv[1])
while time.monotonic() < end:
    sys.audit("bench.rare", n)
    n += 1
    time.sleep(0.1)
print(n)
"""


@dataclass
class Item:
    name: str
    tags: list = field(default_factory=list)
    meta: dict = field(default_factory=dict)


def main():
    seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 10.0
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(seconds)], stdout=subprocess.PIPE, text=True
    )
    items = [Item(f"item-{i}", [i, i + 1], {"k": [i]}) for i in range(200)]
    start = time.perf_counter()
    cpu_start = time.process_time()
    next_rare = start
    batches = rare = 0
    while (now := time.perf_counter()) - start < seconds:
        if now >= next_rare:
            sys.audit("bench.rare", rare)
            rare += 1
            next_rare += 0.2
        for item in items:
            asdict(item)
        batches += 1
    elapsed = time.process_time() - cpu_start
    child_rare = int(child.communicate()[0])
    print(f"{batches / elapsed:.1f} {rare} {child.pid} {child_rare}")


if __name__ == "__main__":
    main()
