"""A known call tree for `pyusdt flow`, with its own record from sys.setprofile.

Usage: python flow_tree.py TRUTH.json — writes [["call"|"return", function], …] for the calls
made inside start(). With --no-profile it only runs start(): a profiler switches CPython 3.11 to
its tracing path, which would make entries fire without pyusdt's line mode."""
import json
import sys

record = []


def _pyusdt_profile(frame, event, arg):
    if event in ("call", "return"):
        record.append([event, frame.f_code.co_name])


def leaf():
    return 1


def middle():
    return leaf() + leaf()


def gen():
    yield 1


def start():
    middle()
    leaf()
    total = sum(x for x in [1, 2])  # a generator expression: resumed, yields
    return [x for x in range(2)], total, list(gen())


if "--no-profile" in sys.argv:
    start()
else:
    sys.setprofile(_pyusdt_profile)
    start()
    sys.setprofile(None)
    with open(sys.argv[1], "w") as f:
        json.dump(record, f)
