"""Benchmark workload for the per-event cost of the audit marker: a loop of id() calls, each of
which raises one `builtins.id` audit event (a C-level event, whose name is a string literal in
the interpreter). Prints its own CPU seconds (user and system: the uprobe trap and the BPF
program run in the process's time, and other load on a shared machine does not count) and the
number of events.

    python3 bench/audit_loop.py [EVENTS]
"""
import sys
import time

n = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
start = time.process_time()
for i in range(n):
    id(i)
print(f"{time.process_time() - start:.6f} {n}")
