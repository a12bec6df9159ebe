"""Benchmark: the time and peak memory of `netgraft.widen` on a ~100M-parameter model, against plain copies.

``make bench`` (via ``run_all.py``) calls ``main(quick=False)``; ``--quick`` uses a ~10M model. Directly:
``.venv/bin/python benchmarks/bench_widen.py [--quick]``.

What is measured, in one run on one machine:
    * time: `widen(model, 1.5)` vs. cloning every parameter of the source and vs. `copy.deepcopy(source)`
      (plus, for context, cloning the parameters of the result: the cost of just writing the result's bytes).
      One untimed warm-up round, then interleaved repetitions, each reported; medians give the ratios.
    * memory: each measurement in a fresh subprocess (build the model, note RSS, run the operation, read the
      kernel's RSS high-water mark), compared with the bytes of the source and the result.
    * exactness: the certificate's max |delta| on the example inputs.

Writes ``benchmarks/results/widen.json`` and ``widen.png`` (``widen_quick.*`` for --quick, so a quick run
never overwrites full results) and regenerates the README's ``widen`` section from the result files present.
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import gc
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

import netgraft

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
RESULTS = HERE / "results"

# Model configurations: a deep MLP of square Linears with ReLUs. (hidden, number of Linears):
# 24 x (2048^2 + 2048) = 100.7M parameters; 10 x (1024^2 + 1024) = 10.5M.
CONFIGS: dict[str, dict[str, int]] = {"full": {"hidden": 2048, "layers": 24},
                                      "quick": {"hidden": 1024, "layers": 10}}
FACTOR = 1.5
BATCH = 8  # tracing and certificate inputs: small, so activations do not blur the memory figure
REPS = 3  # timing repetitions (median reported)
# Memory repetitions, one fresh subprocess each. The peak varies by about one transient tensor between runs
# (whether it is still alive at the high-water moment), so a median of several is reported, with the max.
MEM_REPS = 5
SEEDS = {"model_init": 0, "example_inputs": 1, "widen": 0}
TARGET_TIME_RATIO = 3.0  # widen time / time to clone the source's parameters
TARGET_MEMORY_RATIO = 1.10  # peak memory / (source bytes + result bytes)


def build_model(hidden: int, layers: int, seed: int) -> nn.Sequential:
    """A deep MLP: `layers` Linear(hidden, hidden) with a ReLU between consecutive ones (float32).

    The input and output sizes never change under widen; the `layers - 1` hidden dimensions all grow.
    """
    torch.manual_seed(seed)
    mods: list[nn.Module] = []
    for i in range(layers):
        mods.append(nn.Linear(hidden, hidden))
        if i < layers - 1:
            mods.append(nn.ReLU())
    return nn.Sequential(*mods)


def example_inputs(hidden: int, seed: int) -> tuple[torch.Tensor]:
    """The tracing and certification batch."""
    return (torch.randn(BATCH, hidden, generator=torch.Generator().manual_seed(seed)),)


def n_params(model: nn.Module) -> int:
    """Number of parameters."""
    return sum(p.numel() for p in model.parameters())


def model_bytes(model: nn.Module) -> int:
    """Bytes held by the parameters and buffers (each storage counted once, so tied weights count once)."""
    seen: dict[int, int] = {}
    for t in [*model.parameters(), *model.buffers()]:
        storage = t.untyped_storage()
        seen[storage.data_ptr()] = storage.nbytes()
    return sum(seen.values())


def rss_bytes() -> int:
    """Current resident set size of this process (Linux: /proc; elsewhere psutil)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        import psutil  # only off Linux; a demo extra

        return psutil.Process().memory_info().rss


def reset_peak_rss() -> bool:
    """Reset the kernel's RSS high-water mark to the current RSS (Linux >= 4.0); False where unsupported."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_bytes() -> tuple[int, str]:
    """The kernel's RSS high-water mark of this process and where it was read.

    Exact (no sampling thread can miss a short peak). Linux: VmHWM of /proc/self/status, which belongs to
    this process's own address space. Not ru_maxrss: on Linux it also carries the RSS of the parent this
    process was forked from (kept across exec), so a probe started by a big parent reports the parent's size.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024, "VmHWM"
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return (peak if sys.platform == "darwin" else peak * 1024), "ru_maxrss"  # bytes on macOS, KiB elsewhere


