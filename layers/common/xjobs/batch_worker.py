"""Workers: one SQS batch of chat requests, run concurrently under the account's shared rate limit.

Every request first takes its place in the shared limiter (requests and tokens per minute). A request
that must wait goes back to the queue as a new message delayed by the wait (its counters in its
body), and the delivered one is deleted: no worker sleeps through a backoff, and waiting never uses
up the message's receives — they count only deliveries that ended without an answer (a crash, a
timeout), so a request waits for the limiter, 429s or a blocked account as long as its batch's
completion window is open. A 429 that states no wait cuts the shared rate (limiter.AdaptiveRate) and
comes back after a backoff growing from about a second to 30 s. An account out of credits pauses the
work (account.py): one request per probe interval tries, the others wait. 5xx answers and timeouts
come back with a growing backoff until ``BATCH_MAX_ATTEMPTS``, then become error lines; 4xx answers
are error lines at once. A request that already has its result (SQS delivered it twice) is not sent
to xAI again, and a request is leased before its xAI call, so two copies running at once never both
call. A message that cannot be read is logged and set aside (deleted); it never holds back the others
of its SQS batch.

Tenants share the account's limit fairly (limiter.FairShare): each tenant whose requests a worker takes
(or whose batch is being ingested) counts as having work waiting for a few seconds, and while others
do too, its requests first go through a limiter of its own at its share of the rate. A request over
its tenant's share goes back to the queue at once — its worker does not wait for the share, so the
queue moves on to the other tenants' requests — with a backoff growing from about a second to
``MAX_SHARE_WAIT_SECONDS``; a tenant that only bunched its requests (under its share over the last
second) waits the short wait instead. A tenant alone takes the whole rate.
"""

import asyncio
import json
import math
import random
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from functools import cache

from aws_lambda_powertools.utilities.batch import (
    AsyncBatchProcessor,
    EventType,
    async_process_partial_response,
)

from . import aws, batches
from .batch_ingest import start_finalizer
from .batch_lines import error_line, result_line
from .limiter import RateLimiter, jittered
from .observability import logger, metric
from .settings import get_settings
from .upstream import (
    account,
    chat_limiter,
    chat_rate,
    fair_share,
    learn_limits,
    rate_limited,
    secret,
    tenant_limiter,
)
from .xai import XaiAccountBlocked, XaiClient, XaiRateLimited, XaiRejected, XaiUnavailable, rate_limit_backoff

MAX_BACKOFF_SECONDS = 60
DEFAULT_REQUEST_TIMEOUT_SECONDS = 60
RESULT_MARGIN_SECONDS = 5  # time left after an xAI call to record its result
LEASE_MARGIN_SECONDS = RESULT_MARGIN_SECONDS + 5  # a lease ends after the invocation that holds it
REPEAT_RETURN_SECONDS = 10  # a second copy of a message in one invocation waits for the first's result
MAX_DELAY_SECONDS = 900  # SQS's longest DelaySeconds
SHORT_WAIT_SECONDS = 1.0  # a request waits for the limiter in the worker this long at most
MAX_SHARE_WAIT_SECONDS = 8.0  # the longest backoff of a request over its tenant's fair share
_requests = ThreadPoolExecutor(max_workers=32, thread_name_prefix="batch-request")


class ReturnLater(Exception):
    """The message goes back to the queue; its visibility timeout is already set to the wait."""


def handle(event: dict, context) -> dict:
    """The worker's Lambda handler: process the messages, report those to come back later."""
    work = _Work(event.get("Records", []), context)
    processor = AsyncBatchProcessor(event_type=EventType.SQS, raise_on_entire_batch_failure=False)

    async def record_handler(record):
        return await asyncio.get_running_loop().run_in_executor(_requests, work.process, record)

    response = async_process_partial_response(event, record_handler, processor, context)
    # Results are stored, and the requests that wait are sent again, before the answer deletes their
    # messages: if this fails, all come back.
    work.save()
    return _with_uncounted(response, work)


