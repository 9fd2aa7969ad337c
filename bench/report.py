"""Turns the benchmarks' JSON files into what the README shows: one combined JSON of the raw
results, a Markdown table of medians and ratios to the best peer, and a PNG chart per benchmark.

Runs on the Linux side (matplotlib is a bench-only dependency of the Linux venv):
``python -m bench.report RESULTS_DIR OUTPUT_DIR [--readme README.md]``. With ``--readme``, the
text between ``<!-- bench:begin -->`` and ``<!-- bench:end -->`` is replaced by the table.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

BEGIN = "<!-- bench:begin -->"
END = "<!-- bench:end -->"
# The subject of each benchmark that is this project's; the others are its peers.
OURS = ("AfdPoller", "AfdEventLoop", "asyncio+AfdSelector", "ntafd-exec", "cffi")


def load(results_dir: Path) -> list[dict[str, Any]]:
    runs = []
    for path in sorted(results_dir.glob("*.json")):
        with path.open(encoding="utf-8") as source:
            data = json.load(source)
        data["source"] = path.name
        runs.append(data)
    return runs


def _number(value: float) -> str:
    if math.isnan(value):
        return "n/a"
    if value >= 100:
        return f"{value:,.0f}"
    return f"{value:.3g}"


def _is_ours(subject: str) -> bool:
    return any(subject == mine or subject.startswith(mine + " ") for mine in OURS)


def _ratio(ours: dict[str, Any], peer: dict[str, Any]) -> float:
    """How many times better ours is than the peer (> 1: ours is better)."""
    if ours["better"] == "higher":
        return float(ours["median"] / peer["median"])
    return float(peer["median"] / ours["median"])


def table(runs: list[dict[str, Any]]) -> str:
    """A Markdown table: one row per figure, with its spread, its ratio to the best peer of
    the same case and to each other peer (for our subjects: > 1 means ours is better)."""
    lines = ["| benchmark | case | subject | median | spread (runs) | vs best peer "
             "| vs other peers |",
             "|---|---|---|---:|---|---:|---|"]
    for run in runs:
        figures = run["figures"]
        cases: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for figure in figures:
            cases.setdefault((figure["benchmark"], figure["case"]), []).append(figure)
        for (benchmark, case), members in cases.items():
            peers = [f for f in members if not _is_ours(f["subject"]) and f["values"]
                     and not f.get("reference")]
            best = None
            if peers:
                pick = max if members[0]["better"] == "higher" else min
                best = pick(peers, key=lambda f: f["median"])
            for figure in members:
                if figure["values"]:
                    low, high = figure["spread"]
                    spread = f"{_number(low)} to {_number(high)} ({len(figure['values'])})"
                    median = f"{_number(figure['median'])} {figure['unit']}"
                else:
                    spread, median = figure["note"], "n/a"
                ratio = others = ""
                if (best is not None and _is_ours(figure["subject"]) and figure["values"]
                        and not figure.get("reference")):
                    ratio = f"**{_ratio(figure, best):.2f}x** {best['subject']}"
                    others = "; ".join(f"{_ratio(figure, peer):.2f}x {peer['subject']}"
                                       for peer in peers if peer is not best)
                lines.append(f"| {benchmark} | {case} | {figure['subject']} | {median} | "
                             f"{spread} | {ratio} | {others} |")
    return "\n".join(lines)


def charts(runs: list[dict[str, Any]], output_dir: Path) -> list[Path]:
    """One PNG per benchmark: a bar per subject and case (median), whiskers for the spread."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    for run in runs:
        by_benchmark: dict[str, list[dict[str, Any]]] = {}
        for figure in run["figures"]:
            if figure["values"]:
                by_benchmark.setdefault(figure["benchmark"], []).append(figure)
        for benchmark, figures in by_benchmark.items():
            cases = list(dict.fromkeys(f["case"] for f in figures))
            fig, axes = plt.subplots(1, len(cases), figsize=(4.2 * len(cases), 3.6),
                                     squeeze=False)
            for axis, case in zip(axes[0], cases, strict=True):
                members = [f for f in figures if f["case"] == case]
                names = [f["subject"] for f in members]
                medians = [f["median"] for f in members]
                errors = [[f["median"] - f["spread"][0] for f in members],
                          [f["spread"][1] - f["median"] for f in members]]
                colours = ["tab:gray" if f.get("reference") else
                           "tab:orange" if _is_ours(f["subject"]) else "tab:blue"
                           for f in members]
                axis.bar(range(len(names)), medians, yerr=errors, color=colours, capsize=3)
                axis.set_xticks(range(len(names)))
                axis.set_xticklabels(names, rotation=30, ha="right", fontsize=7)
                better = members[0]["better"]
                axis.set_title(f"{case}\n({members[0]['unit']}, {better} is better)",
                               fontsize=8)
                axis.tick_params(axis="y", labelsize=7)
            fig.suptitle(f"{run['title']}: {benchmark}", fontsize=9)
            fig.tight_layout()
            path = output_dir / f"{run['title']}-{benchmark}.png"
            fig.savefig(path, dpi=90)
            plt.close(fig)
            written.append(path)
    return written


def rewrite_readme(readme: Path, text: str) -> None:
    content = readme.read_text(encoding="utf-8")
    start, end = content.find(BEGIN), content.find(END)
    if start < 0 or end < start:
        raise SystemExit(f"{readme}: no {BEGIN} ... {END} section to rewrite")
    readme.write_text(content[:start + len(BEGIN)] + "\n" + text + "\n" + content[end:],
                      encoding="utf-8")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.report", description=__doc__)
    parser.add_argument("results_dir", type=Path)
    parser.add_argument("output_dir", type=Path)
    parser.add_argument("--readme", type=Path, help="rewrite this README's bench section")
    arguments = parser.parse_args(sys.argv[1:] if argv is None else argv)
    runs = load(arguments.results_dir)
    if not runs:
        print(f"bench.report: no results in {arguments.results_dir}", file=sys.stderr)
        return 1
    arguments.output_dir.mkdir(parents=True, exist_ok=True)
    combined = arguments.output_dir / "results.json"
    combined.write_text(json.dumps(runs, indent=2), encoding="utf-8")
    markdown = table(runs)
    (arguments.output_dir / "results.md").write_text(markdown + "\n", encoding="utf-8")
    images = charts(runs, arguments.output_dir)
    environments = sorted({", ".join(f"{k}={v}" for k, v in run["environment"].items()
                                     if k != "date") for run in runs})
    dates = sorted(run["environment"]["date"] for run in runs)
    base = arguments.readme.parent if arguments.readme else arguments.output_dir
    links = [f"![{image.stem}]({image.resolve().relative_to(base.resolve()).as_posix()})"
             for image in images]
    section = "\n".join([
        f"Measured {dates[0]} to {dates[-1]} on: " + "; ".join(environments) + ".",
        "",
        markdown,
        "",
        *links,
    ])
    if arguments.readme:
        rewrite_readme(arguments.readme, section)
    print(markdown)
    print(f"bench.report: wrote {combined}, results.md and {len(images)} charts")
    return 0


if __name__ == "__main__":
    sys.exit(main())