def widen_once(model: nn.Module, inputs: tuple[torch.Tensor]) -> nn.Module:
    """The measured operation."""
    return netgraft.widen(model, FACTOR, example_inputs=inputs, seed=SEEDS["widen"])


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    """Wall time of one call (after a garbage collection, so earlier garbage is not collected inside it)."""
    gc.collect()
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def measure_times(cfg: dict[str, int]) -> dict[str, Any]:
    """Time widen and the copies in one process, repetitions interleaved so drifts hit all of them alike.

    Round 0 is an untimed warm-up of every operation (its times are kept apart): the first large allocations
    of a process pay page faults, and the allocator's caches fill, whichever operation comes first.
    """
    model = build_model(cfg["hidden"], cfg["layers"], SEEDS["model_init"])
    inputs = example_inputs(cfg["hidden"], SEEDS["example_inputs"])
    names = ("widen", "clone_params", "deepcopy", "clone_result_params")
    warmup: dict[str, float] = {}
    reps: dict[str, list[float]] = {k: [] for k in names}
    result_info: dict[str, Any] = {}
    for rep in range(REPS + 1):
        times: dict[str, float] = {}
        times["widen"], wide = timed(lambda: widen_once(model, inputs))
        if rep == 0:
            cert = wide.netgraft_report.certificate
            result_info = {"result_params": n_params(wide), "result_bytes": model_bytes(wide),
                           "certificate": {"max_abs": cert.max_abs, "max_rel": cert.max_rel,
                                           "bound": cert.bound, "passed": cert.passed, "summary": str(cert)},
                           "report": str(wide.netgraft_report)}
        times["clone_params"], clones = timed(lambda: [p.detach().clone() for p in model.parameters()])
        del clones
        times["deepcopy"], dup = timed(lambda: copy.deepcopy(model))
        del dup
        times["clone_result_params"], clones = timed(
            lambda w=wide: [p.detach().clone() for p in w.parameters()])
        del clones, wide
        label = "warm-up" if rep == 0 else f"rep {rep}/{REPS}"
        print(f"  {label}: " + ", ".join(f"{k} {v:.3f} s" for k, v in times.items()), flush=True)
        for k, v in times.items():
            if rep == 0:
                warmup[k] = v
            else:
                reps[k].append(v)
    medians = {k: statistics.median(v) for k, v in reps.items()}
    return {"source_params": n_params(model), "source_bytes": model_bytes(model), **result_info,
            "seconds": {k: {"median": medians[k], "reps": reps[k], "warmup": warmup[k]} for k in names},
            "ratios": {"widen_over_clone_params": medians["widen"] / medians["clone_params"],
                       "widen_over_deepcopy": medians["widen"] / medians["deepcopy"],
                       "widen_over_clone_result_params": medians["widen"] / medians["clone_result_params"]}}


def memory_probe(kind: str, hidden: int, layers: int) -> dict[str, Any]:
    """Runs in a fresh subprocess: the RSS high-water mark of one `kind` operation ("widen" or "deepcopy").

    baseline: RSS with torch and netgraft imported and widen warmed up on a tiny model, before the model
    exists. The peak above it holds the source model plus everything the operation allocates, its result too.
    """
    # Warm up widen on a tiny model so its one-time allocations (imports, caches) land in the baseline.
    widen_once(build_model(16, 3, SEEDS["model_init"]), example_inputs(16, SEEDS["example_inputs"]))
    gc.collect()
    # Importing torch peaks above the RSS it settles at; without a reset that transient would be the "peak".
    was_reset = reset_peak_rss()
    baseline = rss_bytes()
    peak_before, source = peak_rss_bytes()
    model = build_model(hidden, layers, SEEDS["model_init"])
    inputs = example_inputs(hidden, SEEDS["example_inputs"])
    after_build = rss_bytes()
    result = widen_once(model, inputs) if kind == "widen" else copy.deepcopy(model)
    peak, _ = peak_rss_bytes()
    return {"kind": kind, "peak_counter": source, "peak_counter_reset": was_reset, "baseline_rss": baseline,
            "peak_rss_before_model": peak_before, "rss_after_build": after_build, "peak_rss": peak,
            "source_bytes": model_bytes(model), "result_bytes": model_bytes(result)}


