"""Run a command under a hard memory cap and measure its peak memory (used by the benchmarks and the memory test).

The cap is a cgroup: v2 (`memory.max`, `memory.swap.max`) where the unified hierarchy has the memory controller, else
v1 (`memory.limit_in_bytes`, `memory.memsw.limit_in_bytes`). A cgroup counts everything the process touches - its
anonymous memory and the page cache of the files it reads and writes (reclaimed under pressure, not a reason to be
killed) - which is what "bounded memory" has to mean for a conversion that streams gigabytes. Creating one needs root;
`cap_reason()` says why a cap is unavailable, so a test can skip with it.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

V2 = Path("/sys/fs/cgroup")
V1 = Path("/sys/fs/cgroup/memory")


@dataclass
class CappedRun:
    returncode: int
    peak_rss: int  # bytes: the child's own peak resident set (ru_maxrss)
    cgroup_peak: int | None  # bytes: the cgroup's peak charge (RSS + page cache), where the kernel reports it
    limit: int
    stdout: str
    stderr: str


def _v2_ok() -> bool:
    controllers = V2 / "cgroup.controllers"
    return controllers.is_file() and "memory" in controllers.read_text().split()


def cap_reason() -> str:
    """"" when a memory cap can be set here, else why not."""
    if os.geteuid() != 0:
        return "a cgroup memory cap needs root"
    if _v2_ok() or (V1 / "memory.limit_in_bytes").is_file():
        return ""
    return "no cgroup memory controller (v1 or v2) is mounted"


def run_capped(cmd: list[str], limit: int, env: dict | None = None, timeout: float | None = None) -> CappedRun:
    """Run `cmd` in a fresh cgroup limited to `limit` bytes (no swap); the cgroup is removed afterwards."""
    v2 = _v2_ok()
    group = (V2 if v2 else V1) / f"netgraft-{uuid.uuid4().hex[:8]}"
    group.mkdir()
    try:
        if v2:
            (group / "memory.max").write_text(str(limit))
            if (group / "memory.swap.max").exists():
                (group / "memory.swap.max").write_text("0")
        else:
            (group / "memory.limit_in_bytes").write_text(str(limit))
            if (group / "memory.memsw.limit_in_bytes").exists():
                (group / "memory.memsw.limit_in_bytes").write_text(str(limit))

        # A small shell joins the cgroup, then becomes the command (exec: the same pid). Not a preexec_fn: that would
        # fork this process, and the child's peak RSS would start at this process's size.
        join = ["/bin/sh", "-c", 'echo $$ > "$0/cgroup.procs" && exec "$@"', str(group), *cmd]
        with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
            proc = subprocess.Popen(join, env=env, stdout=out, stderr=err, text=True)
            timer = threading.Timer(timeout, proc.kill) if timeout else None
            if timer:
                timer.start()
            _, status, usage = os.wait4(proc.pid, 0)  # this child's own rusage: its peak RSS
            if timer:
                timer.cancel()
            proc.returncode = os.waitstatus_to_exitcode(status)
            out.seek(0)
            err.seek(0)
            stdout, stderr = out.read(), err.read()
        peak_file = group / ("memory.peak" if v2 else "memory.max_usage_in_bytes")
        cgroup_peak = int(peak_file.read_text()) if peak_file.exists() else None
        return CappedRun(proc.returncode, usage.ru_maxrss * 1024, cgroup_peak, limit, stdout, stderr)
    finally:
        for _ in range(50):  # the group can be removed once its last process is gone
            try:
                group.rmdir()
                break
            except OSError:
                time.sleep(0.1)
