"""Ingest: a batch input file in S3, streamed line by line into the work queue.

The file is read in chunks (never whole in memory); each line is validated; good lines become SQS
messages (SendMessageBatch; bodies too large for a message travel as S3 objects), bad lines become
error results at once. A file of more lines than ``BATCH_MAX_LINES`` fails the batch before any line
runs. Progress is checkpointed on the batch record with absolute counts, so an ingest that crashes or
runs out of time resumes from its last checkpoint. What a resumed (or a second, concurrent) ingest
sends again is harmless: a worker leases a request before calling xAI and keeps its first result,
and every result, an error line written here included, is stored once and counted once (see
batches.py); the batch ends when every line has its result (``done = lines``).

Duplicate custom_ids are found in DynamoDB, not in memory: each custom_id is claimed for the first
line that has it (a conditional write), so memory does not grow with the file and a resumed ingest
needs nothing of the lines before its offset.

While it sends, the ingest beats the tenant's heartbeat in the fair shares of the chat limit (see
batch_worker.py): the tenant has work waiting.

A cancel seen at a checkpoint stops the sending, not the reading: the lines not yet sent, and all the
rest of the file, become error lines (``batch_cancelled``, or their own error), so output lines +
error lines = input lines for a cancelled batch too.
"""

import hashlib
import json
import time
import urllib.parse
from collections import Counter
from dataclasses import dataclass

from botocore.exceptions import ClientError

from . import aws, batches
from .batch_lines import BadLine, custom_id_of, error_line, estimated_tokens, parse_line
from .observability import logger, metric
from .settings import get_settings
from .upstream import fair_share

CHUNK_BYTES = 1 << 20
MAX_LINE_BYTES = 8 << 20
INLINE_BODY_BYTES = 64 * 1024  # SQS bills per 64 KB; a larger body goes to S3
SEND_BATCH_BYTES = 900 * 1024  # SendMessageBatch carries at most 1 MiB in all
CHECKPOINT_LINES = 500
CLAIM_LINES = 100  # lines whose custom_ids are claimed together (one BatchGetItem)
CLAIM_BYTES = 4 << 20  # ... or fewer, when they are large
COUNT_SECONDS = 60.0  # how long the ingest keeps counting its error lines on a contended batch
TIME_MARGIN_MS = 30_000  # hand over to a new invocation with this much time left
INCOMING_PREFIX = "batches/incoming/"
DIRECT_UPLOAD_TENANT = "s3"  # the tenant of a file put straight into the bucket without metadata


def batch_id_for_upload(key: str, etag: str) -> str:
    """The same upload (S3 may announce it twice) always names the same batch."""
    digest = hashlib.sha256(f"{key}\n{etag}".encode()).hexdigest()[:26].upper()
    return f"batch_{digest}"


def handle_s3_event(event: dict, context) -> list[str]:
    """Start (or resume) the batch of every object the event announces; returns their batch ids."""
    started = []
    for record in event.get("Records", []):
        key = s3_key(record)
        if not key.startswith(INCOMING_PREFIX):
            continue
        started.append(open_batch(record["s3"]["bucket"]["name"], key))
    for batch_id in started:
        ingest(batch_id, context)
    return started


def s3_key(record: dict) -> str:
    """The object key of an S3 event record (URL-encoded there, space as "+")."""
    return urllib.parse.unquote_plus(record["s3"]["object"]["key"])


def open_batch(bucket: str, key: str) -> str:
    """The batch of an uploaded object: made by the API (its id is in the object's metadata), or made
    here for a file put straight into the bucket."""
    settings = get_settings()
    head = aws.client("s3").head_object(Bucket=bucket, Key=key)
    metadata = head.get("Metadata", {})
    batch_id = metadata.get("xjobs-batch-id") or batch_id_for_upload(key, head["ETag"])
    store = _store()
    if store.get(batch_id) is None:
        store.create(
            batches.new_batch(
                batch_id,
                tenant=metadata.get("xjobs-tenant") or metadata.get("tenant") or DIRECT_UPLOAD_TENANT,
                input_key=key,
                input_file_id=None,
                window_seconds=settings.batch_completion_window_seconds,
                metadata={"source": f"s3://{bucket}/{key}"},
            )
        )
        logger.info("batch opened from an upload", extra={"batch_id": batch_id, "key": key})
    return batch_id


