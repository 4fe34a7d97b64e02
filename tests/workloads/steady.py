"""A steady stream of GC and import events for SECONDS seconds (argv[1]): every 20 ms one
gc.collect() and one import of a module that does not exist (the import markers fire all the
same). Prints how many rounds it ran, so a test can tell it ran to the end."""
import gc
import sys
import time

end = time.monotonic() + float(sys.argv[1])
rounds = 0
while time.monotonic() < end:
    gc.collect(0)
    try:
        __import__(f"pyusdt_steady_{rounds}")
    except ImportError:
        pass
    rounds += 1
    time.sleep(0.02)
print(f"rounds {rounds}")
