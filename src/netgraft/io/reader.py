"""A checkpoint directory read one tensor at a time.

`LazyCheckpoint` never holds the state dict: `get(name)` reads one tensor through `safetensors.safe_open`, with one
shard file open at a time (a checkpoint read in order opens each shard once). The shards come from
`netgraft.io.checkpoint.weight_files`, so an index that names a pickle or disagrees with its shards was refused before
anything is read.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from .checkpoint import weight_files

DTYPES = {"BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32, "F64": torch.float64,
          "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
          "BOOL": torch.bool}
NAMES = {v: k for k, v in DTYPES.items()}


class LazyCheckpoint:
    """The tensors of a model directory (``model.safetensors`` or an index and its shards), read on demand.

    Example:
        >>> import tempfile, torch
        >>> from pathlib import Path
        >>> from safetensors.torch import save_file
        >>> d = Path(tempfile.mkdtemp())
        >>> save_file({"w": torch.ones(2, 3)}, d / "model.safetensors")
        >>> ckpt = LazyCheckpoint(d)
        >>> ckpt.shape("w"), ckpt.get("w").sum().item()
        ((2, 3), 6.0)
    """

    def __init__(self, directory: Path):
        self.directory = Path(directory)
        self.headers = weight_files(self.directory)
        self.where: dict[str, Path] = {name: path for path, header in self.headers.items() for name in header}
        self._path: Path | None = None
        self._handle: Any = None

    def names(self) -> list[str]:
        return list(self.where)

    def spec(self, name: str) -> dict[str, Any]:
        return self.headers[self.where[name]][name]

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(int(d) for d in self.spec(name)["shape"])

    def dtype(self, name: str) -> torch.dtype:
        return DTYPES[self.spec(name)["dtype"]]

    def nbytes(self, name: str | None = None) -> int:
        """Bytes of one tensor, or of all of them."""
        if name is None:
            return sum(self.nbytes(n) for n in self.where)
        start, end = self.spec(name)["data_offsets"]
        return int(end) - int(start)

    def numel(self) -> int:
        return sum(math.prod(self.shape(n)) for n in self.where)

    def get(self, name: str) -> torch.Tensor:
        """One tensor, read from its shard (opening it, and closing the shard read before, when it differs)."""
        path = self.where[name]
        if path != self._path:
            self.close()
            self._handle = safe_open(str(path), framework="pt", device="cpu")
            self._path = path
        return self._handle.get_tensor(name)

    def close(self) -> None:
        self._handle, self._path = None, None

    def __enter__(self) -> LazyCheckpoint:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
