"""The `netgraft` CLI never loses, corrupts or executes (issue 13, items 12-16).

The CLI cases run the real command (`python -m netgraft.cli`) as subprocesses on one tiny GPT-2 checkpoint made once
per module. They are all started together, a few at a time, by the `runs` fixture (each costs seconds of imports), and
each test then checks its own case: exit status 2 with exactly one stderr line, DIR byte-identical, no `.netgraft-`
temporary directory left, and so on. Cases needing a tmpfs mount (full disk, read-only target) are skipped, with the
reason, where mounting is not permitted. In-process tests cover the pieces that need no subprocess (argument types,
path rules, the atomic placement race, the share computation).
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import signal
import stat
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers")
from safetensors.torch import load_file, save_file  # noqa: E402

from netgraft import cli  # noqa: E402
from netgraft.core.plan import power_of_two_shares  # noqa: E402
from netgraft.errors import CheckpointError  # noqa: E402
from netgraft.hf import stream  # noqa: E402
from netgraft.io import atomic as io_atomic  # noqa: E402
from netgraft.io.atomic import atomic_dir  # noqa: E402
from netgraft.io.checkpoint import weight_files  # noqa: E402

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "NETGRAFT_PROGRESS": "0"}
TIMEOUT = 240


# ------------------------------------------------------------------------------------------------------ helpers
class Evil:
    """Unpickling this creates the directory `path`: proof that a pickle was executed."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (os.mkdir, (self.path,))


def evil_pickle(marker: Path) -> bytes:
    return pickle.dumps({"weight": Evil(str(marker))}, protocol=4)


def digest(root: Path) -> dict[str, str]:
    """Every entry under `root` (not following symlinks): file bytes, symlink targets, modes."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        st = p.lstat()
        if p.is_symlink():
            out[rel] = "link:" + os.readlink(p)
        elif p.is_file():
            out[rel] = f"{st.st_mode:o}:" + hashlib.sha256(p.read_bytes()).hexdigest()
        else:
            out[rel] = f"dir:{st.st_mode:o}"
    return out


def leftovers(*dirs: Path) -> list[str]:
    return [p.name for d in dirs if d.is_dir() for p in d.iterdir() if ".netgraft-" in p.name]


def one_line(stderr: str) -> str:
    """The single line of stderr (fails if there are more, or none)."""
    lines = stderr.splitlines()
    assert len(lines) == 1 and stderr.endswith("\n"), f"expected exactly one stderr line, got {stderr!r}"
    return lines[0]


def save_checkpoint(dest: Path) -> torch.nn.Module:
    cfg = transformers.GPT2Config(n_embd=32, n_layer=2, n_head=4, vocab_size=64, n_positions=32, bos_token_id=0,
                                  eos_token_id=0)
    torch.manual_seed(0)
    m = transformers.GPT2LMHeadModel(cfg)
    with torch.no_grad():  # trained-looking norms and biases
        for p in m.parameters():
            if p.dim() == 1:
                p.add_(0.1 * torch.randn_like(p))
    m.save_pretrained(dest)
    (dest / "tokenizer.json").write_text('{"version": "1.0", "model": {"vocab": {}}}\n')
    return m.eval()


def copy_tree(src: Path, dest: Path) -> Path:
    import shutil

    shutil.copytree(src, dest, symlinks=True)
    return dest


def mount_tmpfs(where: Path, options: str, read_only: bool = False) -> str | None:
    """Mounts a tmpfs at `where`; returns why not where that is not permitted (the case is then skipped)."""
    where.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)], capture_output=True, text=True)
    if r.returncode != 0:
        return f"cannot mount a tmpfs here ({(r.stderr or r.stdout).strip() or r.returncode})"
    MOUNTS.append(where)
    if read_only:
        r = subprocess.run(["mount", "-o", "remount,ro", str(where)], capture_output=True, text=True)
        if r.returncode != 0:
            return f"cannot remount the tmpfs read-only ({r.stderr.strip()})"
    return None


MOUNTS: list[Path] = []

# A wrapper around the real entry point for the cases that need to stop or fail at a chosen moment: it replaces the
# certificate's forward pass of the streaming engine (`netgraft.hf.stream._run`, the first step after the temporary
# OUT directory exists), then runs the CLI unchanged.
WRAPPER = r"""
import os, sys, time
from pathlib import Path
import torch
import netgraft.cli as cli
import netgraft.hf.stream as stream
mode = os.environ["NETGRAFT_TEST_MODE"]
def run(*args, **kwargs):
    if mode == "sleep":  # something half-written in the temporary OUT, then wait for the signal
        for tmp in Path(os.environ["NETGRAFT_TEST_PARENT"]).glob(".*.netgraft-*"):
            (tmp / "model.safetensors").write_bytes(b"partial" * 1000)
        Path(os.environ["NETGRAFT_TEST_READY"]).write_text("ready")
        time.sleep(600)
    if mode == "alloc":  # a real allocation failure of the CPU allocator (1 EiB: beyond any address space)
        torch.empty(1 << 60, dtype=torch.uint8)
        raise SystemExit("the 1 EiB allocation unexpectedly succeeded")
    raise AssertionError("unknown mode")
