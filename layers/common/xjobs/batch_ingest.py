"""Ingest: a batch input file in S3, streamed line by line into the work queue.

The file is read in chunks (never whole in memory); each line is validated; good lines become SQS
messages (SendMessageBatch; bodies too large for a message travel as S3 objects), bad lines become
error results at once. Progress is checkpointed on the batch record with absolute counts, so an
ingest that crashes or runs out of time resumes from its last checkpoint: a resent line is still
run once (the worker skips a request that has its result) and counted once (see batches.py).
Duplicate custom_ids are found with a set of 8-byte digests: about 70 bytes per line, the only
memory that grows with the file.
"""

import hashlib
import json
import time
import urllib.parse
from collections import Counter

from botocore.exceptions import ClientError

from . import aws, batches
from .batch_lines import BadLine, custom_id_of, error_line, estimated_tokens, parse_line
from .observability import logger, metric
from .settings import get_settings

CHUNK_BYTES = 1 << 20
MAX_LINE_BYTES = 8 << 20
INLINE_BODY_BYTES = 64 * 1024  # SQS bills per 64 KB; a larger body goes to S3
SEND_BATCH_BYTES = 900 * 1024  # SendMessageBatch carries at most 1 MiB in all
CHECKPOINT_LINES = 500
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
    seen = _seen_custom_ids(reader, batch["offset"])
    state = {k: batch.get(k, 0) for k in ("offset", "lines", "physical_lines", "enqueued", "ingest_errors")}
    sender = _Sender(batch, settings)
    since_checkpoint = 0
    for _, end, raw in reader.lines(batch["offset"]):
        state["physical_lines"] += 1
        if raw.strip():
            state["lines"] += 1
            line = state["lines"]
            try:
                custom_id, body = parse_line(raw) if len(raw) <= MAX_LINE_BYTES else _too_long()
                digest = _digest(custom_id)
                if digest in seen:
                    raise BadLine(
                        "duplicate_custom_id", f"custom_id {custom_id!r} appears on an earlier line"
                    )
                seen.add(digest)
                sender.enqueue(line, custom_id, body)
                state["enqueued"] += 1
            except BadLine as bad:
                sender.reject(line, state["physical_lines"], custom_id_of(raw[:MAX_LINE_BYTES]), bad)
                state["ingest_errors"] += 1
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
    """Flush what is buffered and record progress. False when this ingest must stop: the batch was
    cancelled (the lines not yet sent are not part of it), or another ingest moved on."""
    cancelled = store.get(batch["id"])["status"] == batches.CANCELLING
    if cancelled:
        dropped = sender.drop()
        state.update(ingested=True, lines=state["lines"] - dropped, enqueued=state["enqueued"] - dropped)
    sender.flush()
    if state["enqueued"]:
        store.start(batch["id"])
    if not store.checkpoint(batch["id"], batch["offset"], **state):
        return False
    batch.update(state)
    if cancelled:
        if store.claim_finalize(batch["id"]):
            start_finalizer(batch["id"])
        return False
    return True


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


def _digest(custom_id: str) -> int:
    return int.from_bytes(hashlib.blake2b(custom_id.encode(), digest_size=8).digest(), "big")


def _too_long():
    raise BadLine("line_too_long", f"the line is longer than {MAX_LINE_BYTES} bytes")


def _seen_custom_ids(reader: "_Reader", offset: int) -> set[int]:
    """The custom_ids of the lines before ``offset``, for a resumed ingest to keep finding duplicates."""
    seen: set[int] = set()
    if offset:
        for _, _, raw in reader.lines(0, stop=offset):
            if raw.strip():
                try:
                    custom_id, _ = parse_line(raw) if len(raw) <= MAX_LINE_BYTES else _too_long()
                except BadLine:
                    continue
                seen.add(_digest(custom_id))
    return seen


class _Reader:
    """The lines of an S3 object with their byte offsets, read in chunks from any offset."""

    def __init__(self, bucket: str, key: str):
        self.bucket, self.key = bucket, key

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
    """Buffers work messages into SendMessageBatch calls and error results into BatchWriteItem."""

    def __init__(self, batch: dict, settings):
        self.batch = batch
        self.settings = settings
        self.messages: list[dict] = []
        self.message_bytes = 0
        self.errors: list[dict] = []
        self.codes: list[str] = []  # of the error lines, for the BatchLines metric

    def enqueue(self, line: int, custom_id: str, body: dict) -> None:
        message = {
            "batch_id": self.batch["id"],
            "line": line,
            "custom_id": custom_id,
            "tokens": estimated_tokens(body),
            "expires_at": self.batch["expires_at"],
        }
        encoded = json.dumps(body, separators=(",", ":"))
        if len(encoded) > INLINE_BODY_BYTES:
            key = batches.body_key(self.batch["id"], line)
            aws.client("s3").put_object(Bucket=self.settings.data_bucket, Key=key, Body=encoded.encode())
            message["body_key"] = key
        else:
            message["body"] = body
        payload = json.dumps(message, separators=(",", ":"))
        if len(self.messages) == 10 or self.message_bytes + len(payload) > SEND_BATCH_BYTES:
            self._send()
        self.messages.append({"Id": str(line), "MessageBody": payload})
        self.message_bytes += len(payload)

    def reject(self, line: int, line_number: int, custom_id: str | None, bad: BadLine) -> None:
        """``line`` orders the results; ``line_number`` is where it is in the file (blank lines count)."""
        self.errors.append(
            {
                "batch_id": self.batch["id"],
                "line": line,
                "custom_id": custom_id or "",
                "ok": False,
                "outcome": error_line(batches.request_id(), custom_id, bad.code, bad.message, line_number),
                "expires_at": self.batch["retain_until"],
            }
        )
        self.codes.append(bad.code)

    def drop(self) -> int:
        """Forget the messages not yet sent; returns how many."""
        dropped = len(self.messages)
        self.messages, self.message_bytes = [], 0
        return dropped

    def flush(self) -> None:
        self._send()
        if self.errors:
            with aws.table(self.settings.batch_items_table).batch_writer() as writer:
                for item in self.errors:
                    writer.put_item(Item=item)
            for code, count in Counter(self.codes).items():
                metric("BatchLines", count, Outcome=code)
            self.errors, self.codes = [], []

    def _send(self) -> None:
        entries = self.messages
        self.messages, self.message_bytes = [], 0
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
