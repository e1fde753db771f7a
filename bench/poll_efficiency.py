"""Poll efficiency: xAI status calls per video job, and how late each job's end is noticed.

Ours: the local stack (template defaults for the poll waits) runs 50 video jobs submitted together over
its HTTP API. The job records are read from DynamoDB every 0.05 s (see _watch) to note when each turned
terminal. First, WARMUP_JOBS jobs of the same kind (other draws of the same distributions) teach the
stack how long such jobs take, as the jobs before them would in production (layers/common/xjobs/
durations.py); their calls are not counted.

Baseline, in the same run, in its own process while ours runs: the xAI docs' poller (submit,
then read the status every 5 s until done or failed, for at most 300 s), 50 of them at once in
threads, against a fresh simulator with the same configuration and seed, so the same 50 (duration,
failure) draws.

Our side also records what it did on AWS (bench/cost.py), which the cost benchmark prices.

Status calls are counted from each simulator's call log (GET /v1/videos/<request id>); a detection
delay is the time the end was noticed minus the time the simulator finished the job. To explain the
figures, each job also records when xAI got its submit and how long after that the first status call
came.
"""

import dataclasses
import json
import math
import multiprocessing
import os
import threading
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor

import httpx

from local.stack import LocalStack
from local.xai_simulator import SimulatorConfig, XaiSimulator
from xjobs import durations

from . import cost
from .common import observer, row, run_metadata, summarize

JOBS = 50
WARMUP_JOBS = 60
WARMUP_SEED = 1007
SIMULATOR = SimulatorConfig(
    api_key="bench",
    video_duration_median=20,
    video_duration_sigma=0.5,
    video_failure_rate=0.05,
    video_requests_per_second=0,  # the 50 submits go at once, for the stack and the baseline alike
    random_seed=7,
)
PARAMETERS = {"VideoRequestsPerSecond": "50"}  # the 50 submits are not spread over 50 s
VIDEO = {"prompt": "a paper boat drifting down a rainy street", "duration": 6}
TERMINAL = {"completed", "failed", "cancelled", "timed_out"}
MONITOR_INTERVAL = 0.05
FULL_READ_TICKS = 20  # every job's record is read once a second
OURS_TIMEOUT = 360  # seconds for all 50 jobs to end in the stack, from the last accepted submit
BASELINE_INTERVAL = 5
BASELINE_TIMEOUT = 300
TARGET_CALLS_RATIO = 0.75


def _job_figures(jobs: dict[str, dict], sim: XaiSimulator) -> list[dict]:
    """Per job, from the simulator's call log: status calls, detection delay and the timeline around them.

    `jobs` maps a job to {"request_id", "accepted_at" (optional), "seen_at" (None if never seen)}.
    """
    submitted: dict[str, float] = {}
    status_calls: dict[str, list[float]] = {}
    for call in sim.calls:
        if call.method == "POST" and call.path == "/v1/videos/generations" and call.request_id:
            submitted[call.request_id] = call.time
        elif call.method == "GET" and call.path.startswith("/v1/videos/") and call.request_id:
            status_calls.setdefault(call.request_id, []).append(call.time)

    figures = []
    for job, known in jobs.items():
        request_id, seen = known.get("request_id"), known.get("seen_at")
        finished = sim.finish_at(request_id) if request_id else None
        sent = submitted.get(request_id)
        calls = status_calls.get(request_id, [])
        figures.append(
            {
                "job": job,
                "xai_request_id": request_id,
                "status_calls": len(calls),
                "detection_delay_s": seen - finished if seen is not None and finished is not None else None,
                "xai_duration_s": finished - sent if finished is not None and sent is not None else None,
                "xai_submit_after_accept_s": (
                    sent - known["accepted_at"] if sent is not None and "accepted_at" in known else None
                ),
                "first_status_call_after_submit_s": calls[0] - sent if calls and sent is not None else None,
                # Of the detection delay: the part after the status call that saw the end.
                "seen_after_last_status_call_s": seen - calls[-1] if calls and seen is not None else None,
            }
        )
    return figures


# -- ours ----------------------------------------------------------------------------------------------


