"""Helpers that publish benchmark results: markdown tables and the README sections between bench markers.

A README section looks like::

    <!-- bench:widen:start -->
    ...generated, replaced on every run...
    <!-- bench:widen:end -->

Everything between the markers belongs to the benchmark that writes it; the rest of the README is never
touched.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any


class ReadmeMarkerError(ValueError):
    """The README lacks the start/end markers of a section, or has them more than once or out of order."""


def markers(section: str) -> tuple[str, str]:
    """The start and end marker comments of a README section."""
    return f"<!-- bench:{section}:start -->", f"<!-- bench:{section}:end -->"


def replace_section(text: str, section: str, markdown: str) -> str:
    """Return `text` with the content between the section's markers replaced by `markdown`.

    Raises `ReadmeMarkerError` unless each marker occurs exactly once and the start precedes the end: guessing
    where a missing marker should go could overwrite hand-written documentation.
    """
    start, end = markers(section)
    for marker in (start, end):
        count = text.count(marker)
        if count != 1:
            found = "is missing" if count == 0 else f"occurs {count} times"
            raise ReadmeMarkerError(
                f"README marker {marker!r} {found}; add exactly one pair:\n{start}\n{end}")
    i, j = text.index(start) + len(start), text.index(end)
    if j < i:
        raise ReadmeMarkerError(f"README marker {end!r} comes before {start!r}")
    return text[:i] + "\n" + markdown.strip("\n") + "\n" + text[j:]


def update_readme(section: str, markdown: str, readme: str | os.PathLike[str] = "README.md") -> None:
    """Replace the text between ``<!-- bench:{section}:start -->`` and ``<!-- bench:{section}:end -->``.

    Args:
        section: the section name in the markers (e.g. ``"widen"``).
        markdown: the new content (the markers themselves are kept).
        readme: the README to update; a relative path is relative to the current directory.

    Raises:
        FileNotFoundError: `readme` does not exist.
        ReadmeMarkerError: the markers are missing, duplicated or out of order (the file is left unchanged).
    """
    path = Path(readme)
    text = path.read_text(encoding="utf-8")
    new = replace_section(text, section, markdown)
    if new == text:
        return
    # Write a sibling temporary file and rename it over the README, so an interrupted run never leaves a
    # truncated README behind.
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            f.write(new)
        os.chmod(tmp, path.stat().st_mode & 0o777)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


README_ENV = "NETGRAFT_BENCH_README"  # set by run_all.py --readme: publish into another README (e.g. a copy)


def publish_section(section: str, markdown: str) -> Path:
    """Write a benchmark's README section into the repository's README, or the one named by $NETGRAFT_BENCH_README."""
    readme = Path(os.environ.get(README_ENV) or Path(__file__).resolve().parent.parent / "README.md")
    update_readme(section, markdown, readme)
    return readme


RESULTS = Path(__file__).resolve().parent / "results"


def result_paths(stem: str, quick: bool) -> tuple[Path, Path]:
    """JSON and PNG paths of a benchmark; quick runs get their own files so they never overwrite full results."""
    name = f"{stem}_quick" if quick else stem
    return RESULTS / f"{name}.json", RESULTS / f"{name}.png"


def stored_results(stem: str) -> list[tuple[bool, Path, dict]]:
    """The result files of a benchmark that exist, full run first then quick: (quick, path, parsed JSON)."""
    import json

    found = []
    for quick in (False, True):
        path = result_paths(stem, quick)[0]
        if path.exists():
            found.append((quick, path, json.loads(path.read_text())))
    return found


def preferred_result(stem: str) -> tuple[Path, dict] | None:
    """The full run's (path, parsed JSON) when there is one, else the quick run's, else None (nothing run yet)."""
    stored = stored_results(stem)
    return stored[0][1:] if stored else None


def write_results(stem: str, quick: bool, result: dict, plot: Callable[[dict, Path], None]) -> tuple[Path, Path]:
    """Write a benchmark's JSON and its plot; returns their paths."""
    import json

    RESULTS.mkdir(parents=True, exist_ok=True)
    json_path, png_path = result_paths(stem, quick)
    json_path.write_text(json.dumps(result, indent=1) + "\n")
    plot(result, png_path)
    return json_path, png_path


def bench_cli(description: str, main: Callable[..., Any], publish: Callable[[], Path], quick_help: str) -> None:
    """The command line shared by the training benchmarks: ``--quick`` and ``--readme-only``."""
    import argparse

    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help=quick_help)
    parser.add_argument("--readme-only", action="store_true", help="only regenerate the README section")
    args = parser.parse_args()
    if args.readme_only:
        print(f"updated {publish()}")
    else:
        main(quick=args.quick)


def _cell(value: Any) -> str:
    """One table cell: text with pipes escaped and newlines flattened (both would break the table)."""
    return str(value).replace("|", "\\|").replace("\n", " ")


def markdown_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None,
                   align: Mapping[str, str] | None = None) -> str:
    """Render a list of dicts as a GitHub markdown table.

    Args:
        rows: one dict per row; values are rendered with `str` (format numbers before passing them).
        columns: column order and selection; default: keys in first-seen order across all rows.
        align: optional ``{column: "left" | "right" | "center"}``; unlisted columns are left-aligned.

    A missing key renders as an empty cell.

    Example:
        >>> print(markdown_table([{"model": "MLP", "time": "1.2 s"}], align={"time": "right"}))
        | model | time |
        |---|---:|
        | MLP | 1.2 s |
    """
    if columns is None:
        columns = list(dict.fromkeys(key for row in rows for key in row))
    if not columns:
        raise ValueError("markdown_table needs at least one column")
    rules = {"left": "---", "right": "---:", "center": ":---:"}
    align = align or {}
    unknown = {a for a in align.values() if a not in rules}
    if unknown:
        raise ValueError(f"unknown alignment(s) {sorted(unknown)}; use left, right or center")
    lines = ["| " + " | ".join(_cell(c) for c in columns) + " |",
             "|" + "|".join(rules[align.get(c, "left")] for c in columns) + "|"]
    lines += ["| " + " | ".join(_cell(row.get(c, "")) for c in columns) + " |" for row in rows]
    return "\n".join(lines)
