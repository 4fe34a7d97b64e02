"""Benchmark workload for the overhead budget: calls fib(15) over and over for a fixed time
and prints its own throughput (fib(15) computations per second) and the Python calls made."""
import sys
import time


def fib(n):
    return n if n < 2 else fib(n - 1) + fib(n - 2)


seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 10.0
start = time.perf_counter()
done = 0
while time.perf_counter() - start < seconds:
    fib(15)
    done += 1
elapsed = time.perf_counter() - start
# fib(15) makes 2*fib(16)-1 = 1973 calls.
print(f"{done / elapsed:.1f} {done * 1973}")
