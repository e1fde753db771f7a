"""Many jobs in flight: 1,000 jobs submitted through the local stack's HTTP API by 20 concurrent clients.

Work: JOBS jobs, alternately a video generation (6 s of 480p video; the simulator takes a lognormal
time, median VIDEO_MEDIAN_S, and fails 5%) and a deferred chat completion, posted by CLIENTS threads as
fast as the API answers. The simulator limits chat to RPM requests a minute, submits and result polls
alike, and video submits to VIDEO_RPS a second; the stack is told both limits. The simulator never
limits video status calls (GET /v1/videos/{id}), so a status call can only meet a 429 on a chat job.

Measured, in this run:
- submit latency (our API's 202) p50 and p99, beside a bare call: the same JOBS requests posted by the
  same CLIENTS straight to the xAI submit endpoints of a simulator with the same configuration minus its
  rate limits, measured first, before the stack starts.
- jobs per second sustained: jobs accepted / (first submit → last job's SNS notice).
- completeness: each accepted job's record at the end (lost: none; stuck: not terminal by the
  deadline) and its SNS notices, read from the queue the stack subscribes to the topic (never notified,
  notified twice).
- the simulator's 429s as a share of status calls (and of every xAI call), from its call log.
- peak memory: VmHWM of this process, which runs the whole local stack (moto's server and everything it
  holds, the functions, the API, the simulator) and this benchmark's clients; VmRSS before the stack
  started (after the bare-call run) for comparison.
- where the time goes: the process's CPU seconds against wall time (one Python process: its threads
  share one GIL), each function's busy time and concurrency, and the time DynamoDB requests waited for
  the emulator's one-at-a-time lock.
- what the AWS side did, for the cost benchmark (bench/cost.py).
"""

import dataclasses
import json
import os
import threading
import time
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor

import httpx

from local.stack import LocalStack
from local.xai_simulator import SimulatorConfig, XaiSimulator

from . import cost
from .common import memory_kb, observer, percentile, row, run_metadata

JOBS = 1000
CLIENTS = 20
VIDEO_MEDIAN_S = 3
RPM = 300  # chat requests a minute: below what 500 chat jobs ask for while the stack accepts them
VIDEO_RPS = 10
SIMULATOR = SimulatorConfig(
    api_key="bench",
    video_duration_median=VIDEO_MEDIAN_S,
    video_duration_sigma=0.5,
    video_failure_rate=0.05,
    requests_per_minute=RPM,
    video_requests_per_second=VIDEO_RPS,
    random_seed=11,
)
PARAMETERS = {
    "VideoRequestsPerSecond": str(VIDEO_RPS),
    "ChatRequestsPerMinute": str(RPM),
    # The usage plan's throttle (50/s per key by default) is a per-tenant policy, not the stack's capacity.
    "ApiThrottleRateLimit": "10000",
    "ApiThrottleBurstLimit": "10000",
}
VIDEO = {"prompt": "a paper boat drifting down a rainy street", "duration": 6, "resolution": "480p"}
CHAT = {"model": "grok-4", "deferred": True, "max_tokens": 64}
DRAIN_TIMEOUT = 300  # seconds after the last submit for every job to be announced
TERMINAL = {"completed", "failed", "cancelled", "timed_out"}
TARGET_429_SHARE = 0.01
PROGRESS_SECONDS = 30
TIMEOUT_SECONDS = 900  # for `python -m bench`: 1,000 jobs take the local stack several minutes


def _requests(xai_shapes: bool) -> list[tuple[str, str, dict]]:
    """(kind, path, body) of each job: our API's, or (xai_shapes) xAI's own submit endpoints."""
    jobs = []
    for n in range(JOBS):
        if n % 2 == 0:
            body = {"model": "grok-imagine-video", **VIDEO} if xai_shapes else VIDEO
            jobs.append(("video", "/v1/videos/generations", body))
        else:
            messages = [{"role": "user", "content": f"Job {n}: name three uses of a paper boat."}]
            jobs.append(("chat", "/v1/chat/completions", {**CHAT, "messages": messages}))
    return jobs


def _post_all(client: httpx.Client, requests: list[tuple[str, str, dict]]) -> list[dict]:
    """Post every request with CLIENTS threads; per request: kind, HTTP status, id, latency, answer time."""

    def post(request: tuple[str, str, dict]) -> dict:
        kind, path, body = request
        started = time.perf_counter()
        try:
            reply = client.post(path, json=body)
        except httpx.HTTPError as exc:
            return {"kind": kind, "status": type(exc).__name__, "id": None, "latency_s": None}
        answered = reply.json() if reply.is_success else {}
        return {
            "kind": kind,
            "status": reply.status_code,
            "id": answered.get("id") or answered.get("request_id"),
            "latency_s": time.perf_counter() - started,
            "at": time.time(),
        }

    with ThreadPoolExecutor(CLIENTS) as pool:
        return list(pool.map(post, requests))