stream._run = run
sys.exit(cli.main(sys.argv[1:]))
"""


def cli_command(argv: list[str], wrapper: bool = False) -> list[str]:
    return [sys.executable, "-c", WRAPPER, *argv] if wrapper else [sys.executable, "-m", "netgraft.cli", *argv]


# ------------------------------------------------------------------------------------------------ the CLI cases
CASES = {}


def case(fn):
    CASES[fn.__name__] = fn
    return fn


@case
def strict_loading(base: Path, ckpt: Path) -> dict:
    """Item 12: one tensor missing and one unknown extra tensor."""
    src = copy_tree(ckpt, base / "src")
    tensors = load_file(src / "model.safetensors")
    del tensors["transformer.h.1.mlp.c_fc.bias"]
    tensors["transformer.h.1.mlp.surprise.weight"] = torch.ones(3)
    save_file(tensors, src / "model.safetensors", metadata={"format": "pt"})
    return {"argv": ["widen", str(src), "-o", str(base / "out"), "--hidden-size", "64"]}


@case
def out_contains_dir(base: Path, ckpt: Path) -> dict:
    """Item 13: --force with OUT an ancestor of DIR used to delete the source."""
    src = copy_tree(ckpt, base / "models" / "src")
    return {"argv": ["deepen", str(src), "-o", str(base / "models"), "--num-layers", "3", "--force"]}


@case
def concurrent(base: Path, ckpt: Path) -> dict:
    """Item 13: two runs without --force to one OUT at the same time."""
    src = copy_tree(ckpt, base / "src")
    return {"argv": ["deepen", str(src), "-o", str(base / "out"), "--num-layers", "3"], "twice": True}


@case
def success(base: Path, ckpt: Path) -> dict:
    """Items 14 and 16: a successful widen from a DIR full of traps; umask 027."""
    src = copy_tree(ckpt, base / "src")
    (src / "pytorch_model.bin").write_bytes(evil_pickle(base / "PWNED"))  # stale pickle next to the safetensors
    (src / "training_args.bin").write_bytes(evil_pickle(base / "PWNED2"))
    (src / "extra.dat").write_bytes(evil_pickle(base / "PWNED3"))  # a pickle under a harmless name
    (src / "tf_model.h5").write_bytes(b"\x89HDF\r\n\x1a\nold weights")
    (base / "secret.txt").write_text("outside the model directory")
    (src / "outside.txt").symlink_to(base / "secret.txt")
    (src / "inside.json").symlink_to("tokenizer.json")
    (src / "dangling.json").symlink_to(base / "nowhere.json")
    (src / "1_Pooling").mkdir()
    (src / "1_Pooling" / "config.json").write_text("{}")
    return {"argv": ["widen", str(src), "-o", str(base / "out"), "--hidden-size", "64"], "umask": 0o027}


@case
def memory_estimate(base: Path, ckpt: Path) -> dict:
    """Item 15: a size whose result cannot fit in any memory (about a terabyte)."""
    src = copy_tree(ckpt, base / "src")
    return {"argv": ["widen", str(src), "-o", str(base / "out"), "--intermediate-size", "2000000000"]}


@case
def disk_full_while_writing(base: Path, ckpt: Path) -> dict:
    """Item 16: the disk fills up while OUT is written (a tmpfs with room for 4 inodes: root, the temporary OUT,
    and the planned shard model.safetensors; config.json finds it full at the end), after the estimate passed."""
    src = copy_tree(ckpt, base / "src")
    why = mount_tmpfs(base / "full", "size=16m,nr_inodes=4")
    return {"argv": ["deepen", str(src), "-o", str(base / "full" / "out"), "--num-layers", "3"], "skip": why}


@case
def read_only_target(base: Path, ckpt: Path) -> dict:
    """Item 16: OUT on a read-only filesystem (root ignores chmod, so a read-only tmpfs)."""
    src = copy_tree(ckpt, base / "src")
    why = mount_tmpfs(base / "ro", "size=16m", read_only=True)
    return {"argv": ["deepen", str(src), "-o", str(base / "ro" / "out"), "--num-layers", "3"], "skip": why}


@case
def dangling_parent(base: Path, ckpt: Path) -> dict:
    """Item 16: OUT's parent is a dangling symlink."""
    src = copy_tree(ckpt, base / "src")
    (base / "link").symlink_to(base / "nowhere")
    return {"argv": ["deepen", str(src), "-o", str(base / "link" / "out"), "--num-layers", "3"]}


