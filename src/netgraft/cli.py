"""`netgraft` command line: inspect, widen and deepen Hugging Face model directories (config.json + safetensors).

    netgraft inspect DIR
    netgraft widen DIR -o OUT --hidden-size N [--intermediate-size N] [--num-attention-heads N]
                                [--num-key-value-heads N] [--seed S] [--force]
    netgraft deepen DIR -o OUT --num-layers N [--force]

Weights are read through safetensors only (no pickle is ever unpickled). OUT is written into a temporary sibling
directory and renamed into place at the end, so a failed or interrupted run leaves no half-written OUT. Errors exit
with status 2 and one line on stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch


class CliError(Exception):
    """A one-line reason for a non-zero exit."""


def _progress(total: int, desc: str) -> Any:
    try:
        from tqdm import tqdm
    except ImportError:  # tqdm is optional: plain stage lines instead
        class _Plain:
            def update(self, n: int = 1) -> None:
                pass

            def set_postfix_str(self, s: str) -> None:
                print(f"  {desc}: {s}", file=sys.stderr, flush=True)

            def close(self) -> None:
                pass

        return _Plain()
    return tqdm(total=total, desc=desc, file=sys.stderr, disable=not sys.stderr.isatty() and
                os.environ.get("NETGRAFT_PROGRESS") != "1")


def load_config(src: Path) -> Any:
    if not src.is_dir():
        raise CliError(f"{src}: no such directory")
    if not (src / "config.json").is_file():
        raise CliError(f"{src}: no config.json (not a Hugging Face model directory)")
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(src)
    except Exception as err:  # noqa: BLE001 - one line for the user
        raise CliError(f"{src}: cannot read config.json ({type(err).__name__}: {err})") from err


def load_model(src: Path) -> Any:
    """The model class named in config.architectures, weights from safetensors only."""
    import transformers

    config = load_config(src)
    from . import hf

    try:
        hf.family_of(config)
    except hf.HFError as err:
        raise CliError(str(err)) from err
    if not any(src.glob("*.safetensors")):
        raise CliError(f"{src}: no *.safetensors weights (netgraft never unpickles .bin checkpoints; convert them "
                       f"with save_pretrained(..., safe_serialization=True))")
    arch = (getattr(config, "architectures", None) or [None])[0]
    cls = getattr(transformers, arch, None) if arch else None
    if cls is None:
        cls = transformers.AutoModel
    try:
        return cls.from_pretrained(src, use_safetensors=True, dtype="auto")  # keep the checkpoint's dtype
    except Exception as err:  # noqa: BLE001
        raise CliError(f"{src}: cannot load the weights ({type(err).__name__}: {str(err).splitlines()[0]})") from err


@contextmanager
def atomic_dir(out: Path, force: bool) -> Iterator[Path]:
    """A temporary sibling directory that becomes `out` only if the block completes."""
    if out.exists() and not force:
        raise CliError(f"{out} exists; pass --force to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.netgraft-", dir=out.parent))
    try:
        yield tmp
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            os.replace(out, old / out.name)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _grow(args: argparse.Namespace, op: str) -> int:
    import netgraft

    from . import hf

    src, out = Path(args.dir), Path(args.output)
    if out.resolve() == src.resolve():
        raise CliError("OUT must differ from DIR")
    if out.exists() and not args.force:
        raise CliError(f"{out} exists; pass --force to replace it")
    bar = _progress(4, f"netgraft {op}")
    bar.set_postfix_str("loading")
    model = load_model(src)
    bar.update()
    bar.set_postfix_str(f"{op}ing")
    try:
        if op == "widen":
            sizes = {k: v for k, v in (("hidden_size", args.hidden_size), ("intermediate_size", args.intermediate_size),
                                      ("num_attention_heads", args.num_attention_heads),
                                      ("num_key_value_heads", args.num_key_value_heads)) if v is not None}
            if not sizes:
                raise CliError("widen needs at least one of --hidden-size, --intermediate-size, --num-attention-heads,"
                               " --num-key-value-heads")
            grown = netgraft.widen(model, seed=args.seed, **sizes)
        else:
            grown = netgraft.deepen(model, num_hidden_layers=args.num_layers)
    except (hf.HFError, netgraft.NotPreservedError, ValueError) as err:
        raise CliError(str(err).splitlines()[0]) from err
    bar.update()
    bar.set_postfix_str("saving")
    del model  # the source is no longer needed: its memory is free before the result is written
    with atomic_dir(out, args.force) as tmp:
        save_streaming(grown, tmp)
        for extra in src.iterdir():  # tokenizer and other side files travel along
            if extra.is_file() and extra.suffix != ".safetensors" and extra.name not in ("config.json",) and \
                    not extra.name.endswith(".index.json") and not (tmp / extra.name).exists():
                shutil.copy2(extra, tmp / extra.name)
        (tmp / "netgraft.json").write_text(json.dumps({
            "operation": op, "source": str(src), "changes": grown.netgraft_report.changes,
            "certificate": {"max_abs": grown.netgraft_certificate.max_abs, "bound": grown.netgraft_certificate.bound,
                            "passed": grown.netgraft_certificate.passed}}, indent=1) + "\n")
    bar.update(2)
    bar.close()
    print(grown.netgraft_report)
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
    from . import hf

    config = load_config(Path(args.dir))
    try:
        info = hf.describe(config)
    except hf.HFError as err:
        raise CliError(str(err)) from err
    width = max(len(k) for k in info)
    for key, value in info.items():
        if isinstance(value, dict):
            print(f"{key}:")
            for k, v in value.items():
                print(f"  {k:<20} {v}")
        else:
            print(f"{key:<{width}}  {value}")
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="netgraft", description="Grow Hugging Face models exactly (GPT-2, BERT, LLaMA).")
    sub = p.add_subparsers(dest="command", required=True)
    i = sub.add_parser("inspect", help="family, sizes and which operations are exact")
    i.add_argument("dir")
    for name, helptext in (("widen", "widen hidden size / FFN / heads"), ("deepen", "add layers")):
        s = sub.add_parser(name, help=helptext)
        s.add_argument("dir")
        s.add_argument("-o", "--output", required=True, help="output directory (written atomically)")
        s.add_argument("--force", action="store_true", help="replace OUT if it exists")
        if name == "widen":
            s.add_argument("--hidden-size", type=int)
            s.add_argument("--intermediate-size", type=int)
            s.add_argument("--num-attention-heads", type=int)
            s.add_argument("--num-key-value-heads", type=int)
            s.add_argument("--seed", type=int, default=0, help="seed of the FFN's Net2Net map")
        else:
            s.add_argument("--num-layers", type=int, required=True)
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `netgraft` console script; returns the exit status."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # local directories only: never wait on the hub
    args = parser().parse_args(argv)
    try:  # one progress bar (ours) and one line per error: transformers' own bars and warnings stay quiet
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
    except ImportError:
        pass
    try:
        if args.command == "inspect":
            return _inspect(args)
        return _grow(args, args.command)
    except CliError as err:
        print(f"netgraft {args.command}: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"netgraft {args.command}: interrupted; nothing was written", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