def _latency(posted: list[dict]) -> dict:
    values = [p["latency_s"] for p in posted if p["id"]]
    return {"p50": percentile(values, 50), "p99": percentile(values, 99), "n": len(values)}


def run_bare() -> dict:
    """The bare call: JOBS submits straight to a simulator (same configuration, no rate limits)."""
    config = dataclasses.replace(SIMULATOR, requests_per_minute=0, video_requests_per_second=0)
    with XaiSimulator(config) as sim:
        headers = {"Authorization": f"Bearer {config.api_key}"}
        limits = httpx.Limits(max_connections=CLIENTS)
        with httpx.Client(base_url=sim.url, headers=headers, limits=limits, timeout=60) as client:
            started = time.time()
            posted = _post_all(client, _requests(xai_shapes=True))
            seconds = time.time() - started
    return {
        "latency_s": _latency(posted),
        "seconds": seconds,
        "failed": Counter(str(p["status"]) for p in posted if not p["id"]),
    }


# -- ours ----------------------------------------------------------------------------------------------


def run_ours() -> dict:
    before_stack = memory_kb()
    cpu = os.times()
    stack = LocalStack(parameters=PARAMETERS, simulator=SIMULATOR).start()
    try:
        meter = cost.Meter(stack)
        limits = httpx.Limits(max_connections=CLIENTS)
        headers = {"Authorization": f"Bearer {stack.api_key}"}
        with httpx.Client(base_url=stack.api_url, headers=headers, limits=limits, timeout=60) as client:
            started = time.time()
            posted = _post_all(client, _requests(xai_shapes=False))
        submitted = time.time()
        accepted = {p["id"]: p["kind"] for p in posted if p["id"]}
        _progress(f"{len(accepted)} of {JOBS} jobs accepted in {submitted - started:.0f} s")
        notices, threads = _notices(stack, set(accepted), deadline=submitted + DRAIN_TIMEOUT)
        _wait_for_executions(stack, deadline=time.time() + 60)
        _drain(stack, notices)  # a second notice of a job would be here by now
        work_ended = time.time()
        cpu_end = os.times()
        records = _records(stack, list(accepted))
        _progress("counting what the stack did")
        counts = meter.counts()
        last_notice = max((times[0] for times in notices.values()), default=None)
        return {
            "submit": {
                "latency_s": _latency(posted),
                "seconds": submitted - started,
                "failed": Counter(str(p["status"]) for p in posted if not p["id"]),
            },
            "accepted": len(accepted),
            "first_submit_to_last_notice_s": last_notice - started if last_notice else None,
            "outcome": _outcome(accepted, records, notices),
            "xai": _xai_calls(stack),
            "memory_kb": {"before_stack_rss": before_stack["VmRSS"], "peak_hwm": memory_kb()["VmHWM"]},
            "process": {
                "cpu_s": (cpu_end.user + cpu_end.system) - (cpu.user + cpu.system),
                "wall_s": work_ended - started,
                "threads_peak": threads,
            },
            "functions": {
                lid: {
                    "invocations": s.count,
                    "errors": s.errors,
                    "throttles": s.throttles,
                    "busy_s": s.billed_ms / 1000,
                    "max_concurrency": s.max_concurrency,
                }
                for lid, s in stack.runtime.stats.items()
                if s.count
            },
            "dynamodb_lock_s": stack.moto.dynamodb_lock_seconds(),
            "parameters": {k: v for k, v in stack.parameter_values.items() if k != "XaiBaseUrl"},
            "cost_counts": counts,
            "cost_work": _work(stack, accepted, records),
        }
    finally:
        stack.stop()


def _notices(stack: LocalStack, expected: set[str], deadline: float) -> tuple[dict[str, list[float]], int]:
    """Read the SNS inbox until every expected job has been announced, no execution runs any more (the
    jobs not announced by then never will be), or the deadline: when each notice of each job arrived,
    and the most threads this process had meanwhile."""
    sqs = observer(stack, "sqs")
    notices: dict[str, list[float]] = defaultdict(list)
    threads, shown = 0, time.time()
    while time.time() < deadline and not expected <= notices.keys():
        _receive(sqs, stack.inbox_url, notices)
        threads = max(threads, threading.active_count())
        if time.time() - shown >= PROGRESS_SECONDS:
            shown = time.time()
            _progress(f"{len(expected & notices.keys())} of {len(expected)} jobs announced")
            if not _running(stack):
                _drain(stack, notices)
                break
    return notices, threads


def _running(stack: LocalStack) -> bool:
    sfn = observer(stack, "stepfunctions")
    machine = stack.resources.physical["JobStateMachine"]
    return bool(
        sfn.list_executions(stateMachineArn=machine, statusFilter="RUNNING", maxResults=1)["executions"]
    )