def ingest(batch_id: str, context) -> None:
    settings = get_settings()
    store = _store()
    batch = store.get(batch_id)
    if batch is None or batch["ingested"] or batch["status"] not in batches.RUNNING:
        return  # a repeated event, or a batch already past ingest
    logger.append_keys(batch_id=batch_id, tenant=batch["tenant"])
    reader = _Reader(settings.data_bucket, batch["input_key"])
    if batch["offset"] == 0 and _more_lines_than(reader, settings.batch_max_lines):
        _refuse(
            store, batch, "too_many_lines", f"the file holds more than {settings.batch_max_lines} requests"
        )
        return
    state = {k: batch.get(k, 0) for k in ("offset", "lines", "physical_lines", "enqueued", "ingest_errors")}
    sender = _Sender(batch, settings, store, state)
    since_checkpoint = 0
    for _, end, raw in reader.lines(batch["offset"]):
        state["physical_lines"] += 1
        if raw.strip():
            state["lines"] += 1
            sender.add(state["lines"], state["physical_lines"], raw)
            since_checkpoint += 1
        state["offset"] = end
        if since_checkpoint >= CHECKPOINT_LINES:
            since_checkpoint = 0
            if not _checkpoint(store, batch, sender, state):
                return
            if context is not None and context.get_remaining_time_in_millis() < TIME_MARGIN_MS:
                _continue(batch_id, context)
                return
    state["ingested"] = True
    if _checkpoint(store, batch, sender, state) and store.claim_finalize(batch_id):
        start_finalizer(batch_id)


def _checkpoint(store: batches.BatchStore, batch: dict, sender: "_Sender", state: dict) -> bool:
    """Send and store what is buffered, then record progress. False when this ingest must stop:
    another ingest of the same batch moved on."""
    if not sender.cancelled and store.get(batch["id"])["status"] == batches.CANCELLING:
        sender.cancel()
    sender.flush()
    if state["enqueued"]:
        store.start(batch["id"])
    if not store.checkpoint(batch["id"], batch["offset"], **state):
        return False
    batch.update(state)
    return True


def _more_lines_than(reader: "_Reader", limit: int) -> bool:
    """Whether the file holds more than ``limit`` non-blank lines (read twice only when it may)."""
    if reader.newlines() < limit:
        return False
    return sum(1 for _, _, raw in reader.lines(0) if raw.strip()) > limit


def _refuse(store: batches.BatchStore, batch: dict, code: str, message: str) -> None:
    """Fail the batch before any line runs (the finalizer ends it failed with this error)."""
    logger.warning("batch refused", extra={"code": code})
    refused = {"code": code, "message": message}
    if store.checkpoint(batch["id"], 0, ingested=True, refused=refused) and store.claim_finalize(batch["id"]):
        start_finalizer(batch["id"])


def _continue(batch_id: str, context) -> None:
    logger.info("handing the rest of the file to a new invocation")
    aws.client("lambda").invoke(
        FunctionName=context.invoked_function_arn,
        InvocationType="Event",
        Payload=json.dumps({"xjobs_ingest": {"batch_id": batch_id}}).encode(),
    )


def start_finalizer(batch_id: str) -> None:
    aws.client("lambda").invoke(
        FunctionName=get_settings().batch_finalize_function,
        InvocationType="Event",
        Payload=json.dumps({"batch_id": batch_id}).encode(),
    )


def _store() -> batches.BatchStore:
    settings = get_settings()
    return batches.BatchStore(settings.batches_table, settings.batch_items_table)


@dataclass
class _Line:
    line: int  # its place among the non-blank lines: orders the results
    number: int  # where it is in the file (blank lines count): named in its error line
    custom_id: str | None
    body: dict | None
    bad: BadLine | None


