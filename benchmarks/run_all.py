"""Run every benchmark: each ``benchmarks/bench_*.py`` module's ``main(quick)``, in its own subprocess.

``make bench`` runs ``python benchmarks/run_all.py``; ``make bench-quick`` adds ``--quick``. A fresh process
per benchmark keeps one benchmark's allocations, threads and caches from skewing the next one's numbers.

Options:
    --quick          reduced sizes (each benchmark decides what that means)
    --only NAME      run only the benchmarks whose module name contains NAME (repeatable)
    --readme PATH    publish README sections into PATH instead of the repository's README
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
README_ENV = "NETGRAFT_BENCH_README"  # read by the benchmarks' README publishing


def discover() -> list[Path]:
    """The benchmark modules, in name order so runs are reproducible."""
    return sorted(HERE.glob("bench_*.py"))


def run_one(path: Path, quick: bool) -> None:
    """Inside the child process: import the module from its file and call its ``main(quick)``."""
    sys.path.insert(0, str(HERE))  # so benchmarks can import their helpers (report.py)
    spec = importlib.util.spec_from_file_location(path.stem, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = module
    spec.loader.exec_module(module)
    if not callable(getattr(module, "main", None)):
        raise AttributeError(f"{path.name} has no main(quick: bool)")
    module.main(quick=quick)


def main(argv: list[str] | None = None) -> int:
    """Run the selected benchmarks one subprocess each; print a summary; return 1 if any failed."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="reduced sizes")
    parser.add_argument("--only", action="append", default=[], metavar="NAME",
                        help="run only modules whose name contains NAME")
    parser.add_argument("--readme", type=Path, help="README to publish into (default: the repository's)")
    parser.add_argument("--run-one", type=Path, help=argparse.SUPPRESS)  # internal: the child's entry point
    args = parser.parse_args(argv)

    if args.run_one:
        run_one(args.run_one, args.quick)
        return 0

    paths = [p for p in discover() if not args.only or any(s in p.stem for s in args.only)]
    if not paths:
        print("no benchmark matched", file=sys.stderr)
        return 1
    env = dict(os.environ)
    if args.readme:
        env[README_ENV] = str(args.readme.resolve())
    summary: list[tuple[str, int, float]] = []
    for path in paths:
        print(f"\n=== {path.stem}{' (quick)' if args.quick else ''} ===", flush=True)
        cmd = [sys.executable, str(Path(__file__).resolve()), "--run-one", str(path)]
        t0 = time.perf_counter()
        # Output is inherited, not captured: benchmarks stream their progress.
        rc = subprocess.run(cmd + (["--quick"] if args.quick else []), env=env, check=False).returncode
        summary.append((path.stem, rc, time.perf_counter() - t0))

    print("\n=== summary ===")
    for name, rc, secs in summary:
        print(f"{name:<30} {'ok' if rc == 0 else f'FAILED (exit {rc})':<18} {secs:7.1f} s")
    return 0 if all(rc == 0 for _, rc, _ in summary) else 1


if __name__ == "__main__":
    sys.exit(main())
