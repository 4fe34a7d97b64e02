"""A workload for the live dashboard check (scripts/deploy-check.sh, step 5): for SECONDS, it
collects garbage in every generation, imports modules (some missing), raises audit events and
calls functions that last over a millisecond, so that every panel has something to show."""
import gc
import sys
import time


def slow_call():
    time.sleep(0.002)


def churn():
    junk = [[i] for i in range(20000)]
    cycle = []
    cycle.append(cycle)
    del junk, cycle


seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 15.0
end = time.monotonic() + seconds
n = 0
while time.monotonic() < end:
    churn()
    gc.collect(n % 3)
    # __import__, not importlib.import_module: only the import statement's path (C) has the
    # import markers.
    try:
        __import__(f"pyusdt_missing_module_{n}")
    except ImportError:
        pass
    sys.modules.pop("json.tool", None)
    __import__("json.tool")
    open(__file__).close()  # an audit event
    slow_call()
    n += 1
    time.sleep(0.05)
