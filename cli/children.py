"""Child processes that die with this one: the temporary Prefect server (``cli.prefect_api``) and the
children of ``genesis-dr serve`` (``cli.supervisor``). No Prefect import."""

from __future__ import annotations

import os
import sys

# Runs in the child before its program: die with the parent (PR_SET_PDEATHSIG = 1, Linux; it survives the
# exec), stop at once if the parent died before prctl took effect, set the umask when one is given ('-':
# inherit), exec. (Elsewhere the child is stopped when the parent ends, but a kill -9 of it can orphan it.)
_LAUNCHER = """\
import ctypes, os, signal, sys
if sys.platform.startswith("linux"):
    if ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0) != 0:
        sys.exit("genesis-dr: prctl(PR_SET_PDEATHSIG) failed")
    if os.getppid() != int(sys.argv[1]):
        sys.exit(0)
if sys.argv[2] != "-":
    os.umask(int(sys.argv[2], 8))
os.execv(sys.argv[3], sys.argv[3:])
"""


def dying_with_parent(argv: list[str], umask: int | None = None) -> list[str]:
    """The command line that runs ``argv`` (``argv[0]`` an absolute path, exec'd as is) so that the kernel
    kills it when this process dies; ``umask`` is set before the exec (None: inherited)."""
    return [sys.executable, "-c", _LAUNCHER, str(os.getpid()), "-" if umask is None else f"{umask:o}", *argv]
