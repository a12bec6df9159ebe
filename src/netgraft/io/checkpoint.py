"""Reading a Hugging Face model directory safely: its config, the safetensors headers (read without executing
anything), the shards an index names (never a pickle), strict loading (every tensor present and used), and the side
files that may travel with a grown model (never a pickle, never a symlink out of the directory)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from ..errors import CheckpointError, one_line

# Never opened, never copied: pickle archives (and torch.save's zip of a pickle) under their usual names.
PICKLE_SUFFIXES = frozenset({".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".joblib", ".dill", ".npy", ".npz",
                             ".pdparams", ".mdl", ".sav"})

# Weights of the old model in another format: copying them would put stale weights next to the grown ones.
STALE_WEIGHT_SUFFIXES = frozenset({".h5", ".hdf5", ".msgpack", ".onnx", ".gguf", ".ggml", ".tflite", ".ot", ".keras"})


_PICKLE_MAGIC = tuple(b"\x80" + bytes([p]) for p in range(2, 6)) + (b"PK\x03\x04",)  # pickle 2-5; zip (torch.save)


NOT_COPIED = ("config.json", "netgraft.json")  # written by this run

# ------------------------------------------------------------------------------------------------------ loading
def load_config(src: Path) -> Any:
    if not src.is_dir():
        raise CheckpointError(f"{src}: no such directory")
    if not (src / "config.json").is_file():
        raise CheckpointError(f"{src}: no config.json (not a Hugging Face model directory)")
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(src)
    except Exception as err:  # noqa: BLE001 - one line for the user
        raise CheckpointError(f"{src}: cannot read config.json ({type(err).__name__}: {one_line(err)})") from err


def model_class(config: Any) -> type:
    """The class named in config.architectures (a transformers model class only), else the family's base model
    class (what AutoModel would build for this config)."""
    import transformers

    arch = (getattr(config, "architectures", None) or [None])[0]
    cls = getattr(transformers, arch, None) if isinstance(arch, str) else None
    if isinstance(cls, type) and issubclass(cls, transformers.PreTrainedModel):
        return cls
    try:
        return transformers.AutoModel._model_mapping[type(config)]
    except KeyError:
        raise CheckpointError(f"no transformers model class for config {type(config).__name__}") from None


def safetensors_header(path: Path) -> dict[str, Any]:
    """The JSON header of a safetensors file (8-byte little-endian size, then JSON): names, dtypes, shapes, offsets.
    Reading it executes nothing, whatever the file really is."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            if size < 8 or n <= 0 or n > min(size - 8, 1 << 28):
                raise ValueError("bad header size")
            header = json.loads(f.read(n))
        if not isinstance(header, dict):
            raise ValueError("header is not a JSON object")
    except OSError:
        raise
    except Exception as err:  # noqa: BLE001
        raise CheckpointError(f"{path}: not a safetensors file ({one_line(err)})") from err
    header.pop("__metadata__", None)
    return header


def _is_plain_name(name: Any) -> bool:
    return isinstance(name, str) and name not in ("", ".", "..") and "/" not in name and "\\" not in name \
        and "\0" not in name


def weight_files(src: Path) -> dict[Path, dict[str, Any]]:
    """The safetensors files transformers will read for DIR, each with its header, as transformers picks them
    (model.safetensors, else the shards named by model.safetensors.index.json). Refuses an index that names anything
    but present .safetensors shards of DIR, or that disagrees with the shards' contents; never opens a pickle."""
    single, index = src / "model.safetensors", src / "model.safetensors.index.json"
    shards: dict[str, list[str]] = {}
    if index.is_file():  # checked even when model.safetensors exists: an index naming a pickle is never trusted
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
            if not isinstance(weight_map, dict):
                raise ValueError("weight_map is not an object")
        except (ValueError, KeyError, TypeError) as err:
            raise CheckpointError(f"{index}: not a valid index ({type(err).__name__}: {one_line(err)})") from err
        for tensor, shard in weight_map.items():
            if not _is_plain_name(shard):
                raise CheckpointError(f"{index}: tensor '{tensor}' is mapped to '{shard}', not a file name in {src}")
            if not shard.endswith(".safetensors"):
                raise CheckpointError(f"{index}: tensor '{tensor}' is mapped to '{shard}', which is not a "
                                      f".safetensors file (netgraft never opens pickle checkpoints)")
            shards.setdefault(shard, []).append(tensor)
    if single.is_file():
        return {single: safetensors_header(single)}
    if not shards:
        if any(src.glob("*.bin")) or any(src.glob("*.pt")) or any(src.glob("*.pth")):
            raise CheckpointError(f"{src}: no *.safetensors weights (netgraft never unpickles .bin checkpoints; "
                                  f"convert them with save_pretrained(..., safe_serialization=True))")
        raise CheckpointError(f"{src}: no model.safetensors or model.safetensors.index.json (netgraft never "
                              f"unpickles .bin checkpoints; convert them with save_pretrained(..., "
                              f"safe_serialization=True))")
    out: dict[Path, dict[str, Any]] = {}
    for shard, listed in sorted(shards.items()):
        path = src / shard
        if not path.is_file():
            raise CheckpointError(f"{index}: shard '{shard}' is missing from {src}")
        header = safetensors_header(path)
        absent = [t for t in listed if t not in header]
        extra = sorted(set(header) - set(listed))
        if absent:
            raise CheckpointError(f"{index}: {tensor_names(absent)} listed in '{shard}' but not stored there")
        if extra:
            raise CheckpointError(f"{index}: '{shard}' stores {tensor_names(extra)} that the index does not list")
        out[path] = header
    return out