def run_ours(
    parameters: dict[str, str],
    upstream_callbacks: bool,
    timeout: float,
    warmup_jobs: int,
    warmup_median_s: float | None,
) -> dict:
    """The 50 jobs on a local stack, after `warmup_jobs` others have ended (lasting `warmup_median_s`,
    if given, instead of the benchmark's median); `timeout` is how long to wait for the 50 after the
    last submit."""
    stack = LocalStack(
        parameters=parameters, simulator=SIMULATOR, upstream_callbacks=upstream_callbacks
    ).start()
    try:
        api = httpx.Client(
            base_url=stack.api_url, headers={"Authorization": f"Bearer {stack.api_key}"}, timeout=60
        )

        def submit(_) -> tuple[str, float]:
            reply = api.post("/v1/videos/generations", json=VIDEO)
            reply.raise_for_status()
            return reply.json()["id"], time.time()

        if warmup_jobs:
            stack.simulator.update(
                random_seed=WARMUP_SEED,
                video_duration_median=warmup_median_s or SIMULATOR.video_duration_median,
            )
            with ThreadPoolExecutor(max_workers=10) as pool:
                warmup = [job for job, _ in pool.map(submit, range(warmup_jobs))]
            _watch(stack, warmup, deadline=time.time() + timeout)
            _wait_for_executions(stack, deadline=time.time() + 30)
        learned = _learned(stack)
        stack.simulator.reset()  # forget the warm-up's calls
        stack.simulator.update(
            random_seed=SIMULATOR.random_seed, video_duration_median=SIMULATOR.video_duration_median
        )
        meter = cost.Meter(stack)
        invocations = {lid: s.count for lid, s in stack.runtime.stats.items()}
        errors = {lid: s.errors for lid, s in stack.runtime.stats.items()}
        started = time.time()
        with ThreadPoolExecutor(max_workers=10) as pool:
            accepted = dict(pool.map(submit, range(JOBS)))
        submit_window = time.time() - started

        items, monitor_busy = _watch(stack, list(accepted), deadline=time.time() + timeout)
        _wait_for_executions(stack, deadline=time.time() + 30)
        jobs = {
            job: {
                "request_id": items.get(job, {}).get("xai_request_id"),
                "accepted_at": accepted_at,
                "seen_at": items.get(job, {}).get("seen_at"),
            }
            for job, accepted_at in accepted.items()
        }
        figures = _job_figures(jobs, stack.simulator)
        for figure in figures:
            item = items.get(figure["job"], {})
            figure["status"] = item.get("status")
            # An upstream callback's arrival (news_at, ms), after the simulator finished the job.
            finished = stack.simulator.finish_at(item["xai_request_id"]) if "xai_request_id" in item else None
            news = item.get("news_at")
            figure["callback_after_finish_s"] = (
                float(news) / 1000 - finished if news is not None and finished is not None else None
            )
        values = stack.parameter_values
        completed = sum(1 for figure in figures if figure["status"] == "completed")
        return {
            "cost_counts": meter.counts(),
            "cost_work": cost.video_work(JOBS, {"480p": completed * VIDEO["duration"]}),
            "jobs": figures,
            "submit_window_s": submit_window,
            "monitor_busy_s": monitor_busy,
            "xai_submits": stack.simulator.count("/v1/videos/generations", method="POST"),
            "xai_rate_limited": stack.simulator.count(status=429),
            "parameters": {k: v for k, v in values.items() if k != "XaiBaseUrl"},
            "warmup_jobs": warmup_jobs,
            "learned_in_warmup": learned,
            "lambda_invocations": {
                lid: s.count - invocations.get(lid, 0) for lid, s in stack.runtime.stats.items()
            },
            "lambda_errors": {lid: s.errors - errors.get(lid, 0) for lid, s in stack.runtime.stats.items()},
        }
    finally:
        stack.stop()


def _watch(stack: LocalStack, job_ids: list[str], deadline: float) -> tuple[dict[str, dict], float]:
    """Read the jobs' records until all are terminal, noting when each was first seen terminal.

    Reading 50 records costs the in-process emulator about 0.1 s of CPU (and its DynamoDB requests
    are served one at a time), so reading them all every 0.05 s would slow the stack under test. Every
    job is read once a second; every MONITOR_INTERVAL only those whose xAI job has ended, the ones
    about to turn terminal. Returns the records and the seconds spent reading.
    """
    dynamodb = observer(stack, "dynamodb", resource=True)
    table = stack.resources.physical["JobsTable"]
    items: dict[str, dict] = {}
    waiting = set(job_ids)
    busy, tick = 0.0, 0
    while waiting and time.time() < deadline:
        started = time.time()
        due = sorted(waiting) if tick % FULL_READ_TICKS == 0 else _xai_ended(stack, items, waiting)
        for start in range(0, len(due), 100):
            reply = dynamodb.batch_get_item(
                RequestItems={
                    table: {
                        "Keys": [{"id": job} for job in due[start : start + 100]],
                        "ConsistentRead": True,
                        "ProjectionExpression": "id, #status, xai_request_id, news_at",
                        "ExpressionAttributeNames": {"#status": "status"},
                    }
                }
            )
            now = time.time()
            for item in reply["Responses"].get(table, []):
                items[item["id"]] = item
                if item["status"] in TERMINAL:
                    item["seen_at"] = now
                    waiting.discard(item["id"])
        busy += time.time() - started
        tick += 1
        time.sleep(MONITOR_INTERVAL)
    return items, busy