def _read_line(line: int, number: int, raw: bytes) -> _Line:
    """A line parsed and validated; whatever is wrong with it is its own error, never the batch's."""
    if len(raw) > MAX_LINE_BYTES:
        bad = BadLine("line_too_long", f"the line is longer than {MAX_LINE_BYTES} bytes")
        return _Line(line, number, custom_id_of(raw[:MAX_LINE_BYTES]), None, bad)
    try:
        custom_id, body = parse_line(raw)
    except BadLine as bad:
        return _Line(line, number, custom_id_of(raw), None, bad)
    return _Line(line, number, custom_id, body, None)


class _Reader:
    """The lines of an S3 object with their byte offsets, read in chunks from any offset."""

    def __init__(self, bucket: str, key: str):
        self.bucket, self.key = bucket, key

    def newlines(self) -> int:
        """How many newline bytes the object holds."""
        body = aws.client("s3").get_object(Bucket=self.bucket, Key=self.key)["Body"]
        return sum(chunk.count(b"\n") for chunk in body.iter_chunks(CHUNK_BYTES))

    def lines(self, offset: int, stop: int | None = None):
        args = {"Bucket": self.bucket, "Key": self.key}
        if offset:
            args["Range"] = f"bytes={offset}-" if stop is None else f"bytes={offset}-{stop - 1}"
        elif stop is not None:
            args["Range"] = f"bytes=0-{stop - 1}"
        try:
            body = aws.client("s3").get_object(**args)["Body"]
        except ClientError as exc:
            # S3 has no modeled InvalidRange exception: it comes as a ClientError with that code.
            if exc.response["Error"]["Code"] == "InvalidRange":
                return  # nothing after the offset: the file ended exactly there
            raise
        pending = b""
        position = offset
        skipped = 0  # bytes of the pending line dropped from memory (they still count in offsets)
        for chunk in body.iter_chunks(CHUNK_BYTES):
            pending += chunk
            while True:
                newline = pending.find(b"\n")
                if newline < 0:
                    break
                raw, pending = pending[:newline], pending[newline + 1 :]
                end = position + skipped + newline + 1
                yield position, end, raw
                position, skipped = end, 0
            if len(pending) > MAX_LINE_BYTES:
                # An endless line: keep its head for the error line, skip the rest up to its end.
                skipped += len(pending) - (MAX_LINE_BYTES + 1)
                pending = pending[: MAX_LINE_BYTES + 1]
        if pending:
            yield position, position + skipped + len(pending), pending


