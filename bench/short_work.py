"""A short process of fixed work, for bench/budget.py --short: `function N` runs fib(15) N
times (every call a function probe hit), `audit N` calls id() N times (every call an audit
event). Prints its own wall time in seconds, from its first line to its last."""
import sys
import time

t0 = time.perf_counter()
kind, n = sys.argv[1], int(sys.argv[2])


def fib(k):
    return k if k < 2 else fib(k - 1) + fib(k - 2)


if kind == "function":
    for _ in range(n):
        fib(15)
else:
    for i in range(n):
        id(i)
print(f"{time.perf_counter() - t0:.6f}")
