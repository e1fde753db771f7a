"""Two tenants, one chat limit: a small batch's time alone and beside another tenant's large batch.

Simulator and stack as batch_throughput's (1,200 requests/min, latency median 0.8 s, 6 workers of 10).
Tenant "small" runs a 5-line batch alone (after a first one, which starts the functions); then tenant
"large" starts a 1,500-line batch (20 s in, its lines fill the work queue) and "small" runs the same
5-line batch again. Both timed from the create call to `completed`. Ours is the small batch beside the
large one; the baseline its time alone: the ratio is what the large batch costs the small one (the
target: under 3×). Also: the large batch's requests per minute while the small one ran (its share then
is half the limit, for as long as the small tenant has work waiting), its total time, and lines lost or
answered twice (none).
"""

import collections
import dataclasses
import json
import time

import httpx

from local.stack import LocalStack

from .batch_throughput import LIMIT_RPM, PARAMETERS, SIMULATOR, _answered_twice, _lines, _read
from .common import row, run_metadata

LARGE, SMALL = 1_500, 5
LARGE_RUNNING_SECONDS = 20.0  # the small batch starts this long after the large one
TARGET_RATIO = 3.0
TIMEOUT = 300
TIMEOUT_SECONDS = 600  # for `python -m bench`


class Tenant:
    def __init__(self, stack: LocalStack, name: str):
        _, key = stack.create_tenant(name=name)
        self.api = httpx.Client(
            base_url=stack.api_url, headers={"Authorization": f"Bearer {key}"}, timeout=60
        )

    def create(self, lines: list[dict]) -> tuple[str, float]:
        content = "".join(json.dumps(line) + "\n" for line in lines).encode()
        upload = self.api.post("/v1/files", files={"file": ("in.jsonl", content)}, data={"purpose": "batch"})
        started = time.time()
        batch = self.api.post("/v1/batches", json={"input_file_id": upload.json()["id"]}).json()
        return batch["id"], started

    def wait(self, batch_id: str, started: float) -> tuple[dict, float]:
        while True:
            batch = self.api.get(f"/v1/batches/{batch_id}").json()
            if (
                batch["status"] in ("completed", "failed", "expired", "cancelled")
                or time.time() > started + TIMEOUT
            ):
                return batch, time.time() - started
            time.sleep(0.1)

    def run(self, lines: list[dict]) -> tuple[dict, float]:
        return self.wait(*self.create(lines))


def _small_lines(prefix: str) -> list[dict]:
    return [
        {
            "custom_id": f"{prefix}-{i}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {
                "model": "grok-4",
                "messages": [{"role": "user", "content": f"{prefix} {i}"}],
                "max_tokens": 60,
            },
        }
        for i in range(SMALL)
    ]


def _ok_per_minute(stack: LocalStack, start: float, end: float) -> float | None:
    ok = [c.time for c in stack.simulator.calls if c.path == "/v1/chat/completions" and c.status == 200]
    inside = [t for t in ok if start <= t <= end]
    return len(inside) / (end - start) * 60 if end > start else None


def _phases(stack: LocalStack, prefix: str, started: float, seconds: float) -> dict:
    """Where a small batch's time went: to its first xAI call (upload, ingest, queue, limiter), among its
    calls, and after its last one (answers, results, finalizer)."""
    times = sorted(
        c.time
        for c in stack.simulator.calls
        if c.path == "/v1/chat/completions" and c.body and c.body["messages"][0]["content"].startswith(prefix)
    )
    if not times:
        return {}
    return {
        "to_first_call": times[0] - started,
        "first_to_last_call": times[-1] - times[0],
        "after_last_call": started + seconds - times[-1],
    }


