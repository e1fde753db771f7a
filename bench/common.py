"""What the benchmarks share: run metadata, simple statistics, result rows and files."""

import datetime
import json
import os
import platform
import statistics
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"


def run_metadata() -> dict:
    """When, where and on which commit a benchmark ran."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": platform.platform(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "commit": commit or None,
    }


def summarize(values: list[float]) -> dict:
    """Mean, median and 95th percentile (None for an empty list)."""
    if not values:
        return {"n": 0, "mean": None, "median": None, "p95": None}
    p95 = statistics.quantiles(values, n=20, method="inclusive")[18] if len(values) > 1 else values[0]
    return {
        "n": len(values),
        "mean": statistics.fmean(values),
        "median": statistics.median(values),
        "p95": p95,
    }


def ratio(ours: float | None, baseline: float | None) -> float | None:
    if ours is None or not baseline:
        return None
    return ours / baseline


def row(
    item: str, ours, baseline, unit: str, target: str = "", met: bool | None = None, compare: bool = True
) -> dict:
    """One line of the summary: our figure, the baseline's, ours/baseline (unless the two are context,
    not a comparison), and the target if any."""
    return {
        "item": item,
        "ours": ours,
        "baseline": baseline,
        "unit": unit,
        "ratio": ratio(ours, baseline) if compare else None,
        "target": target,
        "met": met,
    }


def write_json(name: str, result: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    return path