def _learned(stack: LocalStack) -> dict | None:
    """What the stack has learned of the jobs' profile: samples, median and sigma of its lognormal."""
    request = {"model": "grok-imagine-video", **VIDEO}  # the API fills in the default model
    profile = durations.profile({"kind": "video.generation", "request": json.dumps(request)})
    # Read before the measured run starts counting (cost.Meter): it is not the stack's own request.
    samples, fit = durations.Durations(stack.resources.physical["LimitsTable"]).read(profile)
    if fit is None:
        return None
    return {"samples": samples, "median_s": math.exp(fit.mean), "sigma": fit.stdev}


def _xai_ended(stack: LocalStack, items: dict[str, dict], waiting: set[str]) -> list[str]:
    now = time.time()
    ended = []
    for job in sorted(waiting):
        request_id = items.get(job, {}).get("xai_request_id")
        finished = stack.simulator.finish_at(request_id) if request_id else None
        if finished is not None and finished <= now:
            ended.append(job)
    return ended


def _wait_for_executions(stack: LocalStack, deadline: float) -> None:
    """Let the executions finish (Finish publishes to SNS) before the emulator is stopped."""
    sfn = observer(stack, "stepfunctions")
    machine = stack.resources.physical["JobStateMachine"]
    while time.time() < deadline:
        if not sfn.list_executions(stateMachineArn=machine, statusFilter="RUNNING")["executions"]:
            return
        time.sleep(0.5)


# -- baseline: the xAI docs' poller --------------------------------------------------------------------


def run_baseline() -> dict:
    sim = XaiSimulator(SIMULATOR).start()
    try:
        client = httpx.Client(
            base_url=sim.base_url,
            headers={"Authorization": f"Bearer {SIMULATOR.api_key}"},
            timeout=30,
            limits=httpx.Limits(max_connections=JOBS + 10),
        )
        jobs: dict[str, dict] = {f"baseline-{n}": {} for n in range(JOBS)}
        threads = [threading.Thread(target=_docs_poller, args=(client, known)) for known in jobs.values()]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(BASELINE_TIMEOUT + 60)
        return {
            "jobs": _job_figures(jobs, sim),
            "xai_submits": sim.count("/v1/videos/generations", method="POST"),
            "xai_rate_limited": sim.count(status=429),
        }
    finally:
        sim.stop()


def _docs_poller(client: httpx.Client, known: dict) -> None:
    """wait_for_completion(client, request_id, timeout=300, interval=5), as the docs write it."""
    reply = client.post("/videos/generations", json={"model": "grok-imagine-video", **VIDEO})
    reply.raise_for_status()
    known["request_id"] = request_id = reply.json()["request_id"]
    started = time.time()
    while time.time() - started < BASELINE_TIMEOUT:
        if client.get(f"/videos/{request_id}").status_code != 202:  # xAI answers pending with a 202
            known["seen_at"] = time.time()
            return
        time.sleep(BASELINE_INTERVAL)


# -- both ----------------------------------------------------------------------------------------------


def _stats(side: dict) -> dict:
    def of(field: str) -> dict:
        return summarize([j[field] for j in side["jobs"] if j[field] is not None])

    return {
        "status_calls_per_job": of("status_calls"),
        "detection_delay_s": of("detection_delay_s"),
        "first_status_call_after_submit_s": of("first_status_call_after_submit_s"),
        "seen_after_last_status_call_s": of("seen_after_last_status_call_s"),
        "xai_submit_after_accept_s": of("xai_submit_after_accept_s"),
        "undetected_jobs": sum(1 for j in side["jobs"] if j["detection_delay_s"] is None),
    }


def measure(
    parameters: dict[str, str],
    *,
    upstream_callbacks: bool = False,
    timeout: float = OURS_TIMEOUT,
    warmup_jobs: int = WARMUP_JOBS,
    warmup_median_s: float | None = None,
) -> dict:
    """Ours (a local stack with these settings) and, meanwhile, the baseline: the common part of a
    result."""
    # Loopback only: never let the stack pick up a real xAI endpoint from the shell.
    for name in ("XAI_BASE_URL", "XAI_API_KEY"):
        os.environ.pop(name, None)
    started = time.time()
    # Its own process, so it shares no interpreter lock with the stack.
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        baseline_run = pool.submit(run_baseline)
        ours = run_ours(parameters, upstream_callbacks, timeout, warmup_jobs, warmup_median_s)
        baseline = baseline_run.result()
    seconds = time.time() - started
    counts, work = ours.pop("cost_counts"), ours.pop("cost_work")
    return {
        **run_metadata(),
        "jobs": JOBS,
        "simulator": {k: v for k, v in dataclasses.asdict(SIMULATOR).items() if k != "api_key"},
        "baseline_poller": {"interval_s": BASELINE_INTERVAL, "timeout_s": BASELINE_TIMEOUT},
        "seconds": seconds,
        "ours": {**_stats(ours), **ours},
        "baseline": {**_stats(baseline), **baseline},
        "cost_counts": counts,  # what our side did on AWS, priced by the cost benchmark
        "cost_work": work,
    }


