"""Writing a sharded safetensors checkpoint whose layout is planned before any tensor exists.

The output's tensors are known from the grown config alone (a model built on the meta device), so `plan_shards` cuts
them into shards at a byte limit up front, with the hub's names (``model-00001-of-00003.safetensors``; one shard is
``model.safetensors``) and each tensor's offsets. `ShardWriter` then creates every shard with its final header and
size, and writes each tensor at its offset whenever it is computed, in any order: a conversion may produce tensors in
the order a forward pass needs them. `finish` checks that every tensor was written, flushes, and writes the index
(``model.safetensors.index.json`` with ``metadata.total_size`` and ``weight_map``) last - a directory without its
index is visibly unfinished.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..errors import CheckpointError
from .reader import NAMES

INDEX = "model.safetensors.index.json"


@dataclass
class Entry:
    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    begin: int = 0  # data offsets inside its shard's data section
    end: int = 0

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * torch.empty((), dtype=self.dtype).element_size()


@dataclass
class Shard:
    file: str
    entries: list[Entry] = field(default_factory=list)

    @property
    def nbytes(self) -> int:
        return sum(e.nbytes for e in self.entries)


def parse_size(size: int | str) -> int:
    """Bytes from an int or a string such as "5GB", "500MB", "2GiB" (the hub's convention: GB = 10**9)."""
    if isinstance(size, int) and not isinstance(size, bool):
        value = size
    else:
        text = str(size).strip().upper().replace(" ", "")
        units = {"KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40, "KB": 10**3, "MB": 10**6, "GB": 10**9,
                 "TB": 10**12, "B": 1}
        unit = next((u for u in units if text.endswith(u)), "")
        try:
            value = int(float(text[: len(text) - len(unit)]) * units.get(unit, 1))
        except ValueError:
            raise CheckpointError(f"max shard size '{size}' is not a size (e.g. 5GB, 500MB, 2GiB)") from None
    if value < 1:
        raise CheckpointError(f"max shard size must be positive, got {size!r}")
    return value


def plan_shards(entries: list[Entry], max_shard_size: int) -> list[Shard]:
    """Cut `entries` (in order) into shards of at most `max_shard_size` bytes (a tensor larger than the limit gets a
    shard of its own, as the hub does), and set each tensor's offsets."""
    shards: list[Shard] = [Shard("")]
    for entry in entries:
        if shards[-1].entries and shards[-1].nbytes + entry.nbytes > max_shard_size:
            shards.append(Shard(""))
        shards[-1].entries.append(entry)
    n = len(shards)
    for i, shard in enumerate(shards):
        shard.file = "model.safetensors" if n == 1 else f"model-{i + 1:05d}-of-{n:05d}.safetensors"
        offset = 0
        for e in shard.entries:
            e.begin, e.end = offset, offset + e.nbytes
            offset = e.end
    return shards


def _header(shard: Shard, metadata: dict[str, str]) -> bytes:
    header: dict[str, Any] = {"__metadata__": dict(metadata)}
    for e in shard.entries:
        header[e.name] = {"dtype": NAMES[e.dtype], "shape": list(e.shape), "data_offsets": [e.begin, e.end]}
    blob = json.dumps(header, separators=(",", ":")).encode()
    return blob + b" " * (-len(blob) % 8)  # the data starts 8-byte aligned


class ShardWriter:
    """Writes tensors into planned shards at their offsets, in any order (see the module docstring)."""

    def __init__(self, directory: Path, shards: list[Shard], metadata: dict[str, str] | None = None):
        self.directory, self.shards = Path(directory), shards
        self.metadata = {"format": "pt", **(metadata or {})}
        self.entries: dict[str, tuple[Shard, Entry, int]] = {}  # name -> (shard, entry, data start in the file)
        self.written: set[str] = set()
        self._files: dict[str, Any] = {}
        for shard in shards:
            head = _header(shard, self.metadata)
            start = 8 + len(head)
            with open(self.directory / shard.file, "wb") as f:
                f.write(len(head).to_bytes(8, "little"))
                f.write(head)
                f.truncate(start + shard.nbytes)  # the final size now: a full disk fails here, before any work
            for e in shard.entries:
                self.entries[e.name] = (shard, e, start)

    def write(self, name: str, tensor: torch.Tensor) -> None:
        shard, entry, start = self.entries[name]
        if tensor.dtype != entry.dtype or tuple(tensor.shape) != entry.shape:
            raise CheckpointError(f"tensor '{name}' is {tensor.dtype} {tuple(tensor.shape)}, planned as {entry.dtype} "
                                  f"{entry.shape}")
        f = self._files.get(shard.file)
        if f is None:
            f = self._files[shard.file] = open(self.directory / shard.file, "r+b")  # noqa: SIM115 - kept open
        f.seek(start + entry.begin)
        if tensor.numel():  # the tensor's own bytes through the buffer protocol: no second copy of them
            f.write(memoryview(tensor.detach().contiguous().cpu().reshape(-1).view(torch.uint8).numpy()))
        self.written.add(name)

    def read(self, name: str) -> torch.Tensor:
        """A tensor already written (a module that uses it again), read back from its shard."""
        shard, entry, start = self.entries[name]
        f = self._files[shard.file]
        f.flush()
        with open(self.directory / shard.file, "rb") as g:
            g.seek(start + entry.begin)
            data = bytearray(g.read(entry.nbytes))
        return torch.frombuffer(data, dtype=torch.uint8).view(entry.dtype).reshape(entry.shape) if data else \
            torch.empty(entry.shape, dtype=entry.dtype)

    def missing(self) -> list[str]:
        return [name for name in self.entries if name not in self.written]

    def finish(self) -> None:
        """Check that every tensor was written, flush to disk, then write the index (when there are shards)."""
        missing = self.missing()
        if missing:
            raise CheckpointError(f"{len(missing)} planned tensor(s) were never written: {missing[:4]}")
        for f in self._files.values():
            f.flush()
            os.fsync(f.fileno())
            f.close()
        self._files.clear()
        if len(self.shards) > 1:
            index = {"metadata": {"total_size": sum(s.nbytes for s in self.shards)},
                     "weight_map": {e.name: s.file for s in self.shards for e in s.entries}}
            (self.directory / INDEX).write_text(json.dumps(index, indent=2) + "\n")

    def close(self) -> None:
        for f in self._files.values():
            f.close()
        self._files.clear()
