"""Benchmark: checkpoints larger than memory. `netgraft deepen` / `netgraft widen` on a generated LLaMA checkpoint,
each in a fresh process under a hard memory cap, against copying the checkpoint's tensors - and mergekit's
`passthrough` (the nearest existing tool for depth) side by side where it is installed.

Full (``make bench``): ~7B parameters in bfloat16 (hidden 4096, 32 layers, 32 heads / 8 kv heads, intermediate
11008, vocab 32000; ~13.5 GB in 2 GB shards), deepen to 40 layers and widen the FFN to 14336, cap 4 GB. Quick
(``make bench-quick``): ~0.3B (hidden 1024, 16 layers), cap 1.5 GB. Each job runs as ``netgraft ...`` in a cgroup
(`memcap.run_capped`): it must finish, write a sharded output whose tensors are exactly what the grown class expects,
and certify. Reported: wall time / the time to copy the checkpoint's tensors with safetensors (read every tensor, save
every shard) in the same run, peak RSS of the process and the cgroup's peak charge (RSS + page cache). The generated
checkpoint and the outputs are deleted at the end. Writes results/stream.json, a PNG and the README section.

mergekit (``/work/mergekit-venv/bin/mergekit-yaml``, or $NETGRAFT_MERGEKIT; installed in its own environment, not a
project dependency):
`passthrough` stacking the same 40 layers (8 copied layers inserted as netgraft inserts them); its output's logits
are compared with the source's on probe ids to say by how much it does not preserve the function.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from memcap import cap_reason, run_capped
from report import markdown_table, publish_section, write_results

import netgraft
from netgraft.hf.depth import insertion_points
from netgraft.io.shards import Entry, ShardWriter, parse_size, plan_shards

CONFIGS = {
    "full": {"model": {"hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32,
                       "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 32000},
             "layers": 40, "ffn": 14336, "shard": "2GB", "cap": 4 * 2**30},
    "quick": {"model": {"hidden_size": 1024, "intermediate_size": 2816, "num_hidden_layers": 16,
                        "num_attention_heads": 16, "num_key_value_heads": 4, "vocab_size": 32000},
              "layers": 20, "ffn": 3584, "shard": "300MB", "cap": int(1.5 * 2**30)},
}
TARGET_TIME_RATIO = 1.5
MERGEKIT = os.environ.get("NETGRAFT_MERGEKIT", "/work/mergekit-venv/bin/mergekit-yaml")


def make_checkpoint(path: Path, cfg: dict[str, int], shard: str) -> int:
    """A LlamaForCausalLM checkpoint of random bfloat16 weights in shards, written tensor by tensor (never the whole
    state dict in memory); returns its bytes."""
    import transformers

    config = transformers.LlamaConfig(max_position_embeddings=4096, tie_word_embeddings=False, **cfg,
                                      architectures=["LlamaForCausalLM"], dtype="bfloat16")
    with torch.device("meta"):
        model = transformers.LlamaForCausalLM(config)
    path.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(path)
    entries = [Entry(n, torch.bfloat16, tuple(p.shape)) for n, p in model.state_dict().items()]
    writer = ShardWriter(path, plan_shards(entries, parse_size(shard)))
    g = torch.Generator().manual_seed(0)
    for e in entries:
        t = torch.randn(e.shape, generator=g) * 0.02 if len(e.shape) > 1 else 1.0 + 0.1 * torch.randn(e.shape,
                                                                                                       generator=g)
        writer.write(e.name, t.to(torch.bfloat16))
    writer.finish()
    return sum(e.nbytes for e in entries)


COPY = r"""
import sys, time
from pathlib import Path
from safetensors.torch import load_file, save_file
src, out = Path(sys.argv[1]), Path(sys.argv[2])
for shard in sorted(src.glob("*.safetensors")):
    save_file(load_file(shard), out / shard.name, metadata={"format": "pt"})
