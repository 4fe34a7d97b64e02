"""Known call counts for `pyusdt top`: fib(n) makes 2*fib(n+1)-1 calls; `by_key` is called
once per element by sorted(), from C."""
import sys


def fib(n):
    return n if n < 2 else fib(n - 1) + fib(n - 2)


def by_key(x):
    return -x


fib(int(sys.argv[1]))
sorted(range(int(sys.argv[2])), key=by_key)
