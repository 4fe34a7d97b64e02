"""Raises common audit events with known arguments (for --audit-args)."""
import os
import subprocess
import sys

with open(sys.argv[1], "w") as f:  # open(path, 'w', flags)
    f.write("x")
os.system("true")  # os.system(b'true')
os.system("true --password=hunter2")  # a secret in an argument: exported redacted
subprocess.Popen(["/bin/true", "arg"]).wait()  # subprocess.Popen('/bin/true', [...], ...)
compile("1+1", "<pyusdt-test>", "eval")  # compile(b'1+1', '<pyusdt-test>')
