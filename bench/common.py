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

    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10).stdout
        except (OSError, subprocess.SubprocessError):
            return ""

    commit = git("rev-parse", "--short", "HEAD").strip()
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": platform.platform(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "commit": commit or None,
        # Files that differ from that commit when the benchmark ran (the figures are of the work tree).
        "uncommitted_files": len(git("status", "--porcelain", "--untracked-files=no").splitlines()),
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


def percentile(values: list[float], pct: int) -> float | None:
    """The pct-th percentile (1-99) of the values, None for an empty list."""
    if len(values) < 2:
        return values[0] if values else None
    return statistics.quantiles(values, n=100, method="inclusive")[pct - 1]


def memory_kb() -> dict[str, int]:
    """This process's resident memory now (VmRSS) and its high-water mark (VmHWM), in kB."""
    with open("/proc/self/status") as status:
        fields = dict(line.split(":", 1) for line in status if line.startswith(("VmRSS", "VmHWM")))
    return {name: int(value.split()[0]) for name, value in fields.items()}


def observer(stack, service: str, resource: bool = False):
    """A client (or resource) of the stack's AWS emulator whose requests the emulator counts apart from
    the stack's own (see local/aws_emulator.py), for a benchmark reading the stack's state."""
    from botocore.config import Config

    from local.aws_emulator import OBSERVER

    config = Config(user_agent_extra=OBSERVER, max_pool_connections=20)
    make = stack.session.resource if resource else stack.session.client
    return make(service, endpoint_url=stack.aws_endpoint, config=config)


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
