"""Will a result fit? Memory this process can still get, free disk where OUT goes, and the grown model's size
estimated from its config (built on the meta device: no memory)."""

from __future__ import annotations

import math
import os
import shutil
import warnings
from pathlib import Path
from typing import Any

import torch

from .. import hf
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

def estimate_bytes(config: Any, cls: Any, sizes: Any, headers: dict[Path, dict[str, Any]]) -> tuple[int, int] | None:
    """(bytes of the checkpoint's tensors, estimated bytes of the grown model's): the grown model is built on the
    meta device (no memory) from the new config and its parameters counted, at the checkpoint's bytes per parameter.
    None if that model cannot even be built (the growth itself then reports why)."""

    try:
        src_bytes = src_numel = 0
        for header in headers.values():
            for spec in header.values():
                if isinstance(spec, dict) and "data_offsets" in spec:
                    start, end = spec["data_offsets"]
                    src_bytes += int(end) - int(start)
                    src_numel += math.prod(int(d) for d in spec.get("shape", []))
        per = src_bytes / src_numel if src_numel else 4.0
        new_config = hf.new_config(config, hf.family_of(config), sizes)
        with torch.device("meta"), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = cls(new_config) if cls.__name__ != "AutoModel" else cls.from_config(new_config)
        persistent = set(model.state_dict())
        numel = sum(p.numel() for p in model.parameters()) + \
            sum(b.numel() for n, b in model.named_buffers() if n in persistent)
    except Exception:  # noqa: BLE001 - no estimate; never a reason to fail by itself
        return None
    return src_bytes, int(numel * per)

def check_resources(src_bytes: int, new_bytes: int, side_bytes: int, out: Path) -> None:
    """Refuses, with the figures, a result that cannot fit in memory (next to the source) or on OUT's disk."""
    need = src_bytes + new_bytes
    avail = available_memory()
    if avail is not None and need > avail:
        raise CheckpointError(f"the grown model needs about {human(new_bytes)} ({human(need)} in memory with the "
                              "source "
                       f"model) but only {human(avail)} of memory is available; choose smaller sizes")
    where = existing_ancestor(out.parent)
    try:
        free = shutil.disk_usage(where).free
    except OSError:
        return
    if new_bytes + side_bytes > free:
        raise CheckpointError(f"the grown model needs about {human(new_bytes + side_bytes)} on disk but {where} has "
                              "only "
                       f"{human(free)} free")
