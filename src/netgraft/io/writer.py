"""Writing a model's weights as safetensors tensor by tensor, so no second copy of the whole model is built."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch


def save_streaming(model: Any, out: Path) -> None:
    """`save_pretrained` for the config, and the weights written tensor by tensor into model.safetensors (the
    safetensors format: 8-byte header size, JSON header, raw little-endian data) so that no second copy of the
    whole model is built in memory. Tied tensors are stored once, as save_pretrained does."""
    model.config.save_pretrained(out)
    if getattr(model, "generation_config", None) is not None and model.can_generate():
        model.generation_config.save_pretrained(out)
    names = {torch.bfloat16: "BF16", torch.float16: "F16", torch.float32: "F32", torch.float64: "F64",
             torch.int64: "I64", torch.int32: "I32", torch.uint8: "U8", torch.bool: "BOOL", torch.int8: "I8"}
    tensors, seen = [], set()
    for name, t in model.state_dict().items():
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape))
        if key in seen:  # a tied weight (lm_head = embeddings): from_pretrained ties it again
            continue
        seen.add(key)
        tensors.append((name, t))
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, t in tensors:
        size = t.numel() * t.element_size()
        header[name] = {"dtype": names[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + size]}
        offset += size
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # the data starts 8-byte aligned
    with open(out / "model.safetensors", "wb") as f:
        f.write(len(blob).to_bytes(8, "little"))
        f.write(blob)
        for _, t in tensors:
            if t.numel():  # the tensor's own bytes, through the buffer protocol: no copy of them
                f.write(memoryview(t.detach().contiguous().cpu().reshape(-1).view(torch.uint8).numpy()))
        f.flush()
        os.fsync(f.fileno())
