"""A workload that records its own ground truth, to compare with what pyusdt reports.

Usage: python3.11 ground_truth.py TRUTH.json

Between the audit events `pyusdt.truth.begin` and `pyusdt.truth.end` (raised with automatic
GC disabled, so no collection straddles a boundary) it records, per native thread id:
every collection seen by gc.callbacks (generation, collected + uncollectable), every audit
event seen by sys.addaudithook, and the imports it attempts (module, found).
"""
import gc
import os
import subprocess
import sys
import tempfile
import threading

truth = {"gc": [], "audit": [], "imports": [], "child_pid": None}
recording = False


def on_gc(phase, info):
    if not recording:
        return
    tid = threading.get_native_id()
    if phase == "start":
        truth["gc"].append({"tid": tid, "generation": info["generation"], "collected": None})
    else:
        # The marker reports collected + uncollectable (gc__done's single argument).
        for entry in reversed(truth["gc"]):
            if entry["tid"] == tid and entry["collected"] is None:
                entry["collected"] = info["collected"] + info["uncollectable"]
                break


def on_audit(event, args):
    if recording and event not in ("pyusdt.truth.begin", "pyusdt.truth.end"):
        truth["audit"].append({"tid": threading.get_native_id(), "name": event})


def try_import(name):
    """Import `name` (not yet loaded), recording whether the import machinery found it."""
    assert name not in sys.modules, name
    try:
        __import__(name)
        found = True
    except ImportError:
        found = False
    truth["imports"].append({"tid": threading.get_native_id(), "module": name, "found": found})


def make_cycles(n):
    """Cyclic garbage that only the cycle collector frees: collections with collected > 0."""
    for _ in range(n):
        a, b = [], {}
        a.append(b)
        b["a"] = a


def worker():
    make_cycles(3000)
    gc.collect(1)
    try_import("pyusdt_truth_missing_in_thread")


def main():
    global recording
    out = sys.argv[1]
    # A module whose import runs a collection: the GC happens inside the import.
    moddir = tempfile.mkdtemp()
    with open(os.path.join(moddir, "pyusdt_gc_in_import.py"), "w") as f:
        f.write("import gc\ngc.collect()\n")
    sys.path.insert(0, moddir)

    gc.callbacks.append(on_gc)
    sys.addaudithook(on_audit)

    gc.disable()
    recording = True
    sys.audit("pyusdt.truth.begin")
    gc.enable()

    try_import("json")
    try_import("xml.dom.minidom")  # dotted: its parents are imported from inside its import
    try_import("pyusdt_truth_missing_module")
    try_import("pyusdt_gc_in_import")
    make_cycles(20000)
    for generation in (0, 1, 2):
        make_cycles(500)
        gc.collect(generation)
    t = threading.Thread(target=worker)
    t.start()
    t.join()
    with open(__file__, "rb") as f:  # an `open` audit event
        f.read(10)
    # A Python child: pyusdt run must follow it from its first instruction.
    # Its own service name: OTLP resources come from each process's environment.
    child = subprocess.run(
        [sys.executable, "-c", "import os, gc; gc.collect(); print(os.getpid())"],
        capture_output=True, text=True, check=True,
        env={**os.environ, "OTEL_SERVICE_NAME": "pyusdt-truth-child"},
    )
    truth["child_pid"] = int(child.stdout.strip())

    gc.disable()
    sys.audit("pyusdt.truth.end")
    recording = False
    gc.enable()
    gc.callbacks.remove(on_gc)

    truth["pid"] = os.getpid()
    truth["main_tid"] = threading.get_native_id()
    truth["modules_loaded"] = sorted(sys.modules)
    import json  # loaded inside the window by try_import("json")

    with open(out, "w") as f:
        json.dump(truth, f)


main()