def complete(measured: dict) -> bool:
    """Whether every job's end was seen on both sides (a figure over fewer jobs meets no target)."""
    return not measured["ours"]["undetected_jobs"] and not measured["baseline"]["undetected_jobs"]


def stat_rows(measured: dict, stat: str, label: str, unit: str, target: str, met: bool) -> list[dict]:
    """Mean (with its target), median and p95 of one per-job statistic, ours against the baseline."""
    ours, base = measured["ours"][stat], measured["baseline"][stat]
    return [
        row(f"{label}, mean", ours["mean"], base["mean"], unit, target, met),
        row(f"{label}, median", ours["median"], base["median"], unit),
        row(f"{label}, p95", ours["p95"], base["p95"], unit),
    ]


def run() -> dict:
    measured = measure(PARAMETERS)
    ours, base = measured["ours"], measured["baseline"]
    calls, base_calls = ours["status_calls_per_job"], base["status_calls_per_job"]
    delay, base_delay = ours["detection_delay_s"], base["detection_delay_s"]
    first, base_first = ours["first_status_call_after_submit_s"], base["first_status_call_after_submit_s"]
    calls_met = complete(measured) and calls["mean"] <= TARGET_CALLS_RATIO * base_calls["mean"]
    delay_met = complete(measured) and delay["mean"] <= base_delay["mean"]
    rows = [
        *stat_rows(measured, "status_calls_per_job", "status calls per job", "calls",
                   f"≤ {TARGET_CALLS_RATIO}× baseline", calls_met),
        *stat_rows(measured, "detection_delay_s", "detection delay", "s", "≤ 1× baseline", delay_met),
        row("first status call after xAI submit, mean", first["mean"], base_first["mean"], "s",
            compare=False),
        row("end seen after the status call that saw it, mean",
            ours["seen_after_last_status_call_s"]["mean"], base["seen_after_last_status_call_s"]["mean"], "s",
            compare=False),
        row("xAI submit after our API accepted the job, mean",
            ours["xai_submit_after_accept_s"]["mean"], None, "s"),
    ]  # fmt: skip
    return {
        "benchmark": "poll_efficiency",
        **measured,
        "targets": {
            "status_calls_mean_ratio_max": TARGET_CALLS_RATIO,
            "status_calls_met": calls_met,
            "detection_delay_mean_no_worse_met": delay_met,
            "both_met": calls_met and delay_met,
        },
        "rows": rows,
    }


def counts(result: dict) -> str:
    """The sentence both poll reports end with: unseen jobs, xAI submits and 429s, wall times."""
    ours, base = result["ours"], result["baseline"]
    return (
        f"Jobs whose end was never seen: ours {ours['undetected_jobs']}, baseline {base['undetected_jobs']}. "
        f"xAI submits: ours {ours['xai_submits']}, baseline {base['xai_submits']}; "
        f"429s: ours {ours['xai_rate_limited']}, baseline {base['xai_rate_limited']}. "
        f"Our {result['jobs']} API submits took {ours['submit_window_s']:.0f} s; wall time "
        f"{result['seconds']:.0f} s for ours (after a warm-up of {ours['warmup_jobs']} jobs) with the "
        "baseline beside it."
    )


def report(result: dict) -> str:
    met = "met" if result["targets"]["both_met"] else "missed"
    return (
        f"Poll efficiency: {result['jobs']} video jobs each side; target (mean delay no worse than the "
        f"baseline's with ≤ {TARGET_CALLS_RATIO}× its status calls per job) {met}. {counts(result)}"
        f"{_taught(result)}\n"
    )


def _taught(result: dict) -> str:
    learned, simulator = result["ours"].get("learned_in_warmup"), result["simulator"]
    if not learned:
        return ""
    return (
        f" The warm-up taught the stack: {learned['samples']} jobs, median {learned['median_s']:.1f} s, "
        f"sigma {learned['sigma']:.2f} (the simulator draws median {simulator['video_duration_median']} s, "
        f"sigma {simulator['video_duration_sigma']})."
    )
