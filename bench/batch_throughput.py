"""Chat-batch throughput under the account's rate limit, beside the xAI docs' naive recipe.

Simulator: 1,200 requests/min and 200,000 tokens/min, latency lognormal with median 0.8 s. Work:
1,500 chat requests of about 200 characters, run once clean and once with 2% 500s and 1% 503s.

Ours: a batch on the local stack (upload through the API, ingest, SQS workers, finalizer), timed
from the create call to `completed`. Baseline, against a fresh simulator with the same settings, in a
process of its own while ours runs (the clean and the faulty one at once): AsyncOpenAI with
`asyncio.Semaphore(10)` and up to 3 tries with `2**attempt` s sleeps on 429, as the xAI docs write
it. For both: wall time, successful requests per minute as a share of the limit, the
429s the simulator answered, lost requests (no result at the end) and duplicates (a request xAI
answered 200 more than once).

Wrong limits: the same simulator (as xAI: per-second limits, 429s with no Retry-After and no
x-ratelimit-* headers) under a stack configured 1.5× too high (1,800/min) and, separately, 2× too
low (600/min), each with 3,000 requests: the share of the true limit in the minute after the first
(the adaptive rate has had its minute to find the limit), 429s per request, lost and paid twice.
"""

import asyncio
import collections
import dataclasses
import json
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor

import httpx

from local.stack import LocalStack
from local.xai_simulator import SimulatorConfig, XaiSimulator

from . import cost
from .common import observer, row, run_metadata

REQUESTS = 1_500
LIMIT_RPM = 1_200
SIMULATOR = SimulatorConfig(
    api_key="bench-batch",
    requests_per_minute=LIMIT_RPM,
    tokens_per_minute=200_000,
    chat_latency_median=0.8,
    chat_latency_sigma=0.5,
    random_seed=11,
)
FAULTS = {"error_500_rate": 0.02, "error_503_rate": 0.01}
# In flight ≈ 3 × rate × median latency (README, Tuning): 20/s × 0.8 s × 3 ≈ 6 workers × 10 requests.
PARAMETERS = {
    "ChatRequestsPerMinute": str(LIMIT_RPM),
    "ChatTokensPerMinute": "200000",
    "BatchWorkerConcurrency": "6",
    "BatchWorkerBatchSize": "10",
    "BatchWorkerBatchingWindowSeconds": "0",
    "BatchWorkVisibilitySeconds": "60",
}
TARGET_SHARE = 0.90
TARGET_429_SHARE = 0.05
WRONG_LIMITS = {"limit 1.5x too high": 1_800, "limit 2x too low": 600}
WRONG_LIMIT_REQUESTS = 3_000
WRONG_TARGET_SHARE = 0.95
WRONG_TARGET_429_SHARE = 0.02
MEASURED_FROM, MEASURED_SECONDS = 60.0, 60.0  # the minute after the first xAI call's first minute
TIMEOUT = 600
TIMEOUT_SECONDS = 1500  # for `python -m bench`: two 1,500-request runs and two 3,000-request runs
BASELINE_CONCURRENCY = 10
BASELINE_TRIES = 3


def _prompt(i: int) -> str:
    """About 200 characters, unique per request so the simulator's log tells requests apart."""
    return f"[{i:05d}] " + ("Summarise the trade-offs of serverless queues for bulk chat work. " * 3)[:192]


def _lines(requests: int = REQUESTS) -> list[dict]:
    return [
        {
            "custom_id": f"req-{i}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {
                "model": "grok-4",
                "messages": [{"role": "user", "content": _prompt(i)}],
                "max_tokens": 60,
            },
        }
        for i in range(requests)
    ]


def _answered_twice(sim: XaiSimulator) -> int:
    answered = collections.Counter(
        c.body["messages"][0]["content"]
        for c in sim.calls
        if c.path == "/v1/chat/completions" and c.status == 200 and c.body
    )
    return sum(n - 1 for n in answered.values() if n > 1)


