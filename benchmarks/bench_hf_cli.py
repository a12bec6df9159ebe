"""Benchmark: the `netgraft` CLI on a ~1B-parameter LLaMA-style checkpoint - time and peak memory.

``make bench`` (via ``run_all.py``) calls ``main(quick=False)``; ``--quick`` uses a ~0.1B model. Directly:
``.venv/bin/python benchmarks/bench_hf_cli.py [--quick]``.

A checkpoint is generated (config.json + model.safetensors, bfloat16, random weights of a LlamaForCausalLM with
grouped-query attention), then, each in a fresh subprocess so the kernel's peak RSS belongs to one job:
    * baseline: copy the checkpoint's tensors (safetensors load of every tensor, then save_file to a new directory);
    * `netgraft deepen SRC -o OUT --num-layers 1.5 x L`;
    * `netgraft widen SRC -o OUT --intermediate-size 1.5 x F`.
Reported: wall time as a ratio to the baseline copy, and peak RSS against the bytes of source + result (the target:
at most source + result, above the interpreter's own baseline).

Writes ``benchmarks/results/hf_cli.json`` and ``hf_cli.png`` (``hf_cli_quick.*`` for --quick) and regenerates the
README's ``hf_cli`` section.
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
import textwrap
from pathlib import Path
from typing import Any

import torch

import netgraft

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
CONFIGS = {
    "full": {"hidden_size": 2048, "intermediate_size": 5632, "num_hidden_layers": 20, "num_attention_heads": 16,
             "num_key_value_heads": 4, "vocab_size": 32000},
    "quick": {"hidden_size": 768, "intermediate_size": 2048, "num_hidden_layers": 8, "num_attention_heads": 12,
              "num_key_value_heads": 4, "vocab_size": 32000},
}
# Interpreter + torch + transformers imported, nothing loaded: subtracted from every peak.
_BASELINE_SNIPPET = "import torch, transformers, safetensors.torch; import netgraft.cli"


def make_checkpoint(path: Path, cfg: dict[str, int]) -> int:
    """A LlamaForCausalLM checkpoint with random bfloat16 weights; returns its parameter count."""
    import transformers
    from safetensors.torch import save_file

    config = transformers.LlamaConfig(max_position_embeddings=512, tie_word_embeddings=False, **cfg,
                                      architectures=["LlamaForCausalLM"], dtype="bfloat16")
    with torch.device("meta"):
        model = transformers.LlamaForCausalLM(config)
    g = torch.Generator().manual_seed(0)
    tensors = {}
    for name, p in model.state_dict().items():
        t = torch.randn(p.shape, generator=g) * 0.02 if p.dim() > 1 else 1.0 + 0.1 * torch.randn(p.shape, generator=g)
        tensors[name] = t.to(torch.bfloat16)
    path.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(path)
    save_file(tensors, path / "model.safetensors", metadata={"format": "pt"})
    return sum(t.numel() for t in tensors.values())


def _child(cmd: list[str]) -> dict[str, Any]:
    """Run `cmd` in a fresh process; its wall time and peak RSS (the kernel's high-water mark of that child)."""
    code = textwrap.dedent(f"""
        import json, resource, subprocess, sys, time
        t0 = time.perf_counter()
        rc = subprocess.run({cmd!r}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        secs = time.perf_counter() - t0
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
        print(json.dumps({{"rc": rc.returncode, "seconds": secs, "peak_rss": peak, "stdout": rc.stdout[-2000:],
                          "stderr": rc.stderr[-2000:]}}))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    if result["rc"] != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {result['stderr']}")
    return result


def _dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.glob("*.safetensors"))


COPY_SNIPPET = textwrap.dedent("""
    import sys
    from safetensors.torch import load_file, save_file
    tensors = load_file(sys.argv[1] + "/model.safetensors")
    save_file(tensors, sys.argv[2] + "/model.safetensors", metadata={"format": "pt"})
""")


def measure(work: Path, src: Path, cfg: dict[str, int]) -> dict[str, Any]:
    cli = [sys.executable, "-m", "netgraft.cli"]
    jobs = {
        "copy tensors (baseline)": lambda out: [sys.executable, "-c", COPY_SNIPPET, str(src), str(out)],
        "netgraft deepen": lambda out: [*cli, "deepen", str(src), "-o", str(out), "--num-layers",
                                        str(cfg["num_hidden_layers"] * 3 // 2)],
        "netgraft widen": lambda out: [*cli, "widen", str(src), "-o", str(out), "--intermediate-size",
                                       str(cfg["intermediate_size"] * 3 // 2)],
    }
    base = _child([sys.executable, "-c", _BASELINE_SNIPPET])
    rows: dict[str, Any] = {"interpreter_peak_rss": base["peak_rss"]}
    for name, make in jobs.items():
        out = work / name.split()[-1].strip("()")
        shutil.rmtree(out, ignore_errors=True)
        if name.startswith("copy"):
            out.mkdir(parents=True)
        print(f"  {name} ...", flush=True)
        r = _child(make(out))
        result_bytes = _dir_bytes(out)
        rows[name] = {"seconds": r["seconds"], "peak_rss": r["peak_rss"], "result_bytes": result_bytes,
                      "peak_above_interpreter": r["peak_rss"] - base["peak_rss"],
                      "certificate": _certificate(out)}
        shutil.rmtree(out, ignore_errors=True)
    return rows


def _certificate(out: Path) -> dict[str, Any] | None:
    f = out / "netgraft.json"
    return json.loads(f.read_text())["certificate"] if f.exists() else None


def result_paths(quick: bool) -> tuple[Path, Path]:
    from report import result_paths as paths

    return paths("hf_cli", quick)


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    jobs = [k for k in result["jobs"] if isinstance(result["jobs"][k], dict)]
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 3.8))
    a.bar(jobs, [result["jobs"][j]["seconds"] for j in jobs], color=["tab:gray", "tab:red", "tab:blue"])
    a.set_ylabel("wall time (s)")
    a.set_title("time")
    src = result["source_bytes"] / 2**30
    peaks = [result["jobs"][j]["peak_above_interpreter"] / 2**30 for j in jobs]
    targets = [src + result["jobs"][j]["result_bytes"] / 2**30 for j in jobs]
    x = range(len(jobs))
    b.bar([i - 0.2 for i in x], peaks, width=0.4, label="peak RSS above interpreter", color="tab:red")
    b.bar([i + 0.2 for i in x], targets, width=0.4, label="source + result bytes", color="tab:gray")
    b.set_xticks(list(x), jobs)
    b.set_ylabel("GiB")
    b.set_title("peak memory")
    b.legend(fontsize=8)
    for ax in (a, b):
        ax.tick_params(axis="x", labelsize=8)
    fig.suptitle(f"netgraft CLI on a {result['source_params'] / 1e9:.2f}B-parameter LLaMA checkpoint (bfloat16)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def readme_markdown() -> str:
    from report import markdown_table, stored_results

    rows, sources = [], []
    for quick, path, r in stored_results("hf_cli"):
        base = r["jobs"]["copy tensors (baseline)"]
        for name in ("netgraft deepen", "netgraft widen"):
            j = r["jobs"][name]
            budget = r["source_bytes"] + j["result_bytes"]
            rows.append({
                "run": "`make bench-quick`" if quick else "`make bench`",
                "model": f"{r['source_params'] / 1e9:.2f}B bf16",
                "command": f"`{name} {r['args'][name]}`",
                "time": f"{j['seconds']:.1f} s",
                "time / copying the tensors": f"{j['seconds'] / base['seconds']:.2f}x",
                "peak RSS (above interpreter)": f"{j['peak_above_interpreter'] / 2**30:.2f} GiB",
                "peak / (source + result)": f"{j['peak_above_interpreter'] / budget:.2f} "
                                            f"({'met' if j['peak_above_interpreter'] <= budget else 'NOT met'})",
                "max |delta|": f"{j['certificate']['max_abs']:.2g}" if j.get("certificate") else "-",
            })
        sources.append(f"`{path.relative_to(REPO).as_posix()}` ({r['timestamp'][:10]}, {r['machine']['cpu_count']} "
                       f"CPUs, torch {r['versions']['torch']}, transformers {r['versions']['transformers']})")
    if not rows:
        return "(run `make bench` to fill this table)"
    intro = ("A generated LlamaForCausalLM checkpoint (random bfloat16 weights, grouped-query attention, untied), one "
             "fresh process per command. Baseline: load every tensor of the checkpoint with safetensors and save them "
             "again (the cost of just copying it). Peak RSS is the kernel's high-water mark of the process minus "
             "that of an interpreter that only imported torch and transformers. Includes loading, growing, the "
             "certificate (a forward pass of both models on probe ids) and the atomic save.")
    table = markdown_table(rows, align={k: "right" for k in rows[0] if k not in ("run", "command")})
    return "\n\n".join([textwrap.fill(intro, 118), table, textwrap.fill("Measured, not typed: " + "; ".join(sources)
                                                                        + ".", 118)])


def publish_readme() -> Path:
    from report import publish_section

    return publish_section("hf_cli", readme_markdown())


def main(quick: bool = False) -> dict[str, Any]:
    import transformers

    cfg = CONFIGS["quick" if quick else "full"]
    started = dt.datetime.now(dt.timezone.utc)
    work = Path(tempfile.mkdtemp(prefix="netgraft-bench-cli-"))
    try:
        src = work / "src"
        print(f"bench_hf_cli ({'quick' if quick else 'full'}): generating the checkpoint {cfg}", flush=True)
        n = make_checkpoint(src, cfg)
        print(f"  {n / 1e9:.2f}B parameters, {_dir_bytes(src) / 2**30:.2f} GiB", flush=True)
        jobs = measure(work, src, cfg)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result = {
        "benchmark": "hf_cli", "mode": "quick" if quick else "full", "timestamp": started.isoformat(),
        "versions": {"netgraft": netgraft.__version__, "torch": torch.__version__,
                     "transformers": transformers.__version__, "python": platform.python_version()},
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count()},
        "config": cfg, "source_params": n, "source_bytes": n * 2, "jobs": jobs,
        "args": {"netgraft deepen": f"--num-layers {cfg['num_hidden_layers'] * 3 // 2}",
                 "netgraft widen": f"--intermediate-size {cfg['intermediate_size'] * 3 // 2}"},
        "wall_seconds": (dt.datetime.now(dt.timezone.utc) - started).total_seconds(),
    }
    from report import write_results

    json_path, png_path = write_results("hf_cli", quick, result, plot)
    readme = publish_readme()
    base = jobs["copy tensors (baseline)"]["seconds"]
    for name in ("netgraft deepen", "netgraft widen"):
        j = jobs[name]
        peak = j["peak_above_interpreter"] / 2**30
        print(f"{name}: {j['seconds']:.1f} s ({j['seconds'] / base:.2f}x copy), peak {peak:.2f} GiB vs source+result "
              f"{(n * 2 + j['result_bytes']) / 2**30:.2f} GiB; certificate {j['certificate']}")
    print(f"wrote {json_path.relative_to(REPO)}, {png_path.relative_to(REPO)}; README section 'hf_cli' in {readme}")
    return result


def _cli() -> None:
    from report import bench_cli

    bench_cli(__doc__.splitlines()[0], main, publish_readme, "a ~0.1B model instead of ~1B")


if __name__ == "__main__":
    sys.path.insert(0, str(HERE))
    _cli()
