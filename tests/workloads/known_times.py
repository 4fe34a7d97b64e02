"""Functions whose own and total times are known by construction (`top`'s timing test):
busy loops of fixed wall time that call only C (time.perf_counter fires no function marker),
nested calls, direct recursion, and a generator suspended between its resumptions.

On a loaded machine a loop preempted near its end overruns its time, so the workload also
measures what each function's own and total time really were (perf_counter around the same
code) and writes them as JSON to the file named by its first argument: the test compares
pyusdt's times with these, not with the nominal ones."""
import sys
import time

truth = {"busy_own": 0.0, "light_total": 0.0, "heavy_own": 0.0, "outer_total": 0.0,
         "rec_own": 0.0, "gen_own": 0.0, "module_sleep": 0.0}


def busy(seconds):
    start = time.perf_counter()
    end = start + seconds
    while time.perf_counter() < end:
        pass
    truth["busy_own"] += time.perf_counter() - start


def light():  # own ~0: its busy() call (10 ms) is its child
    start = time.perf_counter()
    busy(0.01)
    truth["light_total"] += time.perf_counter() - start


def heavy():  # own 30 ms
    start = time.perf_counter()
    end = start + 0.03
    while time.perf_counter() < end:
        pass
    truth["heavy_own"] += time.perf_counter() - start


def outer():  # own ~0, total = light + heavy
    start = time.perf_counter()
    light()
    heavy()
    truth["outer_total"] += time.perf_counter() - start


def rec(n):  # 2 ms own per level; its total counts the outermost call only
    start = time.perf_counter()
    end = start + 0.002
    while time.perf_counter() < end:
        pass
    truth["rec_own"] += time.perf_counter() - start
    if n:
        rec(n - 1)


def gen():  # runs 5 ms per resumption, suspended 20 ms between them
    for _ in range(4):
        start = time.perf_counter()
        end = start + 0.005
        while time.perf_counter() < end:
            pass
        truth["gen_own"] += time.perf_counter() - start
        yield


for _ in range(10):
    outer()
    rec(4)
    for _ in gen():
        start = time.perf_counter()
        time.sleep(0.02)
        truth["module_sleep"] += time.perf_counter() - start

# Written without json (its encoder's generators would, on 3.15, enter without returning above
# this module's frame) and without generator expressions.
if len(sys.argv) > 1:
    parts = []
    for key, value in truth.items():
        parts.append('"%s": %r' % (key, value))
    with open(sys.argv[1], "w") as f:
        f.write("{" + ", ".join(parts) + "}")