"""


def timed(cmd: list[str], cap: int | None, env: dict) -> dict[str, Any]:
    t0 = time.perf_counter()
    if cap is not None:
        run = run_capped(cmd, cap, env=env, timeout=7200)
        rc, peak, cg, err = run.returncode, run.peak_rss, run.cgroup_peak, run.stderr
    else:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        rc, peak, cg, err = proc.returncode, None, None, proc.stderr
    return {"returncode": rc, "seconds": time.perf_counter() - t0, "peak_rss": peak, "cgroup_peak": cg,
            "stderr": err[-1500:]}


def verify(out: Path) -> dict[str, Any]:
    """The output is what `from_pretrained` expects for its class, tensor by tensor, and its certificate passed."""
    import transformers

    from netgraft.io.checkpoint import check_tensors
    from netgraft.io.reader import LazyCheckpoint

    config = transformers.AutoConfig.from_pretrained(out)
    with torch.device("meta"):
        model = transformers.LlamaForCausalLM(config)
    ckpt = LazyCheckpoint(out)
    check_tensors({n: ckpt.shape(n) for n in ckpt.names()}, {n: tuple(t.shape) for n, t in model.state_dict().items()},
                  [], str(out), "LlamaForCausalLM")
    meta = json.loads((out / "netgraft.json").read_text())
    return {"shards": meta["shards"], "bytes": ckpt.nbytes(), "certificate": meta["certificate"],
            "layers": config.num_hidden_layers, "intermediate_size": config.intermediate_size}


def mergekit_passthrough(src: Path, out: Path, old: int, new: int, cap: int | None, env: dict) -> dict[str, Any]:
    """mergekit's passthrough stacking the layers netgraft inserts (each insert a copy of the layer before it)."""
    if not Path(MERGEKIT).exists():
        return {"skipped": f"mergekit not installed ({MERGEKIT} missing)"}
    after = insertion_points(old, new)
    slices, start = [], 0
    for i in range(old):
        if after.count(i):
            slices.append((start, i + 1))
            start = i
    slices.append((start, old))
    lines = ["slices:"] + [f"  - sources:\n      - model: {src}\n        layer_range: [{a}, {b}]" for a, b in slices]
    yaml = "\n".join(lines) + "\nmerge_method: passthrough\ndtype: bfloat16\n"
    config = out.parent / "mergekit.yaml"
    config.write_text(yaml)
    cmd = [MERGEKIT, str(config), str(out), "--lazy-unpickle", "--out-shard-size", "2B"]
    run = timed(cmd, cap, env)
    if run["returncode"] != 0:
        run["error"] = run["stderr"].strip().splitlines()[-1:] if run["stderr"] else []
    return run


