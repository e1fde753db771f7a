"""python -m bench [name ...]: run the benchmarks (all, or the named ones), write their JSON under
bench/results/, then write bench/results/SUMMARY.md from the latest result of every benchmark and
print it.

Each benchmark runs in its own interpreter (`python -m bench --one NAME`): a LocalStack sets
process-wide environment and the layer caches its AWS clients, so two stacks cannot share a process.
"""

import json
import subprocess
import sys
import time

from . import batch_throughput, cold_start, cost, fairness, many_jobs, poll_callbacks, poll_efficiency
from .common import RESULTS, ROOT, write_json

# cost prices what the others counted, so it runs last.
BENCHMARKS = {
    "cold_start": cold_start,
    "poll_efficiency": poll_efficiency,
    "poll_callbacks": poll_callbacks,
    "many_jobs": many_jobs,
    "batch_throughput": batch_throughput,
    "fairness": fairness,
    "cost": cost,
}
ONE_TIMEOUT_SECONDS = 600  # a benchmark that takes longer (or its TIMEOUT_SECONDS) is stopped and failed


def _figure(value, unit: str) -> str:
    if value is None:
        return "—"
    if unit == "USD":
        return f"${value:,.4g}" if value < 1000 else f"${value:,.0f}"
    return f"{value:.0f} {unit}" if unit == "ms" else f"{value:.2f} {unit}"


def _ratio(value) -> str:
    if value is None:
        return "—"
    return f"{value:.2f}×" if value >= 0.1 else f"{value:.2g}×"


def summary() -> str:
    """A markdown table of every benchmark's latest result, one line per measured item."""
    results = []
    for name in BENCHMARKS:
        path = RESULTS / f"{name}.json"
        if path.exists():
            results.append((name, json.loads(path.read_text())))
    lines = ["# xjobs benchmarks", ""]
    for name, result in results:
        dirty = result.get("uncommitted_files")
        lines.append(
            f"- `{name}`: {result['date']}, commit {result['commit'] or 'unknown'}"
            + (f" + {dirty} uncommitted files" if dirty else "")
            + f", {result['machine']}, {result['cpu_count']} CPUs, Python {result['python']}"
        )
    lines += [
        "",
        "| benchmark | item | ours | baseline | ours / baseline | target | result |",
        "|---|---|---:|---:|---:|---|---|",
    ]
    for name, result in results:
        for r in result["rows"]:
            ratio = _ratio(r["ratio"])
            verdict = "" if r["met"] is None else ("met" if r["met"] else "missed")
            ours, baseline = _figure(r["ours"], r["unit"]), _figure(r["baseline"], r["unit"])
            lines.append(
                f"| {name} | {r['item']} | {ours} | {baseline} | {ratio} | {r['target'] or '—'} | {verdict} |"
            )
    lines.append("")
    for name, result in results:
        lines.append(BENCHMARKS[name].report(result))
    return "\n".join(lines).rstrip() + "\n"


def run_one(name: str) -> int:
    """In the benchmark's own interpreter: run it and write its JSON."""
    path = write_json(name, BENCHMARKS[name].run())
    print(f"  wrote {path.relative_to(ROOT)}", flush=True)
    return 0


def main(argv: list[str]) -> int:
    if argv[:1] == ["--one"] and len(argv) == 2 and argv[1] in BENCHMARKS:
        return run_one(argv[1])
    unknown = [name for name in argv if name not in BENCHMARKS]
    if unknown:
        print(f"unknown benchmark(s) {', '.join(unknown)}; choose from {', '.join(BENCHMARKS)}")
        return 2
    failed = []
    for name in argv or list(BENCHMARKS):
        started = time.time()
        print(f"running {name}...", flush=True)
        try:
            code = subprocess.run(
                [sys.executable, "-m", "bench", "--one", name],
                cwd=ROOT,
                timeout=getattr(BENCHMARKS[name], "TIMEOUT_SECONDS", ONE_TIMEOUT_SECONDS),
            ).returncode
        except subprocess.TimeoutExpired:
            code = "timeout"
        print(f"  {time.time() - started:.0f} s" + ("" if code == 0 else f", FAILED ({code})"), flush=True)
        if code != 0:
            failed.append(name)
    text = summary()
    (RESULTS / "SUMMARY.md").write_text(text)
    print()
    print(text, end="")
    if failed:
        print(f"\nfailed (SUMMARY.md shows their previous result, if any): {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
