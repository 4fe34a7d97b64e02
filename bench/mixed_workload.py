"""Benchmark workload: stdlib imports, JSON, regex, dataclasses (asdict -> deepcopy -> id(),
one `builtins.id` audit event per call), cyclic garbage, file I/O. Prints its own elapsed
seconds and how many audit events it raised, so tracer start-up is not part of the figure."""
import gc
import sys
import time

audit_events = 0


def count(event, args):
    global audit_events
    audit_events += 1


def work():
    import json
    import re
    import tempfile
    from dataclasses import asdict, dataclass, field

    @dataclass
    class Item:
        name: str
        tags: list = field(default_factory=list)
        meta: dict = field(default_factory=dict)

    items = [Item(f"item-{i}", [i, i + 1], {"k": [i]}) for i in range(15_000)]
    dumped = json.dumps([asdict(i) for i in items])
    assert len(re.findall(r"item-\d+", dumped)) == 15_000
    for _ in range(200_000):
        a = []
        a.append(a)
    gc.collect()
    with tempfile.TemporaryFile("w+") as f:
        f.write(dumped)
        f.seek(0)
        assert json.loads(f.read())[0]["name"] == "item-0"


if "--count-audit" in sys.argv:
    sys.addaudithook(count)
start = time.perf_counter()
work()
elapsed = time.perf_counter() - start
print(f"{elapsed:.6f} {audit_events}")