def _figures(sim: XaiSimulator, seconds: float, succeeded: int, lost: int) -> dict:
    calls = sim.count("/v1/chat/completions")
    limited = sim.count("/v1/chat/completions", status=429)
    times = [c.time for c in sim.calls if c.path == "/v1/chat/completions"]
    dispatching = max(times) - min(times) if len(times) > 1 else None
    return {
        # From the first xAI call to the last: the rate while requests flow, without the set-up
        # (upload, ingest start) and the finalizer around it.
        "dispatch_seconds": dispatching,
        "dispatch_share_of_limit": succeeded / dispatching * 60 / LIMIT_RPM if dispatching else None,
        "seconds": seconds,
        "succeeded": succeeded,
        "per_minute": succeeded / seconds * 60,
        "share_of_limit": succeeded / seconds * 60 / LIMIT_RPM,
        "xai_calls": calls,
        "rate_limited": limited,
        "rate_limited_share": limited / REQUESTS,
        "lost": lost,
        "duplicates": _answered_twice(sim),
    }


# -- ours ----------------------------------------------------------------------------------------------


def run_ours(stack: LocalStack, faults: dict, requests: int = REQUESTS) -> dict:
    stack.simulator.reset()
    stack.simulator.update(**dataclasses.asdict(SIMULATOR) | faults)
    meter = cost.Meter(stack)
    api = httpx.Client(
        base_url=stack.api_url, headers={"Authorization": f"Bearer {stack.api_key}"}, timeout=60
    )
    content = "".join(json.dumps(line) + "\n" for line in _lines(requests)).encode()
    upload = api.post("/v1/files", files={"file": ("input.jsonl", content)}, data={"purpose": "batch"}).json()
    started = time.time()
    batch = api.post("/v1/batches", json={"input_file_id": upload["id"]}).json()
    while batch["status"] not in ("completed", "failed", "expired", "cancelled"):
        if time.time() - started > TIMEOUT:
            break
        time.sleep(0.5)
        batch = api.get(f"/v1/batches/{batch['id']}").json()
    seconds = time.time() - started
    output = _read(batch.get("output_file_url"))
    errors = _read(batch.get("error_file_url"))
    seen = collections.Counter(line["custom_id"] for line in output + errors)
    figures = _figures(stack.simulator, seconds, len(output), requests - len(seen))
    figures["rate_limited_share"] = figures["rate_limited"] / requests
    figures["status"] = batch["status"]
    figures["error_lines"] = len(errors)
    figures["result_lines_repeated"] = sum(n - 1 for n in seen.values() if n > 1)
    figures["duplicates"] += figures["result_lines_repeated"]
    _settle(stack)
    figures["cost_counts"] = meter.counts()
    figures["cost_work"] = cost.chat_work(REQUESTS, (line["response"]["body"] for line in output))
    return figures


def _settle(stack: LocalStack, timeout: float = 30) -> None:
    """Wait until the work queue is empty and no worker runs, so the counts include all the batch's work."""
    sqs = observer(stack, "sqs")
    queue_url = stack.resources.physical["WorkQueue"]
    deadline = time.time() + timeout
    while time.time() < deadline:
        attributes = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["All"])["Attributes"]
        queued = int(attributes["ApproximateNumberOfMessages"]) + int(
            attributes["ApproximateNumberOfMessagesNotVisible"]
        )
        if not queued and not any(stats.running for stats in stack.runtime.stats.values()):
            return
        time.sleep(0.5)


def _read(url: str | None) -> list[dict]:
    if not url:
        return []
    return [json.loads(line) for line in httpx.get(url, timeout=60).text.splitlines() if line]


