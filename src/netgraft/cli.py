"""`netgraft` command line: inspect, widen, deepen and upcycle Hugging Face model directories (config.json +
safetensors), streamed in bounded memory (`netgraft.hf.stream`).

    netgraft inspect DIR
    netgraft widen DIR -o OUT --hidden-size N [--intermediate-size N] [--num-attention-heads N]
                                [--num-key-value-heads N] [--seed S] [--force] [--max-shard-size 5GB]
    netgraft deepen DIR -o OUT --num-hidden-layers N [--force]        (--num-layers: the same)
    netgraft upcycle DIR -o OUT --num-experts N --top-k K [--granularity G] [--layers 0,2,4 | ::2]
                                [--split copies|segments] [--shared-expert zero|dense] [--seed S] [--force]

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
  widen that grows nothing is refused (as is a size below the current one, and a --num-hidden-layers that does not
  exceed the current depth). Before anything is read, the output is planned from the config (every tensor's shape
  and dtype); a run that would need more disk than is free where OUT goes, or more memory than is available for its
  largest layer (the conversion streams: one module's tensors at a time), is refused with the figures.
"""

from __future__ import annotations

import argparse
import copy
import os
import re
import signal
import sys
import warnings
from pathlib import Path
from typing import Any

from . import hf
from .errors import NetgraftError, one_line
from .hf.plan import plan_sizes
from .hf.request import ConfigSizes
from .hf.stream import grow_checkpoint, upcycle_checkpoint
from .hf.upcycle import UPCYCLE_TO
from .io.atomic import check_paths, placed
from .io.checkpoint import load_config
from .io.resources import human


class CliError(NetgraftError):
    """A one-line reason for a non-zero exit (a request the command line cannot serve)."""


class _Terminated(BaseException):
    """SIGTERM or SIGHUP: unwinds the stack like KeyboardInterrupt, so every cleanup runs on the way out."""


MAX_SIZE = 2**31 - 1


def _progress_bar(desc: str) -> tuple[Any, Any]:
    """A progress bar and the callback the streaming engine feeds it: bytes written of the total, with an ETA."""
    bar = _progress(0, desc)

    def progress(done: int, total: int, seconds: float) -> None:
        if getattr(bar, "total", None) != total:
            bar.total = total
        bar.n = done
        rate = done / seconds if seconds > 0 else 0.0
        bar.set_postfix_str(f"{human(done)} of {human(total)}" + (f", ETA {(total - done) / rate:.0f} s"
                                                                    if rate > 0 and done < total else ""))
    return bar, progress


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
        raise CliError(one_line(err)) from err
    new = copy.copy(old)
    if op == "deepen":
        if args.num_hidden_layers <= old.layers:
            raise CliError(f"num_hidden_layers {args.num_hidden_layers} must exceed the current {old.layers} "
                           f"(--num-hidden-layers)")
        new.layers = args.num_hidden_layers
        return {"num_hidden_layers": args.num_hidden_layers}, new
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
        raise CliError(one_line(err)) from err


# ------------------------------------------------------------------------------------------------------- grow
def _grow(args: argparse.Namespace, op: str) -> int:
    """widen / deepen a directory: the streaming engine (`netgraft.hf.stream.grow_checkpoint`), which the Python
    API offers too; the checks here only turn a bad request into one line before anything is read."""
    src, out = Path(args.dir), Path(args.output)
    check_paths(src, out, args.force)
    config = load_config(src)
    kwargs, _ = requested_sizes(args, op, config)
    bar, progress = _progress_bar(f"netgraft {op}")
    report = grow_checkpoint(src, out, ConfigSizes(**kwargs), max_shard_size=args.max_shard_size,
                             seed=getattr(args, "seed", 0), force=args.force, progress=progress)
    bar.close()
    print(report)
    print(f"wrote {out}")
    return 0


def _layers(text: str) -> list[int] | str:
    """argparse type of --layers: indices ``0,2,4`` or a Python slice ``::2`` / ``1:8:2`` (resolved against the
    model's depth later)."""
    value = text.replace(" ", "")
    if re.fullmatch(r"[0-9]+(,[0-9]+)*", value):
        return [int(v) for v in value.split(",")]
    if re.fullmatch(r"-?[0-9]*:-?[0-9]*(:-?[0-9]+)?", value) and value != ":0":
        return value
    raise argparse.ArgumentTypeError(f"'{text}' is not a layer list (e.g. 0,2,4) or slice (e.g. ::2, 1:8:2)")


def _upcycle(args: argparse.Namespace) -> int:
    """upcycle a directory: the streaming engine (`netgraft.hf.stream.upcycle_checkpoint`)."""
    src, out = Path(args.dir), Path(args.output)
    check_paths(src, out, args.force)
    config = load_config(src)
    layers = args.layers
    if isinstance(layers, str):
        n = int(getattr(config, "num_hidden_layers", 0) or 0)
        parts = [int(p) if p else None for p in layers.split(":")]
        try:
            layers = list(range(n))[slice(*parts)]
        except ValueError as err:
            raise CliError(f"--layers {args.layers}: {err}") from err
        if not layers:
            raise CliError(f"--layers {args.layers} selects no layer of the {n}")
    bar, progress = _progress_bar("netgraft upcycle")
    report = upcycle_checkpoint(src, out, num_experts=args.num_experts, top_k=args.top_k,
                                granularity=args.granularity, layers=layers, split=args.split,
                                shared_expert=args.shared_expert, seed=args.seed, max_shard_size=args.max_shard_size,
                                force=args.force, progress=progress)
    bar.close()
    print(report)
    print(f"wrote {out}")
    return 0


