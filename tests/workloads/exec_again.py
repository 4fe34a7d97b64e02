"""A process that starts another program in place (execve, same PID), with another
OTEL_SERVICE_NAME: each program raises one sentinel audit event. A tracer must describe the
process again after the exec, or the second program's events carry the first one's resource."""
import os
import sys

sys.audit("pyusdt.exec.before")
env = dict(os.environ, OTEL_SERVICE_NAME="pyusdt-exec-after")
after = "import sys; sys.audit('pyusdt.exec.after')"
os.execve(sys.executable, [sys.executable, "-c", after], env)