def handle_dead_letters(event: dict, context) -> dict:
    """Messages that used up their receives: each request becomes an error line, so the batch ends."""
    work = _Work(event.get("Records", []), context, runs=False)
    for record in event.get("Records", []):
        message = work.messages[record["messageId"]]
        if message is not None and not work.known.get((message["batch_id"], message["line"]), {}).get("done"):
            receives = record.get("attributes", {}).get("ApproximateReceiveCount", "?")
            logger.warning(
                "request used up its deliveries",
                extra={
                    "batch_id": message["batch_id"],
                    "custom_id": message["custom_id"],
                    "receives": receives,
                },
            )
            work.record_error(
                message, "delivery_failed", f"the request was received {receives} times without a result"
            )
    work.save()
    return _with_uncounted({"batchItemFailures": []}, work)


def _with_uncounted(response: dict, work: "_Work") -> dict:
    """The messages whose results are stored but not yet counted come back, for their count."""
    failed = {item["itemIdentifier"] for item in response["batchItemFailures"]}
    extra = [{"itemIdentifier": m} for m in sorted(work.uncounted_messages - failed)]
    return {**response, "batchItemFailures": response["batchItemFailures"] + extra}


MESSAGE_FIELDS = {"batch_id": str, "line": int, "custom_id": str, "tokens": int, "expires_at": int}


def read_message(record_id: str, body: str) -> dict | None:
    """A work message, or None (logged) if it cannot be one: such a message is set aside, deleted,
    never retried, so that it cannot hold back the others of its SQS batch."""
    try:
        message = json.loads(body)
        readable = isinstance(message, dict) and all(
            isinstance(message.get(name), kind) and not isinstance(message.get(name), bool)
            for name, kind in MESSAGE_FIELDS.items()
        )
        readable = readable and (
            isinstance(message.get("body"), dict) or isinstance(message.get("body_key"), str)
        )
    except (ValueError, RecursionError):
        readable = False
    if not readable:
        logger.error(
            "unreadable message set aside",
            extra={"message_id": record_id, "body_head": str(body)[:200], "unreadable_messages": 1},
        )
        return None
    return message


