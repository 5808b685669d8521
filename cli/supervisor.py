"""The child processes of ``genesis-dr serve``: started so that they die with it, restarted when they die.

Plain processes, no Prefect import: ``cli.serve`` decides what runs (the Prefect server, one worker per
work pool, the metrics endpoint); this module keeps it running.

* **The children die with serve.** Each is started through a launcher that asks the kernel to kill it
  when serve dies (``PR_SET_PDEATHSIG``, ``cli.children``, as for the temporary server), so a
  ``kill -9`` of serve frees the server's port at once and a restart reuses its database. (The flow
  runs its workers had started are grandchildren: the kernel does not kill them, they run on until they
  end, a capture until it is stopped; under systemd the unit's cgroup is emptied when serve dies.) Each child
  leads a process group of its own: a Ctrl-C in the terminal reaches serve alone, which then stops its
  children in order (workers first, the server last).
* **A child that dies is restarted** after a backoff (1 s, doubling up to a minute while it keeps dying
  within a minute of its start), with one line saying so.
* **Stopping a worker** is SIGINT to the worker (a Prefect worker ignored SIGTERM for 25 s and stopped
  on SIGINT) and SIGTERM to the flow runs it started, which live in its process group (a backup stops
  at its next chunk and records itself FAILED "interrupted", committing nothing; a capture stops after
  the piece it is shipping), a grace for them to end, then SIGTERM and SIGKILL to whatever is left.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from cli.children import dying_with_parent

BACKOFF_FIRST = 1.0
BACKOFF_MAX = 60.0
# A child that ran this long before dying is restarted after the first delay again (it was not crash-looping).
STABLE_AFTER = 60.0


@dataclass
class Child:
    """One supervised program. ``argv[0]`` must be an absolute path (it is exec'd as is)."""

    name: str
    argv: list[str]
    env: dict[str, str]
    stop_signal: int = signal.SIGTERM
    grace: float = 10.0  # seconds between stop_signal and SIGTERM/SIGKILL of the whole group
    umask: int | None = None
    process: subprocess.Popen | None = None
    started_at: float = 0.0
    quick_exits: int = 0
    restart_at: float | None = None
    restarts: int = 0
    stopped: bool = False
    # Process groups of earlier lives of this child that still had members when it died (the flow runs a dead
    # worker left running): stopped with the child.
    left_groups: list[int] = field(default_factory=list)

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None


class Supervisor:
    """Starts children, restarts the dead ones (``poll``), stops them in the order given (``stop``)."""

    def __init__(self, say: Callable[[str], None]) -> None:
        self.say = say
        self.children: list[Child] = []

    def start(self, child: Child) -> Child:
        child.process = subprocess.Popen(
            dying_with_parent(child.argv, child.umask),
            env=child.env,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        child.started_at = time.monotonic()
        child.restart_at = None
        child.stopped = False
        if child not in self.children:
            self.children.append(child)
        return child

    def poll(self) -> None:
        """Restart each child that died (after its backoff); one line per death."""
        now = time.monotonic()
        for child in self.children:
            if child.stopped or child.process is None:
                continue
            if child.restart_at is not None:
                if now >= child.restart_at:
                    child.restarts += 1
                    self.start(child)
                continue
            code = child.process.poll()
            if code is None:
                continue
            ran = now - child.started_at
            if _pgid_alive(child.process.pid):
                child.left_groups.append(child.process.pid)
            child.quick_exits = child.quick_exits + 1 if ran < STABLE_AFTER else 0
            delay = min(BACKOFF_MAX, BACKOFF_FIRST * 2 ** max(0, child.quick_exits - 1))
            child.restart_at = now + delay
            self.say(f"{child.name} exited with code {code} after {ran:.0f} s; restarting it in {delay:.0f} s")

    def restart(self, child: Child, reason: str) -> None:
        """Stop ``child`` now and start it again (e.g. a server that stopped answering)."""
        self.say(f"{child.name}: {reason}; restarting it")
        self.stop([child])
        child.restarts += 1
        self.start(child)

    def stop(self, children: list[Child]) -> None:
        """Stop ``children`` together: each its stop signal (the flow runs in its groups SIGTERM), the grace,
        SIGTERM to whatever is left of the groups, then SIGKILL."""
        for child in children:
            child.stopped = True
            child.restart_at = None
        live = [c for c in children if _groups(c)]
        for child in live:
            _signal_members(child)
        deadline = time.monotonic() + max((c.grace for c in live), default=0)
        while time.monotonic() < deadline and any(_groups(c) for c in live):
            time.sleep(0.2)
        # What is left in a group: the leader that ignored its signal, or the flow runs a worker left running.
        left = [c for c in live if _groups(c)]
        for child in left:
            _signal_groups(child, signal.SIGTERM)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and any(_groups(c) for c in left):
            time.sleep(0.2)
        for child in left:
            if _groups(child):
                self.say(f"{child.name} did not stop within {child.grace + 5:.0f} s; killed it")
                _signal_groups(child, signal.SIGKILL)
        for child in children:
            if child.process is not None:
                child.process.wait()
            child.left_groups = [g for g in child.left_groups if _pgid_alive(g)]

    def kill_all(self) -> None:
        """SIGKILL every child's process groups at once (an operator's second Ctrl-C)."""
        for child in self.children:
            for pgid in _groups(child):
                try:
                    os.killpg(pgid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass


def _groups(child: Child) -> list[int]:
    """The child's process groups with a live member: its own (a worker and its flow runs), earlier lives'."""
    if child.process is not None:
        child.process.poll()  # reap the leader, so a dead leader does not count as a live zombie
    pgids = ([child.process.pid] if child.process is not None else []) + child.left_groups
    return [g for g in pgids if _pgid_alive(g)]


def _signal_groups(child: Child, sig: int) -> None:
    for pgid in _groups(child):
        try:
            os.killpg(pgid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def _signal_members(child: Child) -> None:
    """The child itself gets its stop signal; every other process of its groups (the flow runs a worker
    started) SIGTERM, on which our flows stop at their next chunk (a Prefect flow run started by a worker
    does not stop on the SIGINT its worker stops on)."""
    leader = child.process.pid if child.process is not None else None
    for pgid in _groups(child):
        for pid in _members(pgid):
            try:
                os.kill(pid, child.stop_signal if pid == leader else signal.SIGTERM)
            except (ProcessLookupError, PermissionError):
                pass


def _pgid_alive(pgid: int) -> bool:
    """Whether a process of group ``pgid`` still runs (zombies do not count: killpg(0) succeeds for them)."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return bool(_members(pgid))


def _members(pgid: int) -> list[int]:
    """The live (not zombie) processes of group ``pgid``, from /proc."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2 :].split()
        if len(fields) > 2 and fields[0] != "Z" and int(fields[2]) == pgid:
            found.append(int(entry))
    return found
