"""`netgraft` command line: inspect, widen and deepen Hugging Face model directories (config.json + safetensors).

    netgraft inspect DIR
    netgraft widen DIR -o OUT --hidden-size N [--intermediate-size N] [--num-attention-heads N]
                                [--num-key-value-heads N] [--seed S] [--force]
    netgraft deepen DIR -o OUT --num-layers N [--force]

Contract (every refusal or failure: exit status 2 and exactly one line on stderr, `netgraft <command>: <reason>`;
Ctrl-C: status 130):

* Nothing is lost. DIR is only read. OUT may not equal DIR, lie inside it or contain it (checked on the resolved
  paths and on the file identities of their ancestors, with or without --force). OUT is written into a temporary
  sibling directory `.OUT.netgraft-*` that becomes OUT by one atomic rename at the end: without --force the rename
  refuses an OUT that exists by then (renameat2 RENAME_NOREPLACE), so of two concurrent runs to one OUT exactly one
  succeeds; with --force the new directory and the old OUT are swapped atomically (RENAME_EXCHANGE) and the old one is
  deleted afterwards. A failed, refused, terminated (SIGTERM, SIGHUP) or interrupted run leaves no temporary
  directory, no OUT and no parent directory it created. OUT gets the permissions of a normal mkdir (0777 & ~umask).
* Nothing is corrupted. Loading is strict: every tensor the model class expects is in the checkpoint with its shape,
  and every tensor in the checkpoint is used (transformers' own list of redundant legacy buffers such as old
  `position_ids` excepted), else exit 2 naming the tensors. The index of a sharded checkpoint must name present
  .safetensors shards of DIR that hold exactly the tensors it lists.
* Nothing is executed. Weights are read through safetensors only; no pickle file is ever opened, unpickled or copied:
  an index naming a .bin shard is refused, and side files travel to OUT only if they are regular files that are not
  pickle archives (*.bin, *.pt, *.pth, *.pkl, *.ckpt, ... or a pickle/zip signature) nor weights of another format;
  symlinks are followed only within DIR (and, for a Hugging Face cache snapshot, into its blobs folder).
* Sizes are whole numbers from 1 to 2**31 - 1; a size equal to the current one leaves that dimension unchanged, but a
  widen that grows nothing is refused (as is a size below the current one, and a --num-layers that does not exceed
  the current depth). Before loading, the result's size is estimated from the config (parameters after growth x the
  checkpoint's bytes per parameter); a run that would need more memory (source + result) than is available, or more
  disk than is free where OUT goes, is refused with the figures.
"""

from __future__ import annotations

import argparse
import copy
import ctypes
import errno
import json
import math
import os
import re
import shutil
import signal
import sys
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from . import hf
from .errors import NetgraftError
from .hf.plan import plan_sizes
from .ops.deepen import deepen
from .ops.widen import widen


class CliError(Exception):
    """A one-line reason for a non-zero exit."""


class _Terminated(BaseException):
    """SIGTERM or SIGHUP: unwinds the stack like KeyboardInterrupt, so every cleanup runs on the way out."""


MAX_SIZE = 2**31 - 1
# Never opened, never copied: pickle archives (and torch.save's zip of a pickle) under their usual names.
PICKLE_SUFFIXES = frozenset({".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".joblib", ".dill", ".npy", ".npz",
                             ".pdparams", ".mdl", ".sav"})
# Weights of the old model in another format: copying them would put stale weights next to the grown ones.
STALE_WEIGHT_SUFFIXES = frozenset({".h5", ".hdf5", ".msgpack", ".onnx", ".gguf", ".ggml", ".tflite", ".ot", ".keras"})
_PICKLE_MAGIC = tuple(b"\x80" + bytes([p]) for p in range(2, 6)) + (b"PK\x03\x04",)  # pickle 2-5; zip (torch.save)
_NOT_COPIED = ("config.json", "netgraft.json")  # written by this run


def _one_line(text: Any) -> str:
    """A message cut at its first line break (the first non-blank line), so stderr gets exactly one line."""
    for line in str(text).splitlines():
        if line.strip():
            return line.strip()
    return ""