def _inspect(args: argparse.Namespace) -> int:
    config = load_config(Path(args.dir))
    try:
        info = hf.describe(config)
    except NetgraftError as err:
        raise CliError(one_line(err)) from err
    width = max(len(k) for k in info)
    for key, value in info.items():
        if isinstance(value, dict):
            print(f"{key}:")
            for k, v in value.items():
                print(f"  {k:<20} {v}")
        else:
            print(f"{key:<{width}}  {value}")
    if config.model_type in UPCYCLE_TO:
        print(f"upcycle: -> {UPCYCLE_TO[config.model_type]} (netgraft upcycle DIR -o OUT --num-experts N --top-k K)")
    return 0


# ------------------------------------------------------------------------------------------------ entry point
class _Parser(argparse.ArgumentParser):
    """Usage errors in the CLI's format: one line, `netgraft <command>: <reason>`, status 2."""

    def error(self, message: str) -> Any:
        self.exit(2, f"{self.prog}: {one_line(message)}\n")


def parser() -> argparse.ArgumentParser:
    p = _Parser(prog="netgraft", description="Grow Hugging Face models exactly, in config terms.")
    sub = p.add_subparsers(dest="command", required=True)
    i = sub.add_parser("inspect", help="family, sizes and which operations are exact")
    i.add_argument("dir")
    for name, helptext in (("widen", "widen hidden size / FFN / heads"), ("deepen", "add layers"),
                           ("upcycle", "dense FFNs -> mixture of experts, or an MoE -> more experts")):
        s = sub.add_parser(name, help=helptext)
        s.add_argument("dir")
        s.add_argument("-o", "--output", required=True, help="output directory (written atomically; may not be, "
                       "contain or lie inside DIR)")
        s.add_argument("--force", action="store_true", help="replace OUT if it exists (atomically)")
        s.add_argument("--max-shard-size", default="5GB", help="largest output shard (e.g. 5GB, 500MB, 2GiB; the "
                       "hub's default 5GB); one shard is written as model.safetensors")
        if name == "upcycle":
            s.add_argument("--num-experts", type=_size, required=True, help="routed experts per MoE layer")
            s.add_argument("--top-k", type=_size, help="experts per token (dense: required, a multiple of "
                           "--granularity; an MoE: default and only exact value m x its top-k)")
            s.add_argument("--granularity", type=_size, default=1, help="dense: experts as 1/G slices of the FFN")
            s.add_argument("--layers", type=_layers, help="layers to upcycle: 0,2,4 or a slice such as ::2 "
                           "(Qwen2/Qwen3; default all)")
            s.add_argument("--split", choices=("copies", "segments"), help="an MoE -> more experts: copies "
                           "(default) or segments (same active compute)")
            s.add_argument("--shared-expert", choices=("zero", "dense"), default="zero", help="Qwen2 -> Qwen2-MoE: "
                           "the shared expert starts silent (zero) or carries the dense FFN (dense)")
            s.add_argument("--seed", type=_seed, default=0, help="seed of the routers and the copies' split")
        elif name == "widen":
            for _, _, flag in _WIDEN_OPTIONS:
                s.add_argument(flag, type=_size, help="new size (a whole number; the current one = unchanged)")
            s.add_argument("--seed", type=_seed, default=0, help="seed of the FFN's Net2Net map")
        else:
            # the config's name, as for the widen sizes; --num-layers is kept as a shorter spelling
            s.add_argument("--num-hidden-layers", "--num-layers", dest="num_hidden_layers", type=_size, required=True,
                           help="new number of layers (> the current)")
    return p


def _failure(err: BaseException) -> tuple[str, int]:
    """The one-line message and exit status for an exception that ends a run."""
    if isinstance(err, NetgraftError):
        return one_line(err), 2
    outcome = f"; {placed[-1]} was written" if placed else "; nothing was written"
    if isinstance(err, KeyboardInterrupt):
        return "interrupted" + outcome, 130
    if isinstance(err, _Terminated):
        return f"terminated by {err}" + outcome, 2
    text = one_line(err)
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
    placed.clear()
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
            if args.command == "upcycle":
                return _upcycle(args)
            return _grow(args, args.command)
    except (Exception, KeyboardInterrupt, _Terminated) as err:  # noqa: BLE001 - every failure: one line, status
        message, status = _failure(err)
        print(f"netgraft {args.command}: {one_line(message)}", file=sys.stderr, flush=True)
        return status
    finally:
        for sig, handler in previous.items():
            try:
                signal.signal(sig, handler)
            except (ValueError, OSError, TypeError):
                pass


if __name__ == "__main__":
    sys.exit(main())