def run_wrong_limit(configured_rpm: int) -> dict:
    """A stack configured with the wrong chat limit, against the faithful simulator's true one."""
    parameters = PARAMETERS | {"ChatRequestsPerMinute": str(configured_rpm)}
    stack = LocalStack(parameters=parameters, simulator=SIMULATOR).start()
    try:
        figures = run_ours(stack, {}, WRONG_LIMIT_REQUESTS)
        figures.pop("cost_counts")
        figures.pop("cost_work")
        ok = sorted(
            c.time for c in stack.simulator.calls if c.path == "/v1/chat/completions" and c.status == 200
        )
    finally:
        stack.stop()
    start = ok[0] + MEASURED_FROM if ok else 0
    in_minute = sum(1 for t in ok if start <= t < start + MEASURED_SECONDS)
    figures["configured_rpm"] = configured_rpm
    figures["share_after_first_minute"] = in_minute / MEASURED_SECONDS * 60 / LIMIT_RPM
    figures["saturated_minute"] = bool(ok) and ok[-1] >= start + MEASURED_SECONDS
    return figures


def _met_wrong(figures: dict) -> bool:
    return (
        figures["share_after_first_minute"] >= WRONG_TARGET_SHARE
        and figures["rate_limited_share"] <= WRONG_TARGET_429_SHARE
        and figures["lost"] == 0
        and figures["duplicates"] == 0
    )


# -- baseline: the xAI docs' recipe ---------------------------------------------------------------------


def run_baseline(faults: dict) -> dict:
    from openai import AsyncOpenAI, RateLimitError

    sim = XaiSimulator(dataclasses.replace(SIMULATOR, **faults)).start()
    try:

        async def main() -> list:
            client = AsyncOpenAI(base_url=sim.base_url, api_key=SIMULATOR.api_key, max_retries=0, timeout=60)
            semaphore = asyncio.Semaphore(BASELINE_CONCURRENCY)

            async def one(line: dict):
                async with semaphore:
                    for attempt in range(BASELINE_TRIES):
                        try:
                            return await client.chat.completions.create(**line["body"])
                        except RateLimitError:
                            if attempt == BASELINE_TRIES - 1:
                                return None
                            await asyncio.sleep(2**attempt)
                        except Exception:
                            return None  # the recipe retries 429s only

            try:
                return await asyncio.gather(*(one(line) for line in _lines()))
            finally:
                await client.close()

        started = time.time()
        replies = asyncio.run(main())
        seconds = time.time() - started
        succeeded = sum(1 for r in replies if r is not None)
        return _figures(sim, seconds, succeeded, REQUESTS - succeeded)
    finally:
        sim.stop()


# -- both ----------------------------------------------------------------------------------------------


def _met(figures: dict) -> bool:
    return (
        figures["share_of_limit"] >= TARGET_SHARE
        and figures["rate_limited_share"] <= TARGET_429_SHARE
        and figures["lost"] == 0
        and figures["duplicates"] == 0
    )


