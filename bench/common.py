"""What every benchmark shares: repeated runs, medians with their spread, ratios to the peers,
a progress line per figure, and a JSON record of everything measured.

A figure is the median of ``runs`` runs (each bounded in time and count by the benchmark);
its spread is the lowest and highest run. Ratios compare figures measured in the same run of
the same program, which is all that is meaningful under Wine.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Literal

Better = Literal["higher", "lower"]


def under_wine() -> bool:
    """True when this Windows python runs under Wine (ntdll exports ``wine_get_version``)."""
    if sys.platform != "win32":
        return False
    import ctypes

    return hasattr(ctypes.WinDLL("ntdll"), "wine_get_version")


def environment() -> dict[str, str]:
    """Where the figures come from: OS, Wine, python, machine, date."""
    described = {
        "platform": sys.platform,
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "machine": platform.machine(),
        "cpus": str(os.cpu_count()),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
    }
    for module in ("trio", "cffi"):
        if module in sys.modules:
            described[module] = str(getattr(sys.modules[module], "__version__", "?"))
    if "ntdll.speedups" in sys.modules:
        described["ntafd implementation"] = str(
            getattr(sys.modules["ntdll.speedups"], "IMPLEMENTATION", "?"))
    if sys.platform == "win32" and under_wine():
        import ctypes

        version = ctypes.WinDLL("ntdll").wine_get_version
        version.restype = ctypes.c_char_p
        described["wine"] = version().decode()
    return described


@dataclass
class Figure:
    """One measured quantity for one subject: the values of every run."""

    benchmark: str
    case: str
    subject: str
    unit: str
    better: Better
    values: list[float] = field(default_factory=list)
    note: str = ""
    reference: bool = False
    """Shown for context, not a peer: no ratio is taken to or from it."""

    @property
    def median(self) -> float:
        return statistics.median(self.values) if self.values else float("nan")

    @property
    def spread(self) -> tuple[float, float]:
        return (min(self.values), max(self.values)) if self.values else (float("nan"),) * 2

    def text(self) -> str:
        if not self.values:
            return f"{self.subject}: n/a ({self.note})"
        low, high = self.spread
        return (f"{self.subject}: {self.median:.4g} {self.unit} "
                f"[{low:.4g}..{high:.4g}, {len(self.values)} runs]"
                + (f" ({self.note})" if self.note else ""))


class Results:
    """Collects figures, prints progress, ratios and (optionally) a JSON file."""

    def __init__(self, title: str) -> None:
        self.title = title
        self.figures: list[Figure] = []
        print(f"# {title}: {', '.join(f'{k}={v}' for k, v in environment().items())}",
              flush=True)

    def measure(self, benchmark: str, case: str, subject: str, unit: str, better: Better,
                run: Callable[[], float], runs: int, note: str = "",
                reference: bool = False) -> Figure:
        """Call ``run`` (one bounded run returning its figure) ``runs`` times."""
        figure = Figure(benchmark, case, subject, unit, better, note=note, reference=reference)
        for _ in range(runs):
            figure.values.append(run())
        self.figures.append(figure)
        print(f"  {benchmark} / {case} / {figure.text()}", flush=True)
        return figure

    def record(self, benchmark: str, case: str, subject: str, unit: str, better: Better,
               values: list[float], note: str = "", reference: bool = False) -> Figure:
        """Add a figure whose runs were measured alongside another's."""
        figure = Figure(benchmark, case, subject, unit, better, list(values), note, reference)
        self.figures.append(figure)
        print(f"  {benchmark} / {case} / {figure.text()}", flush=True)
        return figure

    def unavailable(self, benchmark: str, case: str, subject: str, unit: str, better: Better,
                    why: str) -> Figure:
        figure = Figure(benchmark, case, subject, unit, better, note=why)
        self.figures.append(figure)
        print(f"  {benchmark} / {case} / {figure.text()}", flush=True)
        return figure

    def ratios(self, benchmark: str, case: str, ours: str,
               peers: Sequence[str] | None = None) -> dict[str, float]:
        """``ours`` relative to each peer (default: every other subject) of one case, as
        "times better" (>1 = ours is better), printed."""
        figures = {f.subject: f for f in self.figures
                   if f.benchmark == benchmark and f.case == case and f.values
                   and not f.reference}
        mine = figures.get(ours)
        result: dict[str, float] = {}
        if mine is None:
            return result
        for subject, other in figures.items():
            if subject == ours or (peers is not None and subject not in peers):
                continue
            if mine.better == "higher":
                result[subject] = mine.median / other.median
            else:
                result[subject] = other.median / mine.median
            print(f"  ratio {benchmark} / {case}: {ours} is {result[subject]:.2f}x "
                  f"{subject} ({mine.better} is better)", flush=True)
        return result

    def to_json(self) -> dict[str, object]:
        return {
            "title": self.title,
            "environment": environment(),
            "figures": [dict(asdict(f), median=f.median, spread=list(f.spread))
                        for f in self.figures],
        }

    def write(self, path: str | None) -> None:
        if path:
            with open(path, "w", encoding="utf-8") as output:
                json.dump(self.to_json(), output, indent=2)
            print(f"# results written to {path}", flush=True)


def bounded(seconds: float, count: int) -> Callable[[int], bool]:
    """A loop condition: go on while fewer than ``count`` iterations and ``seconds`` passed."""
    deadline = time.perf_counter() + seconds

    def more(done: int) -> bool:
        return done < count and time.perf_counter() < deadline

    return more
