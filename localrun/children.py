"""Child processes that die with their parent, and telling a process apart from a reused pid.

`die_with_parent()` is a `preexec_fn` for `subprocess.Popen` that sets Linux's
`PR_SET_PDEATHSIG` in the child before it runs its program: when the parent goes, even by
SIGKILL, the kernel sends the child the signal. The setting survives `exec` (of a program that
is not set-user-ID), so it holds for `env node ...` as for `node ...`. The kernel sends it when
the *thread* that started the child ends: start children from a thread that lives as long as
they should (the main thread).
"""

import contextlib
import ctypes
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


def die_with_parent(signum: int = signal.SIGKILL) -> Callable[[], None] | None:
    """A `preexec_fn`: the child is sent `signum` when its parent ends. None where the system
    has no such setting (not Linux)."""
    libc = ctypes.CDLL(None, use_errno=True)
    if not hasattr(libc, "prctl"):
        return None
    prctl = libc.prctl  # looked up before the fork, not in the child
    parent = os.getpid()

    def in_child() -> None:
        if prctl(PR_SET_PDEATHSIG, signum, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
        if os.getppid() != parent:  # the parent ended before the setting took effect
            os.kill(os.getpid(), signum)

    return in_child


def identity(pid: int) -> tuple[str, str] | None:
    """(start time, command line) of a running process, or None if `pid` is not running. The
    start time, in clock ticks since boot, tells the process apart from a later one that reuses
    its pid."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        command_line = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()  # after the command name, which may hold anything
    if fields[0] == "Z":  # ended; only its parent's wait is missing
        return None
    return fields[19], command_line.replace(b"\0", b" ").decode(errors="replace").strip()


def stop_process(pid: int, timeout: float) -> bool:
    """SIGTERM to `pid`, then SIGKILL if it is still there after `timeout` seconds; True once it
    has ended. For a process that is not a child of this one (a child is waited for): this
    watches /proc."""
    started = identity(pid)
    for signum in (signal.SIGTERM, signal.SIGKILL):
        if started is None:
            return True
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)
        if _ended(pid, started, timeout):
            return True
    return False


def _ended(pid: int, started: tuple[str, str], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while identity(pid) == started:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True
