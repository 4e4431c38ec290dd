"""Children that die with their parent: Linux's parent-death signal, set in the child before it runs anything.

`outrider run` and a multi-worker service start children that hold ports. When the parent is killed
hard (SIGKILL, the OOM killer) it cannot stop them, and orphans holding the gateway's ports would make
the next start fail; with PR_SET_PDEATHSIG the kernel sends each child SIGTERM as its parent goes.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def die_with_parent(parent_pid: int, sig: int = signal.SIGTERM) -> None:
    """In a freshly forked child: receive `sig` when the parent dies (no-op off Linux).

    The parent may already be gone between the fork and this call (the signal is then never sent), so
    the child checks its parent afterwards and signals itself if it was orphaned.
    """
    if not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, sig, 0, 0, 0) != 0:
        return  # cannot happen on Linux with a valid signal; never fail a start over it
    if os.getppid() != parent_pid:
        os.kill(os.getpid(), sig)
