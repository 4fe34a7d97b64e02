"""Calls interleaved across THREADS threads: each runs ROUNDS times work -> level1 -> level2,
every call sleeping about 2 ms so that all of them pass --min-duration 1ms, and level2 of the
first thread collects garbage. Threads start together (a barrier) so their calls overlap."""
import gc
import threading
import time

THREADS = 6
ROUNDS = 5
barrier = threading.Barrier(THREADS)


def level2(index):
    time.sleep(0.002)
    if index == 0:
        gc.collect()


def level1(index):
    time.sleep(0.002)
    level2(index)


def work(index):
    time.sleep(0.002)
    level1(index)


def run(index):
    barrier.wait()
    for _ in range(ROUNDS):
        work(index)


threads = [threading.Thread(target=run, args=(i,)) for i in range(THREADS)]
for t in threads:
    t.start()
for t in threads:
    t.join()
