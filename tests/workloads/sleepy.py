"""Known call durations for function spans: outer sleeps 10 ms and calls inner, which sleeps
20 ms and collects; quick returns at once. sibling_case: a short call (not reported) runs a
young-generation collection, then a reported sibling sleeps: the GC belongs under
sibling_case, not under the sibling."""
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


def short_with_gc():
    gc.collect(0)


def slow_sibling():
    time.sleep(0.010)


def sibling_case():
    short_with_gc()
    slow_sibling()


outer()
sibling_case()