@case
def sigterm(base: Path, ckpt: Path) -> dict:
    """Item 16: SIGTERM while the temporary OUT holds a half-written file, in a parent the run created."""
    src = copy_tree(ckpt, base / "src")
    parent = base / "new" / "parent"
    return {"argv": ["deepen", str(src), "-o", str(parent / "out"), "--num-layers", "3"], "wrapper": "sleep",
            "parent": parent, "signal": signal.SIGTERM}


@case
def allocation_failure(base: Path, ckpt: Path) -> dict:
    """Item 16: the CPU allocator fails (a real 1 EiB request)."""
    src = copy_tree(ckpt, base / "src")
    return {"argv": ["deepen", str(src), "-o", str(base / "out"), "--num-layers", "3"], "wrapper": "alloc"}


def execute(spec: dict) -> list[subprocess.CompletedProcess]:
    if spec.get("skip"):
        return []
    env = dict(ENV)
    wrapper = spec.get("wrapper")
    if wrapper:
        env.update(NETGRAFT_TEST_MODE=wrapper, NETGRAFT_TEST_READY=str(spec["base"] / "ready"),
                   NETGRAFT_TEST_PARENT=str(spec.get("parent", spec["base"])))
    umask = spec.get("umask", 0o022)
    procs = [subprocess.Popen(cli_command(spec["argv"], bool(wrapper)), env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, preexec_fn=lambda: os.umask(umask))
             for _ in range(2 if spec.get("twice") else 1)]
    if spec.get("signal"):
        deadline = time.monotonic() + TIMEOUT
        while not (spec["base"] / "ready").exists() and procs[0].poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        if procs[0].poll() is None:
            procs[0].send_signal(spec["signal"])
    results = []
    for p in procs:
        try:
            out, err = p.communicate(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            p.kill()
            out, err = p.communicate()
        results.append(subprocess.CompletedProcess(p.args, p.returncode, out, err))
    return results


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("ckpt") / "gpt2"
    save_checkpoint(path)
    return path


@pytest.fixture(scope="module")
def runs(tmp_path_factory, ckpt):
    """Every CLI case, set up and started at once (three subprocesses at a time); {name: (spec, future)}."""
    root = tmp_path_factory.mktemp("cli")
    started = {}
    with ThreadPoolExecutor(max_workers=3) as pool:
        try:
            for name, setup in CASES.items():
                base = root / name
                base.mkdir()
                spec = setup(base, ckpt)
                spec["base"] = base
                src = Path(spec["argv"][1])
                spec["before"] = digest(src)
                started[name] = (spec, pool.submit(execute, spec))
            yield started
        finally:
            for _, future in started.values():
                future.cancel()
    for where in reversed(MOUNTS):
        subprocess.run(["umount", str(where)], capture_output=True)
    MOUNTS.clear()


def result(runs, name: str) -> tuple[dict, list[subprocess.CompletedProcess]]:
    spec, future = runs[name]
    if spec.get("skip"):
        pytest.skip(spec["skip"])
    return spec, future.result()


def assert_refused(spec: dict, r: subprocess.CompletedProcess, *needles: str) -> str:
    """Exit 2, one stderr line naming `needles`, DIR unchanged, no OUT, no temporary directory."""
    assert r.returncode == 2, (r.returncode, r.stderr)
    line = one_line(r.stderr)
    assert line.startswith(f"netgraft {spec['argv'][0]}: "), line
    for needle in needles:
        assert needle in line, (needle, line)
    src, out = Path(spec["argv"][1]), Path(spec["argv"][3])
    assert digest(src) == spec["before"]
    if not out.is_relative_to(src) and not src.is_relative_to(out):
        assert not os.path.lexists(out)
    assert leftovers(out.parent, spec["base"]) == []
    return line


# --------------------------------------------------------------------------------------- item 12: strict loading
def test_missing_or_unused_tensors_are_refused_naming_them(runs) -> None:
    spec, [r] = result(runs, "strict_loading")
    assert_refused(spec, r, "transformer.h.1.mlp.c_fc.bias", "transformer.h.1.mlp.surprise.weight", "missing",
                   "unused")


def test_shape_mismatch_and_inconsistent_index_are_refused(ckpt, tmp_path, capsys) -> None:
    src = copy_tree(ckpt, tmp_path / "src")
    tensors = load_file(src / "model.safetensors")
    tensors["transformer.h.0.attn.c_attn.bias"] = torch.zeros(5)
    save_file(tensors, src / "model.safetensors", metadata={"format": "pt"})
    assert cli.main(["widen", str(src), "-o", str(tmp_path / "out"), "--hidden-size", "64"]) == 2
    assert "shape mismatch transformer.h.0.attn.c_attn.bias (checkpoint (5,), model (96,))" in one_line(
        capsys.readouterr().err)
    assert not (tmp_path / "out").exists() and leftovers(tmp_path) == []
    # a sharded checkpoint whose index disagrees with its shards
    shard = tmp_path / "sharded"
    shard.mkdir()
    (shard / "config.json").write_bytes((ckpt / "config.json").read_bytes())
    tensors = load_file(ckpt / "model.safetensors")
    save_file(tensors, shard / "model-00001-of-00001.safetensors", metadata={"format": "pt"})
    weight_map = {n: "model-00001-of-00001.safetensors" for n in tensors}
    first = sorted(weight_map)[0]
    del weight_map[first]
    (shard / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    with pytest.raises(CheckpointError, match=f"stores tensor {first} that the index does not list"):
        weight_files(shard)
    weight_map[first] = "model-00001-of-00001.safetensors"
    weight_map["transformer.ghost.weight"] = "model-00001-of-00001.safetensors"
    (shard / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    with pytest.raises(CheckpointError, match="transformer.ghost.weight listed in"):
        weight_files(shard)
    del weight_map["transformer.ghost.weight"]
    (shard / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    assert list(weight_files(shard)) == [shard / "model-00001-of-00001.safetensors"]


# ------------------------------------------------------------------------------------------ item 13: OUT vs DIR
def test_out_containing_dir_is_refused_even_with_force(runs) -> None:
    spec, [r] = result(runs, "out_contains_dir")
    assert_refused(spec, r, "contains DIR", "--force would delete it")
    assert (spec["base"] / "models" / "src" / "model.safetensors").is_file()


@pytest.mark.parametrize("force", [False, True])
def test_out_may_not_equal_contain_or_lie_inside_dir(tmp_path, force: bool) -> None:
    src = tmp_path / "a" / "src"
    src.mkdir(parents=True)
    (tmp_path / "up").symlink_to(tmp_path / "a")
    (tmp_path / "same").symlink_to(src)
    bad = {src: "is DIR", src / "sub": "inside DIR", src / "x" / "y": "inside DIR", tmp_path / "a": "contains DIR",
           tmp_path: "contains DIR", Path("/"): "contains DIR", src / "..": "contains DIR",
           tmp_path / "up": "contains DIR", tmp_path / "same": "is DIR", tmp_path / "same" / "o": "inside DIR"}
    for out, reason in bad.items():
        with pytest.raises(CheckpointError, match=reason):
            cli.check_paths(src, out, force)
    if os.geteuid() == 0:  # the same directory under another name: a bind mount
        alias = tmp_path / "alias"
        alias.mkdir()
        if subprocess.run(["mount", "--bind", str(src), str(alias)], capture_output=True).returncode == 0:
            try:
                with pytest.raises(CheckpointError, match="another name"):
                    cli.check_paths(src, alias / "out", force)
            finally:
                subprocess.run(["umount", str(alias)], capture_output=True)
    cli.check_paths(src, tmp_path / "a" / "sibling", force)  # fine


def test_two_concurrent_runs_exactly_one_succeeds(runs) -> None:
    spec, rs = result(runs, "concurrent")
    assert sorted(r.returncode for r in rs) == [0, 2], [(r.returncode, r.stderr) for r in rs]
    loser = next(r for r in rs if r.returncode == 2)
    assert "exists" in one_line(loser.stderr)
    out = spec["base"] / "out"
    assert json.loads((out / "netgraft.json").read_text())["changes"]["num_hidden_layers"] == [2, 3]
    deeper = transformers.AutoModel.from_pretrained(out)  # the winner's checkpoint is whole: it loads, 3 layers deep
    assert deeper.config.n_layer == 3
    assert leftovers(spec["base"]) == [] and digest(Path(spec["argv"][1])) == spec["before"]


def test_placement_never_replaces_an_out_made_meanwhile(tmp_path, monkeypatch) -> None:
    out = tmp_path / "out"
    for renameat2 in (True, False):  # renameat2(RENAME_NOREPLACE), then the fallback without it
        if not renameat2:
            monkeypatch.setattr(io_atomic, "renameat2", lambda *a: False)
        with pytest.raises(CheckpointError, match="exists"):
            with atomic_dir(out, force=False) as tmp:
                (tmp / "ours").write_text("new")
                out.mkdir()  # another process creates OUT while this one writes
                (out / "theirs").write_text("kept")
        assert sorted(p.name for p in out.iterdir()) == ["theirs"] and leftovers(tmp_path) == []
        # with --force the new directory takes OUT's place atomically and the old one is deleted
        with atomic_dir(out, force=True) as tmp:
            (tmp / "ours").write_text("new")
        assert sorted(p.name for p in out.iterdir()) == ["ours"] and leftovers(tmp_path) == []
        # a dangling symlink at OUT: it exists (no --force: refused); --force replaces the link, never its target
        import shutil

        shutil.rmtree(out)
        out.symlink_to(tmp_path / "target")
        with pytest.raises(CheckpointError, match="exists"):
            with atomic_dir(out, force=False):
                pass
        with atomic_dir(out, force=True) as tmp:
            (tmp / "ours").write_text("new")
        assert not out.is_symlink() and (out / "ours").is_file() and not (tmp_path / "target").exists()
        shutil.rmtree(out)
        assert leftovers(tmp_path) == []


# ------------------------------------------------------------------------------------------- item 14: no pickle
def test_an_index_naming_a_pickle_shard_is_refused_unopened(ckpt, tmp_path, capsys) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "config.json").write_bytes((ckpt / "config.json").read_bytes())
    names = list(load_file(ckpt / "model.safetensors"))
    for shard in ("pytorch_model.bin", "../elsewhere/model.safetensors"):
        (src / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": {
            n: shard for n in names}}))
        (src / "pytorch_model.bin").write_bytes(evil_pickle(tmp_path / "PWNED"))
        before = digest(src)
        assert cli.main(["widen", str(src), "-o", str(tmp_path / "out"), "--hidden-size", "64"]) == 2
        line = one_line(capsys.readouterr().err)
        assert shard in line and ("not a .safetensors file" in line or "not a file name" in line)
        assert not (tmp_path / "PWNED").exists() and not (tmp_path / "out").exists() and digest(src) == before
    # the same index next to a model.safetensors (which transformers would prefer) is refused all the same
    (src / "model.safetensors").write_bytes((ckpt / "model.safetensors").read_bytes())
    with pytest.raises(CheckpointError, match="not a file name"):
        weight_files(src)