def _progress(message: str) -> None:
    print(f"  {time.strftime('%H:%M:%S')} {message}", flush=True)


def _receive(sqs, queue_url: str, notices: dict[str, list[float]]) -> int:
    messages = sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=1).get(
        "Messages", []
    )
    now = time.time()
    for message in messages:
        notices[json.loads(message["Body"])["job"]["id"]].append(now)
    if messages:
        entries = [{"Id": str(n), "ReceiptHandle": m["ReceiptHandle"]} for n, m in enumerate(messages)]
        sqs.delete_message_batch(QueueUrl=queue_url, Entries=entries)
    return len(messages)


def _drain(stack: LocalStack, notices: dict[str, list[float]]) -> None:
    sqs = observer(stack, "sqs")
    while _receive(sqs, stack.inbox_url, notices):
        pass


def _wait_for_executions(stack: LocalStack, deadline: float) -> None:
    """Until no execution runs: Finish publishes last, and the cost counts want whole executions."""
    while time.time() < deadline and _running(stack):
        time.sleep(1)


def _records(stack: LocalStack, job_ids: list[str]) -> dict[str, dict]:
    dynamodb = observer(stack, "dynamodb", resource=True)
    table = stack.resources.physical["JobsTable"]
    records = {}
    for start in range(0, len(job_ids), 100):
        keys = [{"id": job} for job in job_ids[start : start + 100]]
        request = {table: {"Keys": keys, "ConsistentRead": True}}
        while request:
            reply = dynamodb.batch_get_item(RequestItems=request)
            for item in reply["Responses"].get(table, []):
                records[item["id"]] = item
            request = reply.get("UnprocessedKeys")
    return records


def _outcome(accepted: dict[str, str], records: dict[str, dict], notices: dict[str, list[float]]) -> dict:
    statuses = Counter(records[job]["status"] if job in records else "lost" for job in accepted)
    return {
        "statuses": dict(statuses),
        "by_kind": {
            kind: dict(
                Counter(records[j]["status"] for j, k in accepted.items() if k == kind and j in records)
            )
            for kind in ("video", "chat")
        },
        "failed_by_error": dict(
            Counter(
                (records[j].get("error") or {}).get("code")
                for j in accepted
                if j in records and records[j]["status"] == "failed"
            )
        ),
        "lost": [job for job in accepted if job not in records],
        "stuck": [job for job in accepted if job in records and records[job]["status"] not in TERMINAL],
        "never_notified": [job for job in accepted if not notices.get(job)],
        "notified_twice": [job for job in accepted if len(notices.get(job, [])) > 1],
        "notices": sum(len(times) for times in notices.values()),
        "notices_of_unknown_jobs": sorted(set(notices) - set(accepted)),
    }


def _xai_calls(stack: LocalStack) -> dict:
    """The simulator's answers by kind of call: status calls (video status, deferred chat result), submits."""

    def kind(call) -> str:
        if call.method == "GET" and call.path.startswith("/v1/videos/"):
            return "video_status"
        if call.method == "GET" and call.path.startswith("/v1/chat/deferred-completion/"):
            return "chat_status"
        return {"/v1/videos/generations": "video_submit", "/v1/chat/completions": "chat_submit"}.get(
            call.path, "other"
        )

    calls: dict[str, Counter] = defaultdict(Counter)
    for call in stack.simulator.calls:
        calls[kind(call)][str(call.status)] += 1
    by_kind = {k: {"calls": sum(c.values()), "429": c["429"]} for k, c in calls.items()}
    status = [by_kind.get(k, {"calls": 0, "429": 0}) for k in ("video_status", "chat_status")]
    return {
        "by_kind": by_kind,
        "status_calls": sum(s["calls"] for s in status),
        "status_429": sum(s["429"] for s in status),
        "calls": sum(k["calls"] for k in by_kind.values()),
        "429": sum(k["429"] for k in by_kind.values()),
    }


def _work(stack: LocalStack, accepted: dict[str, str], records: dict[str, dict]) -> dict:
    """The jobs as units of work, and what xAI charges for them: the seconds of the completed videos and
    the tokens of the completed chats (read from their stored results)."""
    completed = [records[j] for j in accepted if j in records and records[j]["status"] == "completed"]
    seconds: dict[str, float] = defaultdict(float)
    for record in (r for r in completed if "video_key" in r):
        request = json.loads(record["request"])
        seconds[request.get("resolution") or "480p"] += request.get("duration") or 6
    s3 = observer(stack, "s3")
    bucket = stack.resources.physical["DataBucket"]
    keys = [r["result_key"] for r in completed if "result_key" in r]

    def result(key: str) -> dict:
        return json.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read())

    with ThreadPoolExecutor(10) as pool:
        results = list(pool.map(result, keys))
    return cost.work(
        "jobs (half video, half deferred chat)",
        len(accepted),
        1000,
        video_seconds=seconds,
        chat_tokens=cost.chat_tokens(results),
    )


