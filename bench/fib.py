"""Benchmark workload for the per-call cost of function probes: a recursive fib whose number
of calls is known (2*fib(n+1)-1). Prints its own elapsed seconds and the call count."""
import sys
import time


def fib(n):
    return n if n < 2 else fib(n - 1) + fib(n - 2)


def count(n):
    a, b = 0, 1
    for _ in range(n + 1):
        a, b = b, a + b
    return 2 * a - 1


n = int(sys.argv[1]) if len(sys.argv) > 1 else 27
start = time.perf_counter()
fib(n)
print(f"{time.perf_counter() - start:.6f} {count(n)}")