def run() -> dict:
    stack = LocalStack(parameters=PARAMETERS, simulator=SIMULATOR).start()
    try:
        stack.simulator.reset()
        stack.simulator.update(**dataclasses.asdict(SIMULATOR))
        small, large = Tenant(stack, "small"), Tenant(stack, "large")
        small.run(_small_lines("first"))  # starts the functions: the time alone is a warm one
        alone_started = time.time()
        alone_batch, alone = small.run(_small_lines("alone"))

        large_id, large_started = large.create(_lines(LARGE))
        time.sleep(LARGE_RUNNING_SECONDS)
        beside_started = time.time()
        beside_batch, beside = small.run(_small_lines("beside"))
        phases = {
            "alone": _phases(stack, "alone", alone_started, alone),
            "beside": _phases(stack, "beside", beside_started, beside),
        }
        large_rate = _ok_per_minute(stack, beside_started, time.time())
        large_batch, large_seconds = large.wait(large_id, large_started)

        output = _read(large_batch.get("output_file_url"))
        errors = _read(large_batch.get("error_file_url"))
        seen = collections.Counter(line["custom_id"] for line in output + errors)
        figures = {
            "small_alone_seconds": alone,
            "small_beside_seconds": beside,
            "ratio": beside / alone,
            "small_statuses": [alone_batch["status"], beside_batch["status"]],
            "large_status": large_batch["status"],
            "large_seconds": large_seconds,
            "large_ok": len(output),
            "large_error_lines": len(errors),
            "large_lost": LARGE - len(seen),
            "duplicates": _answered_twice(stack.simulator) + sum(n - 1 for n in seen.values() if n > 1),
            "per_minute_while_small_ran": large_rate,
            "rate_limited": stack.simulator.count("/v1/chat/completions", status=429),
            "small_phases": phases,
        }
    finally:
        stack.stop()
    met = (
        figures["ratio"] < TARGET_RATIO
        and figures["large_status"] == "completed"
        and figures["large_lost"] == 0
        and figures["duplicates"] == 0
    )
    rows = [
        row(f"small batch ({SMALL} lines) beside a {LARGE}-line batch of another tenant (baseline: alone)",
            beside, alone, "s", f"< {TARGET_RATIO:g}× alone", figures["ratio"] < TARGET_RATIO),
        row("small batch: create to its first xAI call, beside (baseline: alone)",
            phases["beside"].get("to_first_call"), phases["alone"].get("to_first_call"), "s"),
        row("small batch: its last xAI call to completed, beside (baseline: alone)",
            phases["beside"].get("after_last_call"), phases["alone"].get("after_last_call"), "s"),
        row(f"large batch: requests/min while the small one ran (limit {LIMIT_RPM})",
            figures["per_minute_while_small_ran"], None, "/min", compare=False),
        row(f"large batch: wall time, {LARGE} requests", large_seconds, None, "s", compare=False),
        row("large batch: lost, answered twice", figures["large_lost"] + figures["duplicates"], None,
            "requests", "0", figures["large_lost"] == 0 and figures["duplicates"] == 0, compare=False),
    ]  # fmt: skip
    return {
        **run_metadata(),
        "benchmark": "fairness",
        "limit_rpm": LIMIT_RPM,
        "parameters": PARAMETERS,
        "simulator": dataclasses.asdict(SIMULATOR),
        "large_lines": LARGE,
        "small_lines": SMALL,
        "large_running_seconds": LARGE_RUNNING_SECONDS,
        "figures": figures,
        "met": met,
        "rows": rows,
    }


def report(result: dict) -> str:
    f = result["figures"]
    return (
        f"Fairness: a {result['small_lines']}-line batch took {f['small_alone_seconds']:.1f} s alone and "
        f"{f['small_beside_seconds']:.1f} s ({f['ratio']:.2f}×) started "
        f"{result['large_running_seconds']:.0f} s into another tenant's {result['large_lines']}-line batch "
        f"under a {result['limit_rpm']}/min limit; the large batch ran "
        f"{f['per_minute_while_small_ran'] or 0:.0f} requests/min meanwhile and "
        f"{f['large_status']} in {f['large_seconds']:.0f} s ({f['large_ok']} ok, {f['large_lost']} lost, "
        f"{f['duplicates']} answered twice), targets {'met' if result['met'] else 'missed'}.\n"
    )