# -- result --------------------------------------------------------------------------------------------


def run() -> dict:
    for name in ("XAI_BASE_URL", "XAI_API_KEY"):  # loopback only: never a real xAI endpoint
        os.environ.pop(name, None)
    at_start = memory_kb()
    bare = run_bare()
    _progress(f"bare xAI submits: {JOBS} in {bare['seconds']:.0f} s")
    ours = run_ours()
    counts, work = ours.pop("cost_counts"), ours.pop("cost_work")
    outcome, xai = ours["outcome"], ours["xai"]
    faults = sum(len(outcome[k]) for k in ("lost", "stuck", "never_notified", "notified_twice"))
    complete = ours["accepted"] == JOBS and not faults
    share = xai["status_429"] / xai["status_calls"] if xai["status_calls"] else None
    share_met = share is not None and share <= TARGET_429_SHARE
    ours_lat, bare_lat = ours["submit"]["latency_s"], bare["latency_s"]
    span = ours["first_submit_to_last_notice_s"]
    rate = ours["accepted"] / span if span else None
    memory = ours["memory_kb"]
    rows = [
        row("submit latency p50 (baseline: bare xAI call)", _ms(ours_lat["p50"]), _ms(bare_lat["p50"]), "ms"),
        row("submit latency p99 (baseline: bare xAI call)", _ms(ours_lat["p99"]), _ms(bare_lat["p99"]), "ms"),
        row("jobs per second sustained (first submit → last notice)", rate, None, "jobs/s"),
        row("jobs lost, stuck, never notified or notified twice", faults, None, "jobs", "0", complete),
        row("xAI 429s, share of status calls", _pct(share), None, "%", f"≤ {TARGET_429_SHARE:.0%}",
            share_met),
        row("peak memory of the process running the stack (baseline: before it started)",
            memory["peak_hwm"] / 1024, memory["before_stack_rss"] / 1024, "MB", compare=False),
    ]  # fmt: skip
    return {
        "benchmark": "many_jobs",
        **run_metadata(),
        "jobs": JOBS,
        "clients": CLIENTS,
        "simulator": {k: v for k, v in dataclasses.asdict(SIMULATOR).items() if k != "api_key"},
        "memory_kb_at_start": at_start,
        "bare": bare,
        "ours": ours,
        "cost_counts": counts,
        "cost_work": work,
        "targets": {
            "complete": complete,
            "status_429_share_max": TARGET_429_SHARE,
            "status_429_met": share_met,
        },
        "rows": rows,
    }


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1000


def _pct(share: float | None) -> float | None:
    return None if share is None else share * 100


def report(result: dict) -> str:
    ours = result["ours"]
    outcome, xai, process = ours["outcome"], ours["xai"], ours["process"]
    chat = xai["by_kind"].get("chat_status", {"calls": 0, "429": 0})
    busiest = sorted(ours["functions"].items(), key=lambda item: -item[1]["busy_s"])
    busy = ", ".join(
        f"{lid} {f['invocations']} calls, {f['busy_s']:.0f} s busy, up to {f['max_concurrency']} at once"
        for lid, f in busiest
    )
    lock = ours["dynamodb_lock_s"]
    return (
        f"Many jobs: {result['jobs']} jobs (half video, half deferred chat) by {result['clients']} clients; "
        f"{ours['accepted']} accepted in {ours['submit']['seconds']:.0f} s (bare xAI submits: "
        f"{result['bare']['seconds']:.0f} s); statuses {outcome['statuses']}; {outcome['notices']} SNS "
        f"notices; failures by error code {outcome['failed_by_error']}; lost {len(outcome['lost'])}, "
        f"stuck {len(outcome['stuck'])}, never notified "
        f"{len(outcome['never_notified'])}, notified twice {len(outcome['notified_twice'])}. "
        f"xAI: {xai['status_calls']} status calls, {xai['status_429']} answered 429 ({chat['429']} of "
        f"{chat['calls']} deferred-chat result polls; the simulator does not limit video status calls); "
        f"{xai['429']} 429s in {xai['calls']} calls in all. The process used {process['cpu_s']:.0f} "
        f"CPU-s in {process['wall_s']:.0f} s ({process['cpu_s'] / process['wall_s']:.2f} cores; one Python "
        f"process, one GIL), up to {process['threads_peak']} threads. Functions: {busy}. DynamoDB requests "
        f"waited {lock['wait_s']:.0f} s in all for the emulator's lock, held {lock['held_s']:.0f} s.\n"
    )