class _Work:
    """The messages of one invocation: read together, admitted together when the limiter allows,
    recorded together in one transaction."""

    def __init__(self, records: list, context, runs: bool = True):
        """``runs``: whether its requests go to xAI (the dead-letter handler only records error lines,
        and its role may read neither the xAI key nor the limits)."""
        settings = get_settings()
        self.context = context
        self.settings = settings
        self.runs = runs
        self.store = batches.BatchStore(settings.batches_table, settings.batch_items_table)
        self.messages = {r["messageId"]: read_message(r["messageId"], r["body"]) for r in records}
        readable = {i: m for i, m in self.messages.items() if m is not None}
        self.known, self.batches = self.store.prefetch(
            [(m["batch_id"], m["line"]) for m in readable.values()]
        )
        self.results: list[dict] = []
        self.uncounted_messages: set[str] = set()
        self.later: list[tuple[dict, float]] = []  # (message, delay): requests that wait, sent again
        self._lock = threading.Lock()
        # SQS may put two copies of a message in one batch: the first runs, the others come back later
        # and find its result.
        first: dict[tuple[str, int], str] = {}
        for record_id, message in readable.items():
            first.setdefault((message["batch_id"], message["line"]), record_id)
        self.repeats = set(readable) - set(first.values())
        self.message_of = {key: record_id for key, record_id in first.items()}
        unique = [m for i, m in readable.items() if i not in self.repeats]
        to_run = [m for m in unique if self._verdict(m) is None] if runs else []
        # The key is read here, once, not by each of the request threads at a cold start.
        self.xai = _client() if to_run else None
        # While the account is blocked, one request may probe it (see _may_go); the others wait.
        self.blocked = account().blocked() if to_run else None
        self._probe: bool | None = None
        self.limiter = chat_limiter() if to_run else None
        # Each tenant with requests to run has work waiting; one with less than the whole rate (others
        # have work waiting too) goes through a limiter of its own first.
        self.tenant_limiters: dict[str, RateLimiter | None] = {}
        self._tenant_busy: dict[str, bool] = {}
        if to_run:
            shares = fair_share()
            for tenant in sorted({self._tenant(m) for m in to_run}):
                shares.heartbeat(tenant)
                self.tenant_limiters[tenant] = tenant_limiter(tenant, shares.share(tenant))
        # One limiter call for the whole SQS batch when it fits the window; else one per request.
        self.admitted = (
            bool(to_run)
            and self.blocked is None
            and not any(self.tenant_limiters.values())
            and not self.limiter.try_acquire(tokens=sum(m["tokens"] for m in to_run), requests=len(to_run))
        )

    def _tenant(self, message: dict) -> str:
        return str((self.batches.get(message["batch_id"]) or {}).get("tenant") or "")

    def _verdict(self, message: dict) -> tuple[str, str] | str | None:
        """Why a message is not sent to xAI ("done", "unknown", or an error line's code and text)."""
        if self.known.get((message["batch_id"], message["line"]), {}).get("done"):
            return "done"  # a repeated delivery: the result exists
        batch = self.batches.get(message["batch_id"])
        if batch is None:
            return "unknown"
        if batch["status"] == batches.CANCELLING:
            return "batch_cancelled", "the batch was cancelled before this request ran"
        if batch["expires_at"] <= time.time():
            return "batch_expired", "the batch's completion window ended before this request ran"
        return None

    def process(self, record) -> None:
        message = self.messages[record.message_id]
        if message is None:
            return  # set aside (logged): deleted with the batch's successes
        tenant = (self.batches.get(message["batch_id"]) or {}).get("tenant")
        logger.thread_safe_append_keys(
            batch_id=message["batch_id"], custom_id=message["custom_id"], tenant=tenant
        )
        if record.message_id in self.repeats:
            _return_later(record, REPEAT_RETURN_SECONDS)
        verdict = self._verdict(message)
        if verdict == "unknown":
            logger.warning("message of an unknown batch dropped")
        elif isinstance(verdict, tuple):
            self.record_error(message, *verdict)
        elif verdict is None:
            attempts = self.known.get((message["batch_id"], message["line"]), {}).get("attempts", 0)
            self._run(record, message, attempts)

    def _run(self, record, message: dict, attempts: int) -> None:
        if self.blocked is not None and not self._may_probe():
            self._later(message, account().pause_seconds(), "the xAI account is blocked")
            return
        if not self.admitted:
            over_share = self._over_share(message)
            if over_share:
                count = message.get("over_share", 0) + 1
                self._later(message, over_share, "over its tenant's fair share", over_share=count)
                return
            wait = self._admit(self.limiter, message["tokens"])
            if wait:
                if self.limiter.busy():
                    chat_rate().grow()  # held back, the rate used, no 429: the demand is above it
                self._later(message, wait, "waiting for the rate limiter")
                return
        # The lease outlasts this invocation, so no other copy calls xAI while this one may.
        lease, wait = self.store.lease(
            message["batch_id"],
            message["line"],
            self._time_left() + LEASE_MARGIN_SECONDS,
            message["expires_at"],
        )
        if lease is None:
            if wait:
                _return_later(record, wait)  # another copy runs it: come back to find its result
            return  # another copy recorded its result meanwhile
        body = message.get("body") or self._stored_body(message["body_key"])
        try:
            reply = self.xai.chat(body, timeout=self._time_left())
        except XaiAccountBlocked as exc:
            self.store.release(message["batch_id"], message["line"], lease)
            account().block(exc.status_code, exc.message)
            self._later(message, account().pause_seconds(), "the xAI account is blocked")
            return
        except XaiRateLimited as exc:
            self.store.release(message["batch_id"], message["line"], lease)
            held = rate_limited(exc, self.limiter)
            retries = message.get("rate_limited", 0) + 1
            self._later(
                message, max(held, rate_limit_backoff(retries)), "xAI answered 429", rate_limited=retries
            )
            return
        except XaiRejected as exc:
            error = {"error": {"code": exc.code, "message": exc.message}}
            line = result_line(batches.request_id(), message["custom_id"], exc.status_code, error, None)
            self._keep(message, False, line, "upstream_rejected")
            return
        except XaiUnavailable as exc:
            attempts = self.store.count_attempt(message["batch_id"], message["line"], message["expires_at"])
            if attempts >= self.settings.batch_max_attempts:
                self.record_error(message, "upstream_unavailable", f"{exc} ({attempts} attempts)")
                return
            self._later(
                message, random.uniform(1, min(MAX_BACKOFF_SECONDS, 2**attempts)), f"xAI unavailable: {exc}"
            )
            return
        if self.blocked is not None:
            account().resume()  # this request was the probe, and it went through
        learn_limits(reply.limits)
        upstream_id = reply.body.get("id")
        line = result_line(
            batches.request_id(), message["custom_id"], reply.status_code, reply.body, upstream_id
        )
        self._keep(message, True, line, "ok")

    def _admit(self, limiter: RateLimiter, tokens: int, wait: float | None = None) -> float:
        """The limiter's answer for one request; a wait of less than ``SHORT_WAIT_SECONDS`` is waited
        here — the invocation lasts as long as its slowest request anyway — rather than by a message."""
        deadline = time.monotonic() + SHORT_WAIT_SECONDS
        if wait is None:
            wait = limiter.try_acquire(tokens=tokens)
        while wait and time.monotonic() + wait < deadline:
            time.sleep(wait + random.uniform(0, 0.02))
            wait = limiter.try_acquire(tokens=tokens)
        return wait

    def _over_share(self, message: dict) -> float:
        """0.0 if the request fits its tenant's fair share (or the tenant has the whole rate), else how
        long it waits: a tenant that used its share over the last second waits as a message, at once,
        so this worker takes no time from the other tenants' requests behind it in the queue."""
        tenant = self._tenant(message)
        limiter = self.tenant_limiters.get(tenant)
        if limiter is None:
            return 0.0
        wait = limiter.try_acquire(tokens=message["tokens"])
        if not wait:
            return 0.0
        with self._lock:
            if tenant not in self._tenant_busy:
                self._tenant_busy[tenant] = limiter.busy()
            busy = self._tenant_busy[tenant]
        if not busy and not self._admit(limiter, message["tokens"], wait):
            return 0.0
        return share_backoff(message.get("over_share", 0))

    def _may_probe(self) -> bool:
        """While the account is blocked, at most one request of all workers goes per probe interval."""
        with self._lock:
            if self._probe is None:
                self._probe = account().may_probe()
                return self._probe
            return False

    def _later(self, message: dict, seconds: float, why: str, **counters: int) -> None:
        """The request waits: it goes back to the queue as a new message (see save)."""
        logger.info("request sent back to wait", extra={"seconds": round(seconds, 3), "why": why})
        copy = message | counters | {"waits": message.get("waits", 0) + 1}
        with self._lock:
            self.later.append((copy, seconds))

    def _time_left(self) -> float:
        """An xAI call must answer before the invocation times out, or its result would be lost."""
        if self.context is None:
            return DEFAULT_REQUEST_TIMEOUT_SECONDS
        return max(1.0, self.context.get_remaining_time_in_millis() / 1000 - RESULT_MARGIN_SECONDS)

    def record_error(self, message: dict, code: str, text: str) -> None:
        self._keep(message, False, error_line(batches.request_id(), message["custom_id"], code, text), code)

    def _keep(self, message: dict, ok: bool, outcome: str, code: str) -> None:
        """Keep a result line to record; ``code`` is what BatchLines counts it as (``ok`` or why not)."""
        batch = self.batches.get(message["batch_id"])
        if batch is None:
            logger.warning("result of an unknown batch dropped")
            return
        if len(outcome) > batches.MAX_INLINE_RESULT_BYTES:
            # A DynamoDB item holds 400 KB: a larger result is kept in S3 and its item points there.
            key = batches.result_key(message["batch_id"], message["line"])
            aws.client("s3").put_object(Bucket=self.settings.data_bucket, Key=key, Body=outcome.encode())
            outcome = json.dumps({"s3_key": key})
        result = {
            "batch_id": message["batch_id"],
            "line": message["line"],
            "custom_id": message["custom_id"],
            "ok": ok,
            "outcome": outcome,
            "expires_at": batch["retain_until"],
            "code": code,
        }
        with self._lock:
            self.results.append(result)

    def _stored_body(self, key: str) -> dict:
        reply = aws.client("s3").get_object(Bucket=self.settings.data_bucket, Key=key)
        return json.loads(reply["Body"].read())

    def save(self) -> None:
        """Record this invocation's results; then, if they were a batch's last, start its finalizer.

        Every batch touched is checked, even with no new result: a worker that crashed between
        recording and this check left the batch to the next delivery of the same messages.
        """
        recount = [
            {"batch_id": b, "line": n, "ok": known["ok"]}
            for (b, n), known in self.known.items()
            if known.get("uncounted")
        ]
        left = self.store.record(
            self.results, recount, count_seconds=min(batches.COUNT_SECONDS, self._time_left())
        )
        self.uncounted_messages = {self.message_of[key] for key in left if key in self.message_of}
        for code, count in Counter(r["code"] for r in self.results).items():
            metric("BatchLines", count, Outcome=code)
        self._send_later()
        for batch_id, batch in self.batches.items():
            if self.store.claim_finalize(batch_id):
                start_finalizer(batch_id)
                if self.runs:
                    # The other tenants have the tenant's share at once, not when its heartbeat lapses
                    # (the dead-letter handler leaves the limits alone: the heartbeat lapses in seconds).
                    fair_share().finished(str(batch.get("tenant") or ""))

    def _send_later(self) -> None:
        queue = get_settings().work_queue_url
        waiting, self.later = self.later, []
        for start in range(0, len(waiting), 10):
            entries = [
                {
                    "Id": str(i),
                    "MessageBody": json.dumps(message, separators=(",", ":")),
                    "DelaySeconds": min(MAX_DELAY_SECONDS, max(1, math.ceil(seconds))),
                    # The tenant is the message group, as the ingest sends it (SQS fair queues).
                    **({"MessageGroupId": tenant} if (tenant := self._tenant(message)) else {}),
                }
                for i, (message, seconds) in enumerate(waiting[start : start + 10])
            ]
            for _ in range(5):
                reply = aws.client("sqs").send_message_batch(QueueUrl=queue, Entries=entries)
                failed = {f["Id"] for f in reply.get("Failed", [])}
                entries = [e for e in entries if e["Id"] in failed]
                if not entries:
                    break
                time.sleep(0.2)
            else:
                raise RuntimeError(f"SQS refused {len(entries)} waiting requests five times")


def share_backoff(times_over: int) -> float:
    """The wait of a request over its tenant's share for the ``times_over + 1``-th time: about a second,
    doubling, up to ``MAX_SHARE_WAIT_SECONDS`` (a long wait costs the tenant nothing: its share goes to
    its other requests meanwhile)."""
    return jittered(min(MAX_SHARE_WAIT_SECONDS, 2.0 ** min(times_over, 10)))


def _return_later(record, seconds: float) -> None:
    logger.info("message returned to the queue", extra={"seconds": round(seconds, 3)})
    aws.client("sqs").change_message_visibility(
        QueueUrl=get_settings().work_queue_url,
        ReceiptHandle=record.receipt_handle,
        VisibilityTimeout=min(43_200, max(1, math.ceil(seconds))),
    )
    raise ReturnLater(f"back in {seconds:.1f} s")


@cache
def _xai(base_url: str, api_key: str) -> XaiClient:
    # One attempt per delivery: a retry is a later delivery of the message, never a sleep here.
    return XaiClient(base_url, api_key, max_attempts=1)


def _client() -> XaiClient:
    settings = get_settings()
    return _xai(settings.xai_base_url, secret(settings.xai_api_key_secret))
