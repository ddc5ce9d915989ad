"""Make a running process deaf to SIGTERM, as a QEMU whose main loop hangs is:
``python tests/integration/sigterm_jail.py PID``.

It attaches to PID's main thread with ``ptrace(PTRACE_SEIZE)``; every signal sent to the process
then stops that thread and is reported here first.  SIGTERM is swallowed (the thread resumes
without it), every other signal is passed on.  SIGKILL cannot be intercepted, so only it ends the
process, which is exactly what ``vm off`` must fall back to.

Why the main thread is enough: QEMU blocks every signal in the threads it creates (vCPUs, I/O,
RCU) and leaves signal handling to the main thread, so a process-directed SIGTERM can only be
delivered there.  Prints ``ready`` once attached, ``swallowed SIGTERM at T s`` for each one, and
exits when the process is gone (``killed by N at T s``; T counts from ``ready``).  If this
program ends first, the kernel detaches it and the process runs on as before.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import time

PTRACE_CONT = 7
PTRACE_SEIZE = 0x4206
PTRACE_EVENT_STOP = 128
WALL = 0x40000000  # __WALL: wait for a traced thread as for a child

_libc = ctypes.CDLL(None, use_errno=True)
_libc.ptrace.restype = ctypes.c_long
_libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p]


def _ptrace(request: int, pid: int, data: int = 0) -> None:
    if _libc.ptrace(request, pid, None, ctypes.c_void_p(data)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"ptrace({request}, {pid}): {os.strerror(err)}")


def main(pid: int) -> int:
    _ptrace(PTRACE_SEIZE, pid)
    print("ready", flush=True)
    began = time.monotonic()

    def say(what: str) -> None:
        print(f"{what} at {time.monotonic() - began:.1f} s", flush=True)

    while True:
        _, status = os.waitpid(pid, WALL)
        if os.WIFEXITED(status):
            say(f"exited {os.WEXITSTATUS(status)}")
            return 0
        if os.WIFSIGNALED(status):
            say(f"killed by {os.WTERMSIG(status)}")
            return 0
        sig, event = os.WSTOPSIG(status), status >> 16
        if event == PTRACE_EVENT_STOP:  # a group-stop or our own interrupt: just resume
            _ptrace(PTRACE_CONT, pid)
        elif sig == signal.SIGTERM:
            say("swallowed SIGTERM")
            _ptrace(PTRACE_CONT, pid)
        else:
            _ptrace(PTRACE_CONT, pid, sig)


if __name__ == "__main__":
    sys.exit(main(int(sys.argv[1])))