def test_a_successful_run_copies_no_pickle_and_follows_no_symlink_out(runs) -> None:
    spec, [r] = result(runs, "success")
    assert r.returncode == 0, r.stderr
    base, src, out = spec["base"], Path(spec["argv"][1]), spec["base"] / "out"
    assert not any((base / f"PWNED{i}").exists() for i in ("", "2", "3"))
    names = sorted(p.name for p in out.iterdir())
    assert names == ["config.json", "generation_config.json", "inside.json", "model.safetensors", "netgraft.json",
                     "tokenizer.json"], names
    assert (out / "inside.json").read_bytes() == (src / "tokenizer.json").read_bytes()
    assert not (out / "inside.json").is_symlink()
    skipped = json.loads((out / "netgraft.json").read_text())["not_copied"]
    assert sorted(skipped) == ["dangling.json", "extra.dat", "outside.txt", "pytorch_model.bin", "tf_model.h5",
                               "training_args.bin"]
    assert "not copied: pytorch_model.bin" in r.stdout
    assert digest(src) == spec["before"] and leftovers(base) == []
    # item 16: OUT and its files get the permissions of a normal mkdir / open under the umask (027), not 0700
    assert stat.S_IMODE(out.stat().st_mode) == 0o750
    assert stat.S_IMODE((out / "model.safetensors").stat().st_mode) == 0o640
    # the result loads strictly and computes what the source did (the stream tiled twice: same logits)
    grown, info = transformers.GPT2LMHeadModel.from_pretrained(out, output_loading_info=True)
    assert not any(info.values()) and grown.config.n_embd == 64
    source = transformers.GPT2LMHeadModel.from_pretrained(src).eval()
    ids = torch.randint(0, 64, (2, 10), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(source(ids).logits, grown.eval()(ids).logits, atol=1e-4)


# --------------------------------------------------------------------------------------------- item 15: sizes
@pytest.mark.parametrize("value", ["0", "-64", "64.0", "6.4e1", "abc", "", "6_4", "1e3", "99999999999",
                                   "2147483648", "１２"])
def test_bad_sizes_are_refused_in_one_line(value: str, capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.parser().parse_args(["widen", "d", "-o", "o", f"--hidden-size={value}"])
    assert exc.value.code == 2
    assert one_line(capsys.readouterr().err).startswith("netgraft widen: argument --hidden-size: ")


def test_sizes_below_equal_or_missing(ckpt, tmp_path, capsys) -> None:
    out = tmp_path / "out"
    cases = [(["widen", "--hidden-size", "16"], "below the current 32"),
             (["widen", "--hidden-size", "32"], "nothing to grow: --hidden-size 32 is the current size"),
             (["widen", "--hidden-size", "32", "--num-attention-heads", "4"], "nothing to grow"),
             (["deepen", "--num-layers", "2"], "must exceed the current 2"),
             (["widen", "--seed", "-1", "--hidden-size", "64"], "not a seed")]
    for (op, *rest), reason in cases:
        try:
            status = cli.main([op, str(ckpt), "-o", str(out), *rest])
        except SystemExit as exc:
            status = exc.code
        assert status == 2
        assert reason in one_line(capsys.readouterr().err)
        assert not out.exists() and leftovers(tmp_path) == []


def test_a_result_beyond_memory_is_refused_with_the_figures(runs) -> None:
    spec, [r] = result(runs, "memory_estimate")
    line = assert_refused(spec, r, "needs about 1.0 TB", "but")  # on disk first (memory is the largest layer's)
    assert "on disk" in line or "in memory" in line
    assert "GB" in line or "TB" in line


def test_a_result_beyond_free_disk_is_refused_with_the_figures(ckpt, tmp_path, capsys) -> None:
    small = tmp_path / "small"  # 64 KiB of room for a result of about 450 KB
    why = mount_tmpfs(small, "size=64k")
    try:
        if why:
            pytest.skip(why)
        assert cli.main(["widen", str(ckpt), "-o", str(small / "out"), "--hidden-size", "64"]) == 2
        line = one_line(capsys.readouterr().err)
        assert "needs about" in line and "on disk but" in line and "KB free" in line
        assert list(small.iterdir()) == []
    finally:
        if small in MOUNTS:
            subprocess.run(["umount", str(small)], capture_output=True)
            MOUNTS.remove(small)


def oracle_shares(count: int) -> list[float]:
    """The definition: start from [1] and halve a largest share until there are `count`."""
    shares = [1.0]
    while len(shares) < count:
        i = shares.index(max(shares))
        shares[i:i + 1] = [shares[i] / 2, shares[i] / 2]
    return sorted(shares, reverse=True)


def _power_of_two_shares(count: int) -> list[float]:
    """The shares of a unit with `count` copies (one share for 0 or 1 copies)."""
    return [float(x) for x in power_of_two_shares(np.zeros(max(count, 1), dtype=np.int64), 1)]


def test_power_of_two_shares_closed_form() -> None:
    for count in range(0, 300):
        assert _power_of_two_shares(count) == oracle_shares(count)
    for count in [*range(1, 1100), 2**20 - 1, 2**20, 2**20 + 1, 1_234_567]:
        shares = _power_of_two_shares(count)
        assert len(shares) == max(count, 1) and sum(shares) == 1.0
        assert all(math_is_power_of_two(s) for s in set(shares))
        assert torch.tensor(shares, dtype=torch.bfloat16).double().sum().item() == 1.0  # exact in bfloat16 too


def math_is_power_of_two(x: float) -> bool:
    import math

    m, _ = math.frexp(x)
    return m == 0.5


def test_share_maps_match_the_definition_and_are_fast() -> None:
    gen = torch.Generator().manual_seed(0)
    for n, new in [(1, 1), (1, 7), (3, 3), (5, 17), (48, 150), (7, 1000)]:
        src = torch.cat([torch.arange(n), torch.randint(0, n, (new - n,), generator=gen)])
        src = src[torch.randperm(new, generator=gen)]
        frac = torch.from_numpy(power_of_two_shares(src.numpy(), n))
        counts = torch.bincount(src, minlength=n).tolist()
        shares = {c: oracle_shares(c) for c in set(counts)}
        seen = [0] * n
        for j, s in enumerate(src.tolist()):  # the r-th copy of unit s carries entry r of its shares
            assert frac[j].item() == shares[counts[s]][seen[s]]
            seen[s] += 1
    src = torch.cat([torch.arange(48), torch.randint(0, 48, (10_000_000 - 48,), generator=gen)])
    start = time.perf_counter()
    frac = torch.from_numpy(power_of_two_shares(src.numpy(), 48))  # quadratic before: about half an hour
    elapsed = time.perf_counter() - start
    total = torch.zeros(48, dtype=torch.float64).index_add_(0, src, frac)
    assert torch.equal(total, torch.ones(48, dtype=torch.float64))
    assert elapsed < 30, elapsed


# ------------------------------------------------------------------------------ item 16: failures, one line each
def test_a_full_disk_while_writing_exits_2_and_leaves_nothing(runs) -> None:
    spec, [r] = result(runs, "disk_full_while_writing")
    assert_refused(spec, r, "No space left on device")
    assert list((spec["base"] / "full").iterdir()) == []


def test_a_read_only_target_exits_2(runs) -> None:
    spec, [r] = result(runs, "read_only_target")
    assert_refused(spec, r, "Read-only file system")


def test_a_dangling_symlink_parent_exits_2(runs) -> None:
    spec, [r] = result(runs, "dangling_parent")
    assert_refused(spec, r, "File exists", "link")
    assert not (spec["base"] / "nowhere").exists()


def test_sigterm_exits_2_and_removes_the_temporary_directory(runs) -> None:
    spec, [r] = result(runs, "sigterm")
    assert (spec["base"] / "ready").exists(), r.stderr  # it was signalled mid-run, with a file half-written
    assert_refused(spec, r, "terminated by SIGTERM", "nothing was written")
    assert not (spec["base"] / "new").exists()  # the parent directories it had created are gone too


def test_an_allocation_failure_exits_2_in_one_line(runs) -> None:
    spec, [r] = result(runs, "allocation_failure")
    assert_refused(spec, r, "out of memory", "can't allocate memory")


def test_memory_error_exits_2_in_one_line(ckpt, tmp_path, capsys, monkeypatch) -> None:
    def run(*args, **kwargs):
        raise MemoryError()

    monkeypatch.setattr(stream, "_run", run)
    assert cli.main(["deepen", str(ckpt), "-o", str(tmp_path / "out"), "--num-layers", "3"]) == 2
    assert one_line(capsys.readouterr().err) == "netgraft deepen: out of memory; nothing was written"
    assert leftovers(tmp_path) == [] and not (tmp_path / "out").exists()


def test_multi_line_library_messages_are_cut_to_one_line(ckpt, tmp_path, capsys, monkeypatch) -> None:

    for exc in (ValueError("first line\nsecond line\n  third"), RuntimeError("\nlater first line\nmore"),
                OSError(28, "No space left on device", str(tmp_path / "f"))):
        def boom(*a, exc=exc, **k):
            raise exc

        monkeypatch.setattr(cli, "grow_checkpoint", boom)
        assert cli.main(["deepen", str(ckpt), "-o", str(tmp_path / "out"), "--num-layers", "3"]) == 2
        line = one_line(capsys.readouterr().err)
        assert "second" not in line and "more" not in line
        assert ("first line" in line) or ("later first line" in line) or ("No space left" in line)
        assert leftovers(tmp_path) == [] and not (tmp_path / "out").exists()
