"""The bundled example: a small mixed workload that exercises every marker pyusdt traces.

Imports of the standard library (one optional dependency missing, as real apps have),
JSON/regex/dataclass work, allocation of cyclic garbage that triggers the cycle collector,
file I/O, and a worker thread. Run it under pyusdt:

    pyusdt run --probes gc,import,audit -- /usr/bin/python3.11 examples/app.py
"""
import gc
import os
import tempfile
import threading


def load_optional_dependency():
    try:
        import ujson as fast_json  # not installed: a not-found import
    except ImportError:
        import json as fast_json
    return fast_json


def records(n):
    from dataclasses import asdict, dataclass

    @dataclass
    class Order:
        order_id: int
        customer: str
        items: list

    return [asdict(Order(i, f"customer-{i % 97}", [i, i * 2, i * 3])) for i in range(n)]


def churn_cycles(rounds):
    """Objects that reference each other: only the cycle collector frees them."""
    for _ in range(rounds):
        node = {"children": []}
        node["children"].append(node)


def report(orders, json):
    import re

    text = json.dumps(orders)
    pattern = re.compile(r'"customer": "customer-(\d+)"')
    customers = {int(m.group(1)) for m in pattern.finditer(text)}
    with tempfile.NamedTemporaryFile("w+", suffix=".json", delete=False) as f:
        f.write(text)
        path = f.name
    with open(path) as f:
        size = len(f.read())
    os.unlink(path)
    return len(customers), size


def main():
    json = load_optional_dependency()
    worker = threading.Thread(target=churn_cycles, args=(50_000,), name="churn")
    worker.start()
    orders = records(2_000)
    churn_cycles(50_000)
    customers, size = report(orders, json)
    worker.join()
    gc.collect()
    print(f"app: {len(orders)} orders, {customers} customers, {size} bytes written and read back")


if __name__ == "__main__":
    main()
