"""A program whose observable behaviour must not change under tracing: deterministic output on
stdout and stderr (text and bytes that are not UTF-8), input read from stdin, a child process,
calls, collections, imports and audit events, a handled signal, and exit code 3.
With a first argument, it keeps working for that many seconds before it finishes (so that a
tracer can be attached and killed meanwhile); the output does not depend on it."""
import gc
import hashlib
import json
import os
import signal
import subprocess
import sys
import time


def fib(n):
    return n if n < 2 else fib(n - 1) + fib(n - 2)


def digest_of_work(rounds):
    h = hashlib.sha256()
    for i in range(rounds):
        h.update(json.dumps({"i": i, "fib": fib(15), "sorted": sorted([3, 1, 2], key=abs)}).encode())
        if i % 50 == 0:
            gc.collect()
            try:
                __import__(f"pyusdt_absent_{i}")
            except ImportError:
                pass
    return h.hexdigest()


caught = []
signal.signal(signal.SIGUSR1, lambda signum, frame: caught.append(signum))
os.kill(os.getpid(), signal.SIGUSR1)

seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 0.0
end = time.monotonic() + seconds
rounds = 0
digest = digest_of_work(200)
while time.monotonic() < end:
    assert digest_of_work(50) == digest_of_work(50)
    rounds += 1

stdin = sys.stdin.read()
child = subprocess.run([sys.executable, "-c", "print('child', 6 * 7)"], capture_output=True, text=True)
print("digest", digest)
print("stdin", len(stdin), hashlib.sha256(stdin.encode()).hexdigest())
print("child", child.returncode, child.stdout.strip())
print("signal", caught)
sys.stdout.flush()
sys.stdout.buffer.write(b"bytes \xff\xfe\x00 end\n")
print("to stderr", file=sys.stderr)
sys.exit(3)
