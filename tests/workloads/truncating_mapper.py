"""The attacker of tests/hostile_files.rs's truncation test, run as an unprivileged user in a
directory it owns: maps the first page of a libpython copy it owns (and never touches the
mapping: that would fault here too) and truncates the file in a loop, so that whoever reads it
meanwhile sees it shrink under them. Most of the time the file is all zeros at its full size
(truncated, then extended), now and then an ELF file again; every half second it is replaced
by a new file (a new inode, which a tracer examines anew) that is mapped in turn. Stops when
the file named by the third argument exists."""
import mmap
import os
import sys
import time

path, source, go = sys.argv[1:4]
with open(source, "rb") as f:
    content = f.read()
size = len(content)
maps = []


def fresh():
    """A new copy at `path` (a new inode), mapped, and open for writing."""
    new = path + ".new"
    with open(new, "wb") as f:
        f.write(content)
    os.rename(new, path)
    with open(path, "rb") as f:
        maps.append(mmap.mmap(f.fileno(), 4096, prot=mmap.PROT_READ))
    # The two newest stay mapped: the tracer finds them in /proc/PID/maps.
    del maps[:-2]
    return os.open(path, os.O_RDWR)


fd = fresh()
replaced = time.monotonic()
n = 0
while not os.path.exists(go):
    os.ftruncate(fd, 0)
    os.ftruncate(fd, size)
    n += 1
    if n % 64 == 0:
        os.pwrite(fd, content, 0)
    if time.monotonic() - replaced > 0.5:
        os.close(fd)
        fd = fresh()
        replaced = time.monotonic()
os._exit(0)
