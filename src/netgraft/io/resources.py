"""Will a result fit? Memory this process can still get, free disk where OUT goes, and the grown model's size
estimated from its config (built on the meta device: no memory)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from ..errors import CheckpointError


def human(n: float) -> str:
    for unit in ("bytes", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def available_memory() -> int | None:
    """Bytes of memory this process can still get: MemAvailable + SwapFree, capped by a cgroup (v2) limit."""
    avail = None
    try:
        info = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines() if ":" in line)
        avail = sum(int(info[k].split()[0]) * 1024 for k in ("MemAvailable", "SwapFree") if k in info) or None
    except (OSError, ValueError):
        try:
            avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            avail = None
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit != "max":
            used = int(Path("/sys/fs/cgroup/memory.current").read_text())
            room = max(0, int(limit) - used)
            avail = room if avail is None else min(avail, room)
    except (OSError, ValueError):
        pass
    return avail


def existing_ancestor(path: Path) -> Path:
    p = Path(os.path.abspath(path))
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def check_memory(need: int, what: str) -> None:
    """Refuses, with the figures, a run that needs more memory than this process can get."""
    avail = available_memory()
    if avail is not None and need > avail:
        raise CheckpointError(f"{what} needs about {human(need)} in memory but only {human(avail)} is available; "
                              f"choose smaller sizes")


def check_disk(need: int, out: Path) -> None:
    """Refuses, with the figures, an output that cannot fit on OUT's disk."""
    where = existing_ancestor(out.parent)
    try:
        free = shutil.disk_usage(where).free
    except OSError:
        return
    if need > free:
        raise CheckpointError(f"the grown model needs about {human(need)} on disk but {where} has only {human(free)} "
                              f"free")