class _Sender:
    """Lines into work messages (SendMessageBatch) and error results (stored and counted), after their
    custom_ids are claimed in DynamoDB a chunk at a time."""

    def __init__(self, batch: dict, settings, store: batches.BatchStore, state: dict):
        self.batch = batch
        self.settings = settings
        self.store = store
        self.state = state
        self.cancelled = batch["status"] == batches.CANCELLING
        self.tenant = str(batch["tenant"])
        self.pending: list[_Line] = []
        self.pending_bytes = 0
        self.messages: list[dict] = []
        self.queued: list[_Line] = []  # the lines of the messages not yet sent
        self.message_bytes = 0
        self.errors: list[dict] = []
        self.codes: list[str] = []  # of the error lines, for the BatchLines metric

    def add(self, line: int, number: int, raw: bytes) -> None:
        self.pending.append(_read_line(line, number, raw))
        self.pending_bytes += min(len(raw), MAX_LINE_BYTES)
        if len(self.pending) >= CLAIM_LINES or self.pending_bytes >= CLAIM_BYTES:
            self._place()

    def cancel(self) -> None:
        """From now on no line is sent: those waiting to be become ``batch_cancelled`` error lines."""
        self.cancelled = True
        for line in self.queued:
            self._reject(line, _CANCELLED)
        self.state["enqueued"] -= len(self.queued)
        self.messages, self.queued, self.message_bytes = [], [], 0

    def flush(self) -> None:
        self._place()
        self._send()
        if self.errors:
            left = self.store.record(self.errors, count_seconds=COUNT_SECONDS)
            if left:
                raise RuntimeError(
                    f"{len(left)} error lines stored but not counted: the batch's item is contended"
                )
            for code, count in Counter(self.codes).items():
                metric("BatchLines", count, Outcome=code)
            self.errors, self.codes = [], []

    def _place(self) -> None:
        """Claim the custom_ids of the pending lines; each line is then sent, or an error line."""
        lines, self.pending, self.pending_bytes = self.pending, [], 0
        if not self.cancelled:
            self._find_duplicates([line for line in lines if line.bad is None])
        for line in lines:
            if line.bad is not None:
                self._reject(line, line.bad)
            elif self.cancelled:
                self._reject(line, _CANCELLED)
            else:
                self._enqueue(line)

    def _find_duplicates(self, lines: list[_Line]) -> None:
        first: dict[str, _Line] = {}
        for line in lines:
            if line.custom_id in first:
                line.bad = _duplicate(line.custom_id, first[line.custom_id].number)
            else:
                first[line.custom_id] = line

        claims = [(custom_id, line.line, line.number) for custom_id, line in first.items()]
        earlier = self.store.claim_custom_ids(self.batch["id"], claims, self.batch["retain_until"])
        for custom_id, number in earlier.items():
            first[custom_id].bad = _duplicate(custom_id, number)

    def _enqueue(self, line: _Line) -> None:
        message = {
            "batch_id": self.batch["id"],
            "line": line.line,
            "custom_id": line.custom_id,
            "tokens": estimated_tokens(line.body),
            "expires_at": self.batch["expires_at"],
        }
        encoded = json.dumps(line.body, separators=(",", ":"))
        if len(encoded) > INLINE_BODY_BYTES:
            key = batches.body_key(self.batch["id"], line.line)
            aws.client("s3").put_object(Bucket=self.settings.data_bucket, Key=key, Body=encoded.encode())
            message["body_key"] = key
        else:
            message["body"] = line.body
        payload = json.dumps(message, separators=(",", ":"))
        if len(self.messages) == 10 or self.message_bytes + len(payload) > SEND_BATCH_BYTES:
            self._send()
        # The tenant is the message group: SQS fair queues deliver a quiet tenant's requests before
        # those of a tenant with a backlog.
        self.messages.append({"Id": str(line.line), "MessageBody": payload, "MessageGroupId": self.tenant})
        self.queued.append(line)
        self.message_bytes += len(payload)
        self.state["enqueued"] += 1

    def _reject(self, line: _Line, bad: BadLine) -> None:
        self.errors.append(
            {
                "batch_id": self.batch["id"],
                "line": line.line,
                "custom_id": line.custom_id or "",
                "ok": False,
                "outcome": error_line(
                    batches.request_id(), line.custom_id, bad.code, bad.message, line.number
                ),
                "expires_at": self.batch["retain_until"],
            }
        )
        self.state["ingest_errors"] += 1
        self.codes.append(bad.code)

    def _send(self) -> None:
        entries = self.messages
        self.messages, self.queued, self.message_bytes = [], [], 0
        if entries:
            # The tenant has work waiting from now on: the workers running other tenants' work leave it
            # its share at once, before its first request reaches a worker (limiter.FairShare).
            fair_share().heartbeat(self.tenant)
        for _ in range(5):
            if not entries:
                return
            reply = aws.client("sqs").send_message_batch(
                QueueUrl=self.settings.work_queue_url, Entries=entries
            )
            failed = {f["Id"] for f in reply.get("Failed", [])}
            entries = [e for e in entries if e["Id"] in failed]
            if entries:
                logger.warning("SQS refused messages; sending them again", extra={"messages": len(entries)})
                time.sleep(0.2)
        if entries:
            raise RuntimeError(f"SQS refused {len(entries)} messages five times")


_CANCELLED = BadLine("batch_cancelled", "the batch was cancelled before this request ran")


def _duplicate(custom_id: str, first: int) -> BadLine:
    return BadLine("duplicate_custom_id", f"custom_id {custom_id!r} appears on an earlier line ({first})")