def tensor_names(names: Any, limit: int = 4) -> str:
    names = sorted(str(n) for n in names)
    shown = ", ".join(names[:limit]) + (f" (+{len(names) - limit} more)" if len(names) > limit else "")
    return f"tensor{'s' if len(names) != 1 else ''} {shown}"


def check_tensors(names: dict[str, tuple[int, ...]], expected: dict[str, tuple[int, ...]], ignore: list[str],
                  where: str, cls_name: str) -> None:
    """Strict loading: every tensor the class expects (`expected`, name -> shape) is among the checkpoint's `names`
    with that shape, and every tensor there is used (transformers' own patterns of legacy tensors it ignores
    excepted), else CheckpointError naming them - transformers would initialise, drop or re-initialise them
    silently."""
    missing = sorted(n for n in expected if n not in names)
    unused = sorted(n for n in names if n not in expected and not any(re.search(p, n) for p in ignore))
    wrong = sorted(n for n in expected if n in names and tuple(names[n]) != tuple(expected[n]))
    problems = []
    if missing:
        problems.append(f"missing {tensor_names(missing)}")
    if unused:
        problems.append(f"unused {tensor_names(unused)}")
    if wrong:
        problems.append("shape mismatch " + ", ".join(f"{n} (checkpoint {tuple(names[n])}, model "
                                                      f"{tuple(expected[n])})" for n in wrong[:3])
                        + (" ..." if len(wrong) > 3 else ""))
    if problems:
        raise CheckpointError(f"{where}: the checkpoint does not match {cls_name}: " + "; ".join(problems))


def _allowed_roots(src: Path) -> list[Path]:
    """Where symlinks of DIR may lead: DIR itself and, for a Hugging Face cache snapshot
    (.../snapshots/<revision>), the cache's blobs folder that its files link to."""
    real = src.resolve()
    roots = [real]
    if real.parent.name == "snapshots":
        roots.append(real.parent.parent / "blobs")
    return roots


def side_files(src: Path) -> tuple[list[tuple[Path, Path]], list[tuple[str, str]]]:
    """Files of DIR that travel to OUT (tokenizer, README, ...) as (name in DIR, file to read), and those skipped with
    the reason. Pickle archives are skipped by name without being opened; other files are skipped if they carry a
    pickle or zip signature, are weights (of the old model), are not regular files or are symlinks out of DIR."""
    roots = _allowed_roots(src)
    travel, skipped = [], []
    for entry in sorted(src.iterdir()):
        name = entry.name
        if name in NOT_COPIED or name.endswith(".safetensors") or name.endswith(".index.json"):
            continue
        suffix = entry.suffix.lower()
        if suffix in PICKLE_SUFFIXES:
            skipped.append((name, "pickle file: never opened or copied"))
            continue
        if suffix in STALE_WEIGHT_SUFFIXES:
            skipped.append((name, "weights of the source model in another format"))
            continue
        try:
            target = entry.resolve() if entry.is_symlink() else entry
        except (OSError, RuntimeError):  # a symlink loop
            skipped.append((name, "unresolvable symlink"))
            continue
        if entry.is_symlink() and not any(target == r or target.is_relative_to(r) for r in roots):
            skipped.append((name, "symlink out of the model directory"))
            continue
        if not target.is_file():
            if not target.is_dir():
                skipped.append((name, "not a regular file" if target.exists() else "dangling symlink"))
            continue  # sub-directories stay behind, as before
        try:
            with open(target, "rb") as f:
                head = f.read(4)
        except OSError as err:
            skipped.append((name, f"unreadable ({err.strerror})"))
            continue
        if head.startswith(_PICKLE_MAGIC):
            skipped.append((name, "pickle or zip archive: never copied"))
            continue
        travel.append((entry, target))
    return travel, skipped