def _human(n: float) -> str:
    for unit in ("bytes", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def _progress(total: int, desc: str) -> Any:
    show = sys.stderr.isatty() or os.environ.get("NETGRAFT_PROGRESS") == "1"
    try:
        from tqdm import tqdm
    except ImportError:  # tqdm is optional: plain stage lines instead (on a terminal only: stderr is for errors)
        class _Plain:
            def update(self, n: int = 1) -> None:
                pass

            def set_postfix_str(self, s: str) -> None:
                if show:
                    print(f"  {desc}: {s}", file=sys.stderr, flush=True)

            def close(self) -> None:
                pass

        return _Plain()
    return tqdm(total=total, desc=desc, file=sys.stderr, disable=not show)


# ------------------------------------------------------------------------------------------------------ loading
def load_config(src: Path) -> Any:
    if not src.is_dir():
        raise CliError(f"{src}: no such directory")
    if not (src / "config.json").is_file():
        raise CliError(f"{src}: no config.json (not a Hugging Face model directory)")
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(src)
    except Exception as err:  # noqa: BLE001 - one line for the user
        raise CliError(f"{src}: cannot read config.json ({type(err).__name__}: {_one_line(err)})") from err


def _model_class(config: Any) -> Any:
    """The class named in config.architectures (a transformers model class only), else AutoModel."""
    import transformers

    arch = (getattr(config, "architectures", None) or [None])[0]
    cls = getattr(transformers, arch, None) if isinstance(arch, str) else None
    if not (isinstance(cls, type) and issubclass(cls, transformers.PreTrainedModel)):
        return transformers.AutoModel
    return cls


def _safetensors_header(path: Path) -> dict[str, Any]:
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
        raise CliError(f"{path}: not a safetensors file ({_one_line(err)})") from err
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
            raise CliError(f"{index}: not a valid index ({type(err).__name__}: {_one_line(err)})") from err
        for tensor, shard in weight_map.items():
            if not _is_plain_name(shard):
                raise CliError(f"{index}: tensor '{tensor}' is mapped to '{shard}', not a file name in {src}")
            if not shard.endswith(".safetensors"):
                raise CliError(f"{index}: tensor '{tensor}' is mapped to '{shard}', which is not a .safetensors "
                               f"file (netgraft never opens pickle checkpoints)")
            shards.setdefault(shard, []).append(tensor)
    if single.is_file():
        return {single: _safetensors_header(single)}
    if not shards:
        if any(src.glob("*.bin")) or any(src.glob("*.pt")) or any(src.glob("*.pth")):
            raise CliError(f"{src}: no *.safetensors weights (netgraft never unpickles .bin checkpoints; convert them "
                           f"with save_pretrained(..., safe_serialization=True))")
        raise CliError(f"{src}: no model.safetensors or model.safetensors.index.json (netgraft never unpickles .bin "
                       f"checkpoints; convert them with save_pretrained(..., safe_serialization=True))")
    out: dict[Path, dict[str, Any]] = {}
    for shard, listed in sorted(shards.items()):
        path = src / shard
        if not path.is_file():
            raise CliError(f"{index}: shard '{shard}' is missing from {src}")
        header = _safetensors_header(path)
        absent = [t for t in listed if t not in header]
        extra = sorted(set(header) - set(listed))
        if absent:
            raise CliError(f"{index}: {_names(absent)} listed in '{shard}' but not stored there")
        if extra:
            raise CliError(f"{index}: '{shard}' stores {_names(extra)} that the index does not list")
        out[path] = header
    return out


def _names(names: Any, limit: int = 4) -> str:
    names = sorted(str(n) for n in names)
    shown = ", ".join(names[:limit]) + (f" (+{len(names) - limit} more)" if len(names) > limit else "")
    return f"tensor{'s' if len(names) != 1 else ''} {shown}"


def load_model(src: Path) -> Any:
    """The model class named in config.architectures, weights from safetensors only, loaded strictly: a tensor the
    class expects that is missing from the checkpoint, one of the checkpoint's tensors the class does not use, or a
    shape that differs is an error (transformers would initialise, drop or re-initialise it silently)."""
    config = load_config(src)

    try:
        hf.family_of(config)
    except NetgraftError as err:
        raise CliError(_one_line(err)) from err
    weight_files(src)
    cls = _model_class(config)
    try:
        model, info = cls.from_pretrained(src, use_safetensors=True, dtype="auto", output_loading_info=True,
                                          ignore_mismatched_sizes=True)  # reported below instead of raised
    except Exception as err:  # noqa: BLE001
        raise CliError(f"{src}: cannot load the weights ({type(err).__name__}: {_one_line(err)})") from err
    problems = []
    if info.get("missing_keys"):
        problems.append(f"missing {_names(info['missing_keys'])}")
    if info.get("unexpected_keys"):
        problems.append(f"unused {_names(info['unexpected_keys'])}")
    if info.get("mismatched_keys"):
        shown = sorted(info["mismatched_keys"], key=lambda m: str(m[0]))
        problems.append("shape mismatch " + ", ".join(f"{m[0]} (checkpoint {tuple(m[1])}, model {tuple(m[2])})"
                                                      for m in shown[:3]) + (" ..." if len(shown) > 3 else ""))
    if info.get("error_msgs"):
        problems.append(_one_line(info["error_msgs"][0]))
    if problems:
        raise CliError(f"{src}: the checkpoint does not match {cls.__name__}: " + "; ".join(problems))
    return model


# ------------------------------------------------------------------------------------------------ side files
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
        if name in _NOT_COPIED or name.endswith(".safetensors") or name.endswith(".index.json"):
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


# ------------------------------------------------------------------------------------------------ the sizes
def _size(text: str) -> int:
    """argparse type of a size: a whole number from 1 to MAX_SIZE (no floats, signs, underscores or words)."""
    digits = text.strip()
    if not re.fullmatch(r"[0-9]+", digits):
        raise argparse.ArgumentTypeError(f"'{text}' is not a size (a whole number from 1 to {MAX_SIZE})")
    if len(digits.lstrip("0")) > 10 or int(digits) > MAX_SIZE:
        raise argparse.ArgumentTypeError(f"{digits} is too large (at most {MAX_SIZE})")
    if int(digits) < 1:
        raise argparse.ArgumentTypeError(f"{digits} is not a size: sizes start at 1 (leave the option out to keep "
                                         f"the current size)")
    return int(digits)


def _seed(text: str) -> int:
    if not re.fullmatch(r"[0-9]{1,19}", text.strip()) or int(text) > 2**63 - 1:
        raise argparse.ArgumentTypeError(f"'{text}' is not a seed (a whole number from 0 to {2**63 - 1})")
    return int(text)


_WIDEN_OPTIONS = (("hidden_size", "hidden", "--hidden-size"), ("intermediate_size", "ffn", "--intermediate-size"),
                  ("num_attention_heads", "heads", "--num-attention-heads"),
                  ("num_key_value_heads", "kv", "--num-key-value-heads"))


def requested_sizes(args: argparse.Namespace, op: str, config: Any) -> tuple[dict[str, int], Any]:
    """The growth asked for, checked against the current sizes (no shrinking, something must grow), and the
    resulting sizes as far as the config tells (used for the size estimate; the growth itself decides exactly)."""


    try:
        fam = hf.family_of(config)
        old = hf.Sizes.of(config, fam)
    except (NetgraftError, TypeError, ZeroDivisionError) as err:
        raise CliError(_one_line(err)) from err
    new = copy.copy(old)
    if op == "deepen":
        if args.num_layers <= old.layers:
            raise CliError(f"num_hidden_layers {args.num_layers} must exceed the current {old.layers} (--num-layers)")
        new.layers = args.num_layers
        return {"num_hidden_layers": args.num_layers}, new
    kwargs = {key: getattr(args, key) for key, _, _ in _WIDEN_OPTIONS if getattr(args, key) is not None}
    if not kwargs:
        raise CliError("widen needs at least one of --hidden-size, --intermediate-size, --num-attention-heads,"
                       " --num-key-value-heads")
    for key, attr, flag in _WIDEN_OPTIONS:
        if key in kwargs and kwargs[key] < getattr(old, attr):
            raise CliError(f"{flag} {kwargs[key]} is below the current {getattr(old, attr)} (netgraft only grows)")
    if all(kwargs[key] == getattr(old, attr) for key, attr, _ in _WIDEN_OPTIONS if key in kwargs):
        raise CliError("nothing to grow: " + ", ".join(f"{flag} {kwargs[key]} is the current size"
                                                       for key, _, flag in _WIDEN_OPTIONS if key in kwargs))
    try:  # the family's own plan checks the sizes (exactly the rules the growth applies) and gives the new ones
        return kwargs, plan_sizes(config, fam, kwargs)[1]
    except NetgraftError as err:
        raise CliError(_one_line(err)) from err


def _available_memory() -> int | None:
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


def _existing_ancestor(path: Path) -> Path:
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
    avail = _available_memory()
    if avail is not None and need > avail:
        raise CliError(f"the grown model needs about {_human(new_bytes)} ({_human(need)} in memory with the source "
                       f"model) but only {_human(avail)} of memory is available; choose smaller sizes")
    where = _existing_ancestor(out.parent)
    try:
        free = shutil.disk_usage(where).free
    except OSError:
        return
    if new_bytes + side_bytes > free:
        raise CliError(f"the grown model needs about {_human(new_bytes + side_bytes)} on disk but {where} has only "
                       f"{_human(free)} free")


# ------------------------------------------------------------------------------------------------ OUT vs DIR
def check_paths(src: Path, out: Path, force: bool) -> None:
    """OUT must not be DIR, lie inside DIR or contain DIR (as paths, through symlinks, or as the same directories
    under other names); without --force it must not exist (a dangling symlink counts)."""
    if not src.is_dir():
        raise CliError(f"{src}: no such directory")
    real_src = src.resolve(strict=True)
    name = out.name
    lexical = out.resolve() if name in ("", ".", "..") else out.parent.resolve() / name  # what the rename replaces
    for o in dict.fromkeys((lexical, out.resolve())):
        if o == real_src:
            raise CliError(f"OUT {out} is DIR {src}; choose another output directory")
        if o.is_relative_to(real_src):
            raise CliError(f"OUT {out} lies inside DIR {src}; choose a directory outside it")
        if real_src.is_relative_to(o):
            raise CliError(f"OUT {out} contains DIR {src}" + (" (--force would delete it)" if force else "") +
                           "; choose a directory that does not contain the source")
    src_stat = os.stat(real_src)
    for p in (lexical, *lexical.parents):  # the same directory under another name (bind mount, hard-linked path)
        try:
            st = os.stat(p)
        except OSError:
            continue
        if (st.st_dev, st.st_ino) == (src_stat.st_dev, src_stat.st_ino):
            raise CliError(f"OUT {out} is or lies inside DIR {src} (the same directory under another name)")
    try:
        out_stat = os.stat(lexical)
    except OSError:
        out_stat = None
    if out_stat is not None:
        for p in (real_src, *real_src.parents):
            st = os.stat(p)
            if (st.st_dev, st.st_ino) == (out_stat.st_dev, out_stat.st_ino):
                raise CliError(f"OUT {out} contains DIR {src} (under another name); choose another directory")
    if os.path.lexists(out) and not force:
        raise CliError(f"{out} exists; pass --force to replace it")


# ------------------------------------------------------------------------------------------------ atomic OUT
_RENAME_NOREPLACE, _RENAME_EXCHANGE = 1, 2
_placed: list[Path] = []  # OUT once the run's directory has become it (what a late failure may no longer deny)


def _renameat2(src: Path, dst: Path, flags: int) -> bool:
    """renameat2(2): True when done; False where it is unavailable (no such libc call, kernel or filesystem
    support); an OSError (FileExistsError with RENAME_NOREPLACE, FileNotFoundError...) otherwise."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int
    at_fdcwd = -100
    if fn(at_fdcwd, os.fsencode(src), at_fdcwd, os.fsencode(dst), flags) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP):
        return False
    raise OSError(code, os.strerror(code), str(src), None, str(dst))


def _remove(path: Path) -> None:
    if path.is_symlink() or not path.is_dir():
        path.unlink(missing_ok=True)
    else:
        shutil.rmtree(path, ignore_errors=True)


def place(tmp: Path, out: Path, force: bool) -> None:
    """Makes the finished directory `tmp` become `out` in one atomic step. Without `force`, an `out` that exists by
    now (another run made it meanwhile) is left alone and the run fails; with `force`, `out` is atomically swapped
    with `tmp` and the old one deleted afterwards."""
    exists_msg = f"{out} exists (created while netgraft was writing it); it was left alone; pass --force to replace it"
    for _ in range(10):  # only loops while other processes keep creating and deleting OUT
        if force and os.path.lexists(out):
            try:
                swapped = _renameat2(tmp, out, _RENAME_EXCHANGE)
            except FileNotFoundError:
                continue  # OUT went away meanwhile: a plain placement
            if swapped:
                _placed.append(out)
                _remove(tmp)  # the old OUT, now under the temporary name
                return
            aside = Path(tempfile.mkdtemp(prefix=f".{out.name}.netgraft-old-", dir=out.parent))
            try:  # no renameat2: move the old OUT aside (atomic), move the new one in (atomic), delete the old one
                os.rename(out, aside / "old")
                try:
                    os.rename(tmp, out)
                except BaseException:
                    os.rename(aside / "old", out)
                    raise
                _placed.append(out)
            finally:
                shutil.rmtree(aside, ignore_errors=True)
            return
        try:
            if _renameat2(tmp, out, _RENAME_NOREPLACE):
                _placed.append(out)
                return
        except FileExistsError:
            if force:
                continue
            raise CliError(exists_msg) from None
        # no renameat2: rename(2) itself refuses a non-empty directory or a file at OUT (an empty directory made in
        # the instant between this check and the rename is the one thing it could replace)
        if os.path.lexists(out):
            if force:
                continue
            raise CliError(exists_msg)
        try:
            os.rename(tmp, out)
        except OSError as err:
            if err.errno in (errno.EEXIST, errno.ENOTEMPTY, errno.ENOTDIR, errno.EISDIR) and not force:
                raise CliError(exists_msg) from err
            raise
        _placed.append(out)
        return
    raise CliError(f"{out} keeps changing while netgraft places it (other runs?); nothing was written")


@contextmanager
def atomic_dir(out: Path, force: bool) -> Iterator[Path]:
    """A temporary sibling directory (permissions 0777 & ~umask, like a mkdir) that becomes `out` only if the block
    completes; on any failure it is removed, with the parent directories this call created."""
    if os.path.lexists(out) and not force:
        raise CliError(f"{out} exists; pass --force to replace it")
    created = []
    p = Path(os.path.abspath(out.parent))
    while not os.path.lexists(p) and p != p.parent:
        created.append(p)
        p = p.parent
    tmp = None
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.netgraft-", dir=out.parent))
        umask = os.umask(0o022)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it 0700; OUT is an ordinary directory
        yield tmp
        place(tmp, out, force)
    except BaseException:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        for d in created:  # innermost first; only if still empty
            try:
                os.rmdir(d)
            except OSError:
                break
        raise


# ------------------------------------------------------------------------------------------------------- grow
def _grow(args: argparse.Namespace, op: str) -> int:


    src, out = Path(args.dir), Path(args.output)
    check_paths(src, out, args.force)
    config = load_config(src)
    kwargs, sizes = requested_sizes(args, op, config)
    headers = weight_files(src)
    extras, skipped = side_files(src)
    estimate = estimate_bytes(config, _model_class(config), sizes, headers)
    if estimate is not None:
        check_resources(*estimate, sum(t.stat().st_size for _, t in extras), out)
    bar = _progress(4, f"netgraft {op}")
    with atomic_dir(out, args.force) as tmp:  # made now: an unwritable OUT fails before the long part
        bar.set_postfix_str("loading")
        model = load_model(src)
        bar.update()
        bar.set_postfix_str(f"{op}ing")
        try:
            if op == "widen":
                grown = widen(model, seed=args.seed, **kwargs)
            else:
                grown = deepen(model, **kwargs)
        except (NetgraftError, ValueError) as err:
            raise CliError(_one_line(err)) from err
        bar.update()
        bar.set_postfix_str("saving")
        del model  # the source is no longer needed: its memory is free before the result is written
        save_streaming(grown, tmp)
        for entry, target in extras:  # tokenizer and other side files travel along
            if not (tmp / entry.name).exists():
                shutil.copyfile(target, tmp / entry.name)
        cert = grown.netgraft_certificate
        (tmp / "netgraft.json").write_text(json.dumps({
            "operation": op, "source": str(src), "changes": grown.netgraft_report.changes,
            "certificate": {"max_abs": cert.max_abs, "bound": cert.bound, "passed": cert.passed},
            "not_copied": {name: why for name, why in skipped}}, indent=1) + "\n")
    bar.update(2)
    bar.close()
    print(grown.netgraft_report)
    for name, why in skipped:
        print(f"not copied: {name} ({why})")
    print(f"wrote {out}")
    return 0


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


def _inspect(args: argparse.Namespace) -> int:

    config = load_config(Path(args.dir))
    try:
        info = hf.describe(config)
    except NetgraftError as err:
        raise CliError(_one_line(err)) from err
    width = max(len(k) for k in info)
    for key, value in info.items():
        if isinstance(value, dict):
            print(f"{key}:")
            for k, v in value.items():
                print(f"  {k:<20} {v}")
        else:
            print(f"{key:<{width}}  {value}")
    return 0


# ------------------------------------------------------------------------------------------------ entry point
class _Parser(argparse.ArgumentParser):
    """Usage errors in the CLI's format: one line, `netgraft <command>: <reason>`, status 2."""

    def error(self, message: str) -> Any:
        self.exit(2, f"{self.prog}: {_one_line(message)}\n")


def parser() -> argparse.ArgumentParser:
    p = _Parser(prog="netgraft", description="Grow Hugging Face models exactly (GPT-2, BERT, LLaMA).")
    sub = p.add_subparsers(dest="command", required=True)
    i = sub.add_parser("inspect", help="family, sizes and which operations are exact")
    i.add_argument("dir")
    for name, helptext in (("widen", "widen hidden size / FFN / heads"), ("deepen", "add layers")):
        s = sub.add_parser(name, help=helptext)
        s.add_argument("dir")
        s.add_argument("-o", "--output", required=True, help="output directory (written atomically; may not be, "
                       "contain or lie inside DIR)")
        s.add_argument("--force", action="store_true", help="replace OUT if it exists (atomically)")
        if name == "widen":
            for _, _, flag in _WIDEN_OPTIONS:
                s.add_argument(flag, type=_size, help="new size (a whole number; the current one = unchanged)")
            s.add_argument("--seed", type=_seed, default=0, help="seed of the FFN's Net2Net map")
        else:
            s.add_argument("--num-layers", type=_size, required=True, help="new number of layers (> the current)")
    return p


def _failure(err: BaseException) -> tuple[str, int]:
    """The one-line message and exit status for an exception that ends a run."""
    if isinstance(err, CliError):
        return _one_line(err), 2
    outcome = f"; {_placed[-1]} was written" if _placed else "; nothing was written"
    if isinstance(err, KeyboardInterrupt):
        return "interrupted" + outcome, 130
    if isinstance(err, _Terminated):
        return f"terminated by {err}" + outcome, 2
    text = _one_line(err)
    if isinstance(err, MemoryError) or re.search(r"can't allocate memory|not enough memory|out of memory", text,
                                                 re.I):
        return "out of memory" + (f" ({text})" if text else "") + outcome, 2
    if isinstance(err, OSError):
        where = "" if err.filename is None else f": {err.filename}" + \
            ("" if err.filename2 is None else f" -> {err.filename2}")
        return f"{err.strerror or text or type(err).__name__}{where}" + outcome, 2
    return (f"{type(err).__name__}: {text}" if text else type(err).__name__) + outcome, 2


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `netgraft` console script; returns the exit status."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # local directories only: never wait on the hub
    args = parser().parse_args(argv)
    _placed.clear()
    try:  # one progress bar (ours) and one line per error: transformers' own bars and warnings stay quiet
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
    except ImportError:
        pass

    def terminate(signum: int, frame: Any) -> None:
        signal.signal(signum, signal.SIG_IGN)  # a second signal must not interrupt the cleanup
        raise _Terminated(signal.Signals(signum).name)

    previous = {}
    for sig in (signal.SIGTERM, getattr(signal, "SIGHUP", None)):
        if sig is not None:
            try:
                previous[sig] = signal.signal(sig, terminate)
            except (ValueError, OSError):  # not the main thread
                pass
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # library warnings would add lines to stderr
            if args.command == "inspect":
                return _inspect(args)
            return _grow(args, args.command)
    except (Exception, KeyboardInterrupt, _Terminated) as err:  # noqa: BLE001 - every failure: one line, status
        message, status = _failure(err)
        print(f"netgraft {args.command}: {_one_line(message)}", file=sys.stderr, flush=True)
        return status
    finally:
        for sig, handler in previous.items():
            try:
                signal.signal(sig, handler)
            except (ValueError, OSError, TypeError):
                pass


if __name__ == "__main__":
    sys.exit(main())
