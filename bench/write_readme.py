#!/usr/bin/env python3
"""Writes the output of a bench/all.sh run into bench/README.md, between its markers, with the
date, the commit (and whether the tree had changes) and the machine it ran on.

    python3 bench/write_readme.py OUTPUT_FILE STARTED
"""
import os
import platform
import subprocess
import sys

BEGIN = "<!-- bench/all.sh writes from here: do not edit by hand -->"
END = "<!-- bench/all.sh writes up to here -->"
README = os.path.join(os.path.dirname(os.path.abspath(__file__)), "README.md")


def git(*args):
    return subprocess.run(["git", *args], capture_output=True, text=True).stdout.strip()


def machine():
    model = "unknown CPU"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{os.cpu_count()} CPUs ({model}), {mem:.0f} GiB, Linux {platform.release()}"


# bpftrace's own complaints, which do not change its figures: it cannot raise RLIMIT_MEMLOCK
# (not needed on kernels with memcg accounting) and, without tracefs mounted, cannot remove
# the legacy uprobe events it did not create (its probes are detached with their links).
BPFTRACE_NOISE = (
    "ERROR: Unknown error -1: couldn't set RLIMIT_MEMLOCK",
    "open(/sys/kernel/tracing/uprobe_events)",
    "ERROR: failed to detach probe:",
)


def main():
    output, started = sys.argv[1], sys.argv[2]
    lines = open(output).read().rstrip("\n").splitlines()
    kept = [l for l in lines if not l.startswith(BPFTRACE_NOISE)]
    body = "\n".join(kept)
    if len(kept) < len(lines):
        body += (f"\n\n({len(lines) - len(kept)} lines of bpftrace warnings left out: RLIMIT_MEMLOCK, "
                 "and detaching through an unmounted tracefs)")
    commit = git("rev-parse", "--short", "HEAD")
    dirty = " with uncommitted changes" if git("status", "--porcelain", "--untracked-files=no") else ""
    section = (
        f"{BEGIN}\n"
        f"Last full run: started {started}, commit {commit}{dirty}, on {machine()}.\n\n"
        f"```\n{body}\n```\n"
        f"{END}"
    )
    text = open(README).read()
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        tail = rest.split(END, 1)[1]
        text = head + section + tail
    else:
        text = text.rstrip("\n") + "\n\n## The last full run of bench/all.sh\n\n" + section + "\n"
    open(README, "w").write(text)
    print(f"bench: wrote the run into {README}")


if __name__ == "__main__":
    main()
