"""Functions whose own and total times are known by construction (`top`'s timing test):
busy loops of fixed wall time that call only C (time.perf_counter fires no function marker),
nested calls, direct recursion, and a generator suspended between its resumptions."""
import time


def busy(seconds):
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def light():  # own 10 ms: its busy() call is its child
    busy(0.01)


def heavy():  # own 30 ms
    end = time.perf_counter() + 0.03
    while time.perf_counter() < end:
        pass


def outer():  # own ~0, total = light + heavy
    light()
    heavy()


def rec(n):  # 2 ms own per level; its total counts the outermost call only
    end = time.perf_counter() + 0.002
    while time.perf_counter() < end:
        pass
    if n:
        rec(n - 1)


def gen():  # runs 5 ms per resumption, suspended 20 ms between them
    for _ in range(4):
        end = time.perf_counter() + 0.005
        while time.perf_counter() < end:
            pass
        yield


for _ in range(10):
    outer()
    rec(4)
    for _ in gen():
        time.sleep(0.02)