def run_memory_probe(kind: str, cfg: dict[str, int]) -> dict[str, Any]:
    """One probe in a fresh interpreter (a reused process would carry the previous peak), parsed from JSON."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--memory-probe", kind,
           "--hidden", str(cfg["hidden"]), "--layers", str(cfg["layers"])]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"memory probe {kind} failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    probe = json.loads(proc.stdout.strip().splitlines()[-1])
    both = probe["source_bytes"] + probe["result_bytes"]
    if probe["peak_rss_before_model"] > probe["baseline_rss"] + 2**20:
        # The counter could not be reset below an earlier transient: the peak may be overstated.
        print(f"  warning: {kind} probe peak counter was not reset ({probe['peak_counter']})", flush=True)
    probe["peak_above_baseline"] = probe["peak_rss"] - probe["baseline_rss"]
    probe["peak_increase_after_build"] = probe["peak_rss"] - probe["rss_after_build"]
    probe["peak_over_source_plus_result"] = probe["peak_above_baseline"] / both
    probe["increase_over_result"] = probe["peak_increase_after_build"] / probe["result_bytes"]
    return probe


def measure_memory(cfg: dict[str, int]) -> dict[str, Any]:
    """`MEM_REPS` widen probes and one deepcopy probe (a check of the method: its ratio should be about 1)."""
    widen_probes = [run_memory_probe("widen", cfg) for _ in range(MEM_REPS)]
    deepcopy_probe = run_memory_probe("deepcopy", cfg)
    ratios = [p["peak_over_source_plus_result"] for p in widen_probes]
    return {"method": "fresh subprocess per probe; peak = RSS high-water mark (VmHWM, reset after imports) - "
                      "RSS before the model is built (torch and netgraft imported, widen warmed up on a tiny "
                      "model); ratio = peak / (source + result bytes)",
            "widen_probes": widen_probes, "deepcopy_probe": deepcopy_probe,
            "widen_peak_over_source_plus_result": statistics.median(ratios),
            "widen_peak_over_source_plus_result_max": max(ratios)}


def machine_info() -> dict[str, Any]:
    """Where the numbers come from."""
    info: dict[str, Any] = {"platform": platform.platform(), "machine": platform.machine(),
                            "processor": platform.processor(), "cpu_count": os.cpu_count(),
                            "torch_threads": torch.get_num_threads()}
    try:
        import psutil

        info["memory_bytes"] = psutil.virtual_memory().total
    except ImportError:
        pass
    return info


def mib(n: float) -> float:
    return n / 2**20


def plot(result: dict[str, Any], path: Path) -> None:
    """Two panels: times (median bars, each repetition as a dot) and memory (bytes vs. the measured peak)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    secs = result["seconds"]
    labels = {"widen": f"widen {FACTOR:g}x", "clone_params": "clone source\nparameters",
              "deepcopy": "deepcopy\nsource", "clone_result_params": "clone result\nparameters"}
    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(12, 4.5))
    keys = list(labels)
    colors = ["tab:blue"] + ["0.6"] * (len(keys) - 1)
    ax_t.bar(range(len(keys)), [secs[k]["median"] for k in keys], color=colors)
    for i, k in enumerate(keys):
        ax_t.plot([i] * len(secs[k]["reps"]), secs[k]["reps"], "k.", markersize=6)
    target = TARGET_TIME_RATIO * secs["clone_params"]["median"]
    ax_t.axhline(target, color="tab:red", linestyle="--", linewidth=1,
                 label=f"target: {TARGET_TIME_RATIO:g}x clone of the source's parameters")
    ax_t.set_xticks(range(len(keys)), [labels[k] for k in keys])
    top = max(max(v["reps"]) for v in secs.values())
    ax_t.set_ylim(0, 1.3 * max(top, target))  # headroom: the legend must not hide a repetition's dot
    ax_t.set_ylabel(f"seconds (bar: median of {REPS}, dots: repetitions)")
    ax_t.legend(loc="upper right")
    ax_t.set_title("time")

    mem = result["memory"]
    peak = statistics.median(p["peak_above_baseline"] for p in mem["widen_probes"])
    src, res = result["source_bytes"], result["result_bytes"]
    bars = [("source", src), ("result", res), ("source +\nresult", src + res), ("widen\npeak", peak),
            ("deepcopy\npeak", mem["deepcopy_probe"]["peak_above_baseline"])]
    ax_m.bar(range(len(bars)), [mib(b) for _, b in bars], color=["0.6", "0.6", "0.4", "tab:blue", "0.6"])
    ax_m.axhline(mib(TARGET_MEMORY_RATIO * (src + res)), color="tab:red", linestyle="--", linewidth=1,
                 label=f"target: {TARGET_MEMORY_RATIO:g} x (source + result)")
    ax_m.set_xticks(range(len(bars)), [b for b, _ in bars])
    ax_m.set_ylabel("MiB (peaks: above the pre-model baseline)")
    ax_m.set_ylim(0, 1.3 * mib(max(max(b for _, b in bars), TARGET_MEMORY_RATIO * (src + res))))
    ax_m.legend(loc="upper left")
    ax_m.set_title("peak memory (fresh process per measurement)")
    m = result["machine"]
    fig.suptitle(f"netgraft.widen {FACTOR:g}x on a {result['source_params'] / 1e6:.1f}M-parameter MLP "
                 f"({m['machine']}, {m['cpu_count']} CPUs, torch {result['versions']['torch']})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def result_paths(quick: bool) -> tuple[Path, Path]:
    """JSON and PNG paths; quick runs get their own files so they never overwrite the full results."""
    stem = "widen_quick" if quick else "widen"
    return RESULTS / f"{stem}.json", RESULTS / f"{stem}.png"


def readme_markdown() -> str:
    """The README's widen section, rebuilt from every result file present (full first, then quick)."""
    from report import markdown_table, stored_results  # benchmarks/ is on sys.path whenever a script here runs

    rows, sources = [], []
    for quick, path, r in stored_results("widen"):
        secs, ratios, mem = r["seconds"], r["ratios"], r["memory"]
        t_ratio, m_ratio = ratios["widen_over_clone_params"], mem["widen_peak_over_source_plus_result"]
        rows.append({
            "run": "`make bench-quick`" if quick else "`make bench`",
            "model params (source -> result)":
                f"{r['source_params'] / 1e6:.1f}M -> {r['result_params'] / 1e6:.1f}M",
            "widen time": f"{secs['widen']['median']:.3g} s",
            "clone time": f"{secs['clone_params']['median']:.3g} s",
            "widen / clone": f"{t_ratio:.2f}x (target <= {r['targets']['time_ratio']:g}x: "
                             f"{'met' if r['targets']['time_ratio_met'] else 'NOT met'})",
            "widen / clone of result-sized tensors": f"{ratios['widen_over_clone_result_params']:.2f}x",
            "peak memory / (source + result)": f"{m_ratio:.3f} (target <= {r['targets']['memory_ratio']:g}: "
                                               f"{'met' if r['targets']['memory_ratio_met'] else 'NOT met'})",
            "max |delta|": f"{r['certificate']['max_abs']:.2g}",
        })
        m = r["machine"]
        sources.append(f"`{path.relative_to(REPO).as_posix()}` ({r['timestamp'][:10]}, {m['platform']}, "
                       f"{m['cpu_count']} CPUs, {m['torch_threads']} torch threads, "
                       f"torch {r['versions']['torch']}, netgraft {r['versions']['netgraft']})")
    if not rows:
        return "(run `make bench` to fill this table)"
    first = json.loads(result_paths(not (RESULTS / "widen.json").exists())[0].read_text())
    intro = (f"`netgraft.widen(model, {FACTOR:g}, ...)` on a deep MLP of float32 Linears (every hidden "
             f"dimension grows {FACTOR:g}x). Times: median of {first['reps']['timing']} after a warm-up "
             f"round, in one process; clone = `[p.detach().clone() for p in model.parameters()]` of the "
             f"source; the result holds {first['result_bytes'] / first['source_bytes']:.1f}x the source's "
             f"bytes, so the next column compares with cloning tensors of the result's sizes. widen includes "
             f"tracing and the certificate (one forward of the result). Peak memory: RSS high-water mark above "
             f"the pre-model baseline, a fresh process per measurement, median of {first['reps']['memory']}.")
    table = markdown_table(rows, align={k: "right" for k in rows[0] if k != "run"})
    # Wrapped like the rest of the README; a line break inside inline code renders as a space.
    footer = "Measured, not typed: " + "; ".join(sources) + "."
    return textwrap.fill(intro, 118) + "\n\n" + table + "\n\n" + textwrap.fill(footer, 118)


def publish_readme() -> Path:
    from report import publish_section

    return publish_section("widen", readme_markdown())


def main(quick: bool = False) -> dict[str, Any]:
    """Run the benchmark, write the JSON and PNG, regenerate the README section; return the results."""
    cfg = CONFIGS["quick" if quick else "full"]
    print(f"bench_widen ({'quick' if quick else 'full'}): MLP of {cfg['layers']} Linear({cfg['hidden']}, "
          f"{cfg['hidden']}), widen {FACTOR:g}x; torch threads {torch.get_num_threads()}", flush=True)
    started = dt.datetime.now(dt.timezone.utc)
    result: dict[str, Any] = {
        "benchmark": "widen", "mode": "quick" if quick else "full", "timestamp": started.isoformat(),
        "versions": {"netgraft": netgraft.__version__, "torch": torch.__version__,
                     "python": platform.python_version()},
        "machine": machine_info(), "seeds": SEEDS, "factor": FACTOR, "example_batch": BATCH,
        "model": {"kind": "deep MLP, Linear + ReLU, float32", **cfg},
        "reps": {"timing": REPS, "memory": MEM_REPS},
    }
    # Memory first: the probes are forked from this process, and it should be small when they are.
    print(f"memory ({MEM_REPS} widen probes + 1 deepcopy probe, fresh subprocess each)...", flush=True)
    result["memory"] = measure_memory(cfg)
    print("timing (a warm-up round, then interleaved repetitions):", flush=True)
    result.update(measure_times(cfg))
    t_ratio = result["ratios"]["widen_over_clone_params"]
    m_ratio = result["memory"]["widen_peak_over_source_plus_result"]
    result["targets"] = {"time_ratio": TARGET_TIME_RATIO, "time_ratio_met": t_ratio <= TARGET_TIME_RATIO,
                         "memory_ratio": TARGET_MEMORY_RATIO,
                         "memory_ratio_met": m_ratio <= TARGET_MEMORY_RATIO}
    result["wall_seconds"] = (dt.datetime.now(dt.timezone.utc) - started).total_seconds()

    RESULTS.mkdir(parents=True, exist_ok=True)
    json_path, png_path = result_paths(quick)
    json_path.write_text(json.dumps(result, indent=2) + "\n")
    plot(result, png_path)
    readme = publish_readme()

    secs, dc = result["seconds"], result["memory"]["deepcopy_probe"]
    print(f"params: {result['source_params']:,} -> {result['result_params']:,} "
          f"({mib(result['source_bytes']):.0f} MiB -> {mib(result['result_bytes']):.0f} MiB)")
    for k, v in secs.items():
        print(f"  {k:<20} median {v['median']:.3f} s  reps " + ", ".join(f"{x:.3f}" for x in v["reps"]))
    print(f"widen / clone params: {t_ratio:.2f}x (target <= {TARGET_TIME_RATIO:g}x: "
          f"{'met' if result['targets']['time_ratio_met'] else 'NOT met'}); "
          f"widen / deepcopy: {result['ratios']['widen_over_deepcopy']:.2f}x")
    print(f"peak memory / (source + result): {m_ratio:.3f} (target <= {TARGET_MEMORY_RATIO:g}: "
          f"{'met' if result['targets']['memory_ratio_met'] else 'NOT met'}); probes "
          + ", ".join(f"{p['peak_over_source_plus_result']:.3f}" for p in result["memory"]["widen_probes"])
          + f"; deepcopy check: peak / (2 x source) = {dc['peak_over_source_plus_result']:.3f}")
    print(f"certificate: {result['certificate']['summary']}")
    print(f"wrote {json_path.relative_to(REPO)}, {png_path.relative_to(REPO)}; "
          f"README section 'widen' in {readme}")
    return result


def _cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="~10M-parameter model instead of ~100M")
    parser.add_argument("--readme-only", action="store_true",
                        help="only regenerate the README section from the result files present")
    # Internal: run_memory_probe starts this script again with these to measure in a fresh process.
    parser.add_argument("--memory-probe", choices=["widen", "deepcopy"], help=argparse.SUPPRESS)
    parser.add_argument("--hidden", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--layers", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_probe:
        print(json.dumps(memory_probe(args.memory_probe, args.hidden, args.layers)))
    elif args.readme_only:
        print(f"updated {publish_readme()}")
    else:
        main(quick=args.quick)


if __name__ == "__main__":
    _cli()
