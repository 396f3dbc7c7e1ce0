"""Child processes under test, and what they cost: CPU seconds and resident memory.

Each contender's worker runs as its own process (Celery's as a process tree), so its
cost is read from ``/proc`` without instrumenting it: CPU is ``utime + stime`` of every
process in the tree (plus the reaped children's ``cutime + cstime``), memory is the
resident set now (``VmRSS``) and at its peak (``VmHWM``), summed over the tree.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from conveyor.embedded import die_with_parent

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
_STOP_TIMEOUT = 30.0
_REPO_ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Usage:
    """One reading of a process tree.

    Args:
        cpu_s: CPU seconds (user + system) used so far by the tree.
        rss_bytes: Resident memory now, summed over the tree.
        peak_rss_bytes: Peak resident memory, summed over the tree's processes.
        root_peak_rss_bytes: Peak resident memory of the top process alone (the worker,
            without its ledger child).
    """

    cpu_s: float
    rss_bytes: int
    peak_rss_bytes: int
    root_peak_rss_bytes: int = 0


def _parents() -> dict[int, list[int]]:
    """Every live process's children, from one scan of ``/proc``."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):
            stat = (entry / "stat").read_text()
            ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
            children.setdefault(ppid, []).append(int(entry.name))
    return children


def tree(pid: int) -> list[int]:
    """The process and all its descendants that are alive now."""
    children = _parents()
    pids, todo = [], [pid]
    while todo:
        current = todo.pop()
        pids.append(current)
        todo.extend(children.get(current, ()))
    return pids


def _cpu_seconds(pid: int) -> float:
    with contextlib.suppress(OSError):
        stat = Path(f"/proc/{pid}/stat").read_text()
        # Fields after the parenthesised command: utime, stime, cutime, cstime are 14-17.
        fields = stat[stat.rindex(")") + 2 :].split()
        return sum(int(x) for x in fields[11:15]) / _CLOCK_TICKS
    return 0.0


def _memory(pid: int) -> tuple[int, int]:
    rss = peak = 0
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1]) * 1024
            elif line.startswith("VmHWM:"):
                peak = int(line.split()[1]) * 1024
    return rss, peak


def usage(pid: int) -> Usage:
    """Reads CPU and memory of ``pid``'s process tree."""
    cpu = 0.0
    rss = peak = root_peak = 0
    for member in tree(pid):
        cpu += _cpu_seconds(member)
        member_rss, member_peak = _memory(member)
        rss += member_rss
        peak += member_peak
        if member == pid:
            root_peak = member_peak
    return Usage(cpu_s=cpu, rss_bytes=rss, peak_rss_bytes=peak, root_peak_rss_bytes=root_peak)


def machine_jiffies() -> tuple[int, int]:
    """``(busy, total)`` CPU time of the whole machine so far, in clock ticks."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle and iowait
    total = sum(fields[:8])  # guest time is already counted in user
    return total - idle, total


class Child:
    """A contender's process, logging to a temporary file; stopped with SIGTERM.

    Args:
        argv: The command line.
        env: Variables set on top of this process's environment.
        name: Shown in errors.
    """

    def __init__(self, argv: Sequence[str], *, env: Mapping[str, str], name: str) -> None:
        self.name = name
        self._log: IO[bytes] = tempfile.TemporaryFile(prefix=f"bench-{name}-")  # noqa: SIM115
        self.process = subprocess.Popen(
            list(argv),
            env={**os.environ, **env},
            cwd=_REPO_ROOT,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            preexec_fn=die_with_parent,  # noqa: PLW1509 - no threads are started before exec
        )

    @property
    def pid(self) -> int:
        """The process id."""
        return self.process.pid

    def usage(self) -> Usage:
        """CPU and memory of the process tree now."""
        return usage(self.pid)

    def check_alive(self) -> None:
        """Raises RuntimeError, with the end of its log, if the process has exited."""
        if self.process.poll() is not None:
            raise RuntimeError(
                f"{self.name} exited with code {self.process.returncode}:\n{self.log_tail()}"
            )

    def log_tail(self, lines: int = 30) -> str:
        """The last lines the process wrote."""
        self._log.flush()
        self._log.seek(0)
        text = self._log.read().decode(errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after a grace period; closes the log (opened in __init__)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=_STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()


@contextlib.contextmanager
def running(argv: Sequence[str], *, env: Mapping[str, str], name: str) -> Iterator[Child]:
    """Runs a child process for the block and stops it afterwards."""
    child = Child(argv, env=env, name=name)
    try:
        yield child
    finally:
        child.stop()


def python(*args: str) -> list[str]:
    """A command line running this interpreter."""
    return [sys.executable, *args]