def run() -> dict:
    settings = {"clean": {}, "faults": FAULTS}
    measured: dict[str, dict] = {}
    # The baselines run meanwhile, each in its own process: they share no interpreter lock with the
    # stack, and their pace is set by their semaphore and the simulator's latency, not by CPU.
    spawn = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=len(settings), mp_context=spawn) as pool:
        baselines = {name: pool.submit(run_baseline, faults) for name, faults in settings.items()}
        stack = LocalStack(parameters=PARAMETERS, simulator=SIMULATOR).start()
        try:
            for name, faults in settings.items():
                print(f"  {name}: ours...", flush=True)
                measured[name] = {"ours": run_ours(stack, faults)}
        finally:
            stack.stop()
        for name in settings:
            measured[name]["baseline"] = baselines[name].result()
    wrong = {}
    for name, configured in WRONG_LIMITS.items():
        print(f"  {name}: ours...", flush=True)
        # A stack of its own needs a process of its own (a LocalStack sets process-wide state).
        with ProcessPoolExecutor(max_workers=1, mp_context=spawn) as pool:
            wrong[name] = pool.submit(run_wrong_limit, configured).result()
    clean = measured["clean"]["ours"]
    counts, work = clean.pop("cost_counts"), clean.pop("cost_work")
    measured["faults"]["ours"].pop("cost_counts")
    measured["faults"]["ours"].pop("cost_work")
    rows = []
    for name in settings:
        ours, base = measured[name]["ours"], measured[name]["baseline"]
        met = _met(ours)
        rows += [
            row(f"{name}: successful requests/min ÷ limit", ours["share_of_limit"], base["share_of_limit"],
                "×", f"≥ {TARGET_SHARE}", met),
            row(f"{name}: the same from the first xAI call to the last", ours["dispatch_share_of_limit"],
                base["dispatch_share_of_limit"], "×"),
            row(f"{name}: wall time, {REQUESTS} requests", ours["seconds"], base["seconds"], "s"),
            row(f"{name}: 429s answered ÷ requests", ours["rate_limited_share"], base["rate_limited_share"],
                "×", f"≤ {TARGET_429_SHARE}", ours["rate_limited_share"] <= TARGET_429_SHARE),
            row(f"{name}: lost requests", ours["lost"], base["lost"], "requests", "0", ours["lost"] == 0,
                compare=False),
            row(f"{name}: duplicates", ours["duplicates"], base["duplicates"], "requests", "0",
                ours["duplicates"] == 0, compare=False),
        ]  # fmt: skip
    for name, ours in wrong.items():
        met = _met_wrong(ours)
        rows += [
            row(f"{name} ({ours['configured_rpm']}/min configured): share of the true limit after the "
                "first minute", ours["share_after_first_minute"], None, "×", f"≥ {WRONG_TARGET_SHARE}",
                ours["share_after_first_minute"] >= WRONG_TARGET_SHARE, compare=False),
            row(f"{name}: 429s answered ÷ requests", ours["rate_limited_share"], None, "×",
                f"≤ {WRONG_TARGET_429_SHARE}", ours["rate_limited_share"] <= WRONG_TARGET_429_SHARE,
                compare=False),
            row(f"{name}: lost, paid twice", ours["lost"] + ours["duplicates"], None, "requests", "0",
                ours["lost"] == 0 and ours["duplicates"] == 0, compare=False),
            row(f"{name}: wall time, {WRONG_LIMIT_REQUESTS} requests", ours["seconds"], None, "s",
                compare=False),
        ]  # fmt: skip
        measured[name] = {"ours": ours, "met": met}
    return {
        **run_metadata(),
        "benchmark": "batch_throughput",
        "requests": REQUESTS,
        "limit_rpm": LIMIT_RPM,
        "parameters": PARAMETERS,
        "simulator": dataclasses.asdict(SIMULATOR) | {"faults": FAULTS},
        **measured,
        "targets": {name: _met(measured[name]["ours"]) for name in settings}
        | {name: _met_wrong(wrong[name]) for name in wrong},
        "rows": rows,
        "cost_counts": counts,  # what the clean run did on AWS, priced by the cost benchmark
        "cost_work": work,
    }


def report(result: dict) -> str:
    parts = []
    for name, met in result["targets"].items():
        ours, base = result[name]["ours"], result[name].get("baseline")
        if base is None:
            parts.append(
                f"{name} ({ours['configured_rpm']}/min configured): "
                f"{ours['share_after_first_minute']:.2f} of the true limit after the first minute, "
                f"{ours['rate_limited_share']:.1%} 429s, "
                f"{ours['lost']} lost, {ours['duplicates']} paid twice, targets {'met' if met else 'missed'}"
            )
            continue
        verdict = "met" if met else "missed"
        parts.append(
            f"{name}: ours {ours['succeeded']} ok / {ours['error_lines']} error lines "
            f"in {ours['seconds']:.0f} s ({ours['per_minute']:.0f}/min, {ours['rate_limited']} 429s), "
            f"targets {verdict}; baseline {base['succeeded']} ok in {base['seconds']:.0f} s "
            f"({base['per_minute']:.0f}/min, {base['rate_limited']} 429s, {base['lost']} lost)"
        )
    return (
        f"Batch throughput: {result['requests']} chat requests against a {result['limit_rpm']}/min limit "
        f"(latency median 0.8 s). " + "; ".join(parts) + ".\n"
    )