def logits_delta(src: Path, out: Path, env: dict) -> float | None:
    """max |logits(out) - logits(src)| / max |logits(src)| on probe ids, streamed (the lazy skeleton of netgraft's
    certificate, so memory stays bounded)."""
    code = r"""
import sys, torch, transformers
from pathlib import Path
from netgraft.hf.stream import skeleton, _run
from netgraft.hf.front import _Outputs
from netgraft.io.reader import LazyCheckpoint
outs = []
for d in sys.argv[1:3]:
    config = transformers.AutoConfig.from_pretrained(d)
    model = skeleton(transformers.LlamaForCausalLM, config)
    ckpt = LazyCheckpoint(Path(d))
    ids = torch.randint(0, config.vocab_size, (2, 12), generator=torch.Generator().manual_seed(0))
    outs.append(_run(model, {"input_ids": ids}, ckpt.get, _Outputs())[0])
print(float((outs[0] - outs[1]).abs().max() / outs[0].abs().max()))
"""
    proc = subprocess.run([sys.executable, "-c", code, str(src), str(out)], env=env, capture_output=True, text=True)
    return float(proc.stdout.strip().splitlines()[-1]) if proc.returncode == 0 else None


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    jobs = [j for j in result["jobs"] if "seconds" in result["jobs"][j]]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.8))
    a1.bar(jobs, [result["jobs"][j]["seconds"] for j in jobs], color="tab:blue")
    a1.set_ylabel("wall seconds")
    a1.tick_params(axis="x", rotation=20)
    a2.bar(jobs, [(result["jobs"][j].get("peak_rss") or 0) / 2**30 for j in jobs], color="tab:orange",
           label="peak RSS")
    a2.axhline(result["cap"] / 2**30, color="k", ls="--", label="cap")
    a2.set_ylabel("GiB")
    a2.tick_params(axis="x", rotation=20)
    a2.legend()
    fig.suptitle(f"{result['params'] / 1e9:.2f}B-parameter bf16 checkpoint ({result['checkpoint_bytes'] / 1e9:.1f} GB)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def readme(result: dict) -> str:
    copy = result["jobs"]["copy tensors"]["seconds"]
    rows = []
    for name, job in result["jobs"].items():
        if "skipped" in job:
            rows.append({"job": name, "wall": job["skipped"]})
            continue
        rows.append({"job": name, "wall": f"{job['seconds']:.0f} s", "/ copy": f"{job['seconds'] / copy:.2f}x",
                     "peak RSS": f"{job['peak_rss'] / 2**30:.2f} GiB" if job.get("peak_rss") else "-",
                     "cgroup peak": f"{job['cgroup_peak'] / 2**30:.2f} GiB" if job.get("cgroup_peak") else "-",
                     "result": job.get("result", "")})
    head = (f"Generated LLaMA checkpoint: {result['params'] / 1e9:.2f}B parameters, bfloat16, "
            f"{result['checkpoint_bytes'] / 1e9:.1f} GB in {result['shard']} shards; every job in a fresh process "
            f"under a {result['cap'] / 2**30:.1f} GiB cgroup cap (copy: no cap). Target: time <= "
            f"{TARGET_TIME_RATIO}x the copy. Measured by `benchmarks/bench_stream.py` ({result['mode']}, "
            f"{result['timestamp'][:10]}); `results/stream{'_quick' if result['mode'] == 'quick' else ''}.json`.")
    return head + "\n\n" + markdown_table(rows)


def main(quick: bool = False) -> dict[str, Any]:
    cfg = CONFIGS["quick" if quick else "full"]
    why = cap_reason()
    if why:
        raise SystemExit(f"bench_stream needs a memory cap: {why}")
    started = dt.datetime.now(dt.timezone.utc)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    work = Path(tempfile.mkdtemp(prefix="netgraft-stream-", dir=os.environ.get("NETGRAFT_BENCH_TMP")))
    result: dict[str, Any] = {"benchmark": "stream", "mode": "quick" if quick else "full",
                              "timestamp": started.isoformat(), "cap": cfg["cap"], "shard": cfg["shard"],
                              "model": cfg["model"], "versions": {"netgraft": netgraft.__version__,
                                                                 "torch": torch.__version__,
                                                                 "python": platform.python_version()},
                              "jobs": {}}
    try:
        src = work / "src"
        print(f"generating the checkpoint in {src} ...", flush=True)
        t0 = time.perf_counter()
        result["checkpoint_bytes"] = make_checkpoint(src, cfg["model"], cfg["shard"])
        result["params"] = result["checkpoint_bytes"] // 2
        result["generate_seconds"] = time.perf_counter() - t0
        (work / "copy").mkdir()
        print("copy tensors (baseline) ...", flush=True)
        result["jobs"]["copy tensors"] = timed([sys.executable, "-c", COPY, str(src), str(work / "copy")], None, env)
        shutil.rmtree(work / "copy")
        cli = [sys.executable, "-m", "netgraft.cli"]
        for name, args in (("netgraft deepen", ["deepen", "--num-hidden-layers", str(cfg["layers"])]),
                           ("netgraft widen", ["widen", "--intermediate-size", str(cfg["ffn"])])):
            out = work / name.split()[-1]
            print(f"{name} ...", flush=True)
            job = timed([*cli, args[0], str(src), "-o", str(out), *args[1:], "--max-shard-size", cfg["shard"]],
                        cfg["cap"], env)
            if job["returncode"] == 0:
                job["verified"] = verify(out)
                job["result"] = f"certified, max abs {job['verified']['certificate']['max_abs']:.1e}"
            else:
                job["result"] = f"FAILED (exit {job['returncode']})"
            result["jobs"][name] = job
            shutil.rmtree(out, ignore_errors=True)
            print(f"  {job['seconds']:.0f} s, peak RSS {(job['peak_rss'] or 0) / 2**30:.2f} GiB, {job['result']}",
                  flush=True)
        print("mergekit passthrough ...", flush=True)
        merged = work / "mergekit"
        job = mergekit_passthrough(src, merged, cfg["model"]["num_hidden_layers"], cfg["layers"], cfg["cap"], env)
        if job.get("returncode") == 0:
            delta = logits_delta(src, merged, env)
            job["logits_relative_delta"] = delta
            job["result"] = ("not function-preserving: max |delta logits| = "
                             f"{delta:.2f} x max |logits|" if delta is not None else "ran")
        elif "skipped" not in job:
            job["result"] = f"FAILED (exit {job['returncode']})"
        result["jobs"]["mergekit passthrough"] = job
        shutil.rmtree(merged, ignore_errors=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    copy = result["jobs"]["copy tensors"]["seconds"]
    result["ratios"] = {n: j["seconds"] / copy for n, j in result["jobs"].items() if "seconds" in j}
    result["target_met"] = all(result["ratios"][n] <= TARGET_TIME_RATIO for n in ("netgraft deepen", "netgraft widen"))
    result["wall_seconds"] = (dt.datetime.now(dt.timezone.utc) - started).total_seconds()
    json_path, png_path = write_results("stream", quick, result, plot)
    print(f"wrote {json_path} and {png_path}; updated {publish_section('stream', readme(result))}")
    return result


if __name__ == "__main__":
    main(quick="--quick" in sys.argv)
