"""Known call durations for function spans: outer sleeps 10 ms and calls inner, which sleeps
20 ms and collects; quick returns at once."""
import gc
import time


def inner():
    time.sleep(0.020)
    gc.collect()


def quick():
    return 1


def outer():
    time.sleep(0.010)
    inner()
    quick()


outer()
