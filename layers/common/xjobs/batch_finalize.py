"""Fan-in: the one finalizer of a batch writes output.jsonl and errors.jsonl, ends the batch and
announces it once on SNS.

Results are read from DynamoDB a page at a time in line order (the input's order) and streamed into
S3 multipart uploads, so memory stays bounded by a part however large the batch. A finalizer that
runs again (Lambda retries an asynchronous invocation) rewrites the same files and publishes
nothing twice.
"""

import json
import time

from . import aws, batches, notify
from .observability import logger
from .settings import get_settings
from .views import batch_view

PART_BYTES = 8 << 20  # S3 parts are at least 5 MiB, except the last
TOUCH_EVERY = 5_000  # results written between two signs of life to the sweeper


def finalize(batch_id: str) -> dict | None:
    settings = get_settings()
    store = batches.BatchStore(settings.batches_table, settings.batch_items_table)
    batch = store.get(batch_id)
    if batch is None:
        return None
    logger.append_keys(batch_id=batch_id, tenant=batch["tenant"])
    if batch["status"] == batches.FINALIZING:
        counts = _write_files(store, batch, settings.data_bucket)
        status, errors = _final_status(batch, counts)
        store.finish(
            batch_id,
            status,
            request_counts={
                "total": counts["ok"] + counts["failed"],
                "completed": counts["ok"],
                "failed": counts["failed"],
            },
            output_key=batches.output_key(batch_id),
            errors_key=batches.errors_key(batch_id),
            errors=errors,
        )
        batch = store.get(batch_id)
    if batch["status"] in batches.TERMINAL:
        _announce(store, batch, settings.topic_arn)
    return batch


def _final_status(batch: dict, counts: dict) -> tuple[str, dict | None]:
    if batch.get("refused"):
        return batches.FAILED, _errors(batch["refused"]["code"], batch["refused"]["message"])
    if batch.get("cancelling_at"):
        return batches.CANCELLED, None
    if counts["ok"] + counts["failed"] == 0:
        return batches.FAILED, _errors("empty_file", "the input file holds no request")
    if batch["enqueued"] == 0:
        return batches.FAILED, _errors("no_valid_lines", "no line of the input file is a valid request")
    if batch.get("finalizing_at", time.time()) > batch["expires_at"]:
        return batches.EXPIRED, None
    return batches.COMPLETED, None


def _errors(code: str, message: str) -> dict:
    return {"object": "list", "data": [{"code": code, "message": message, "param": None, "line": None}]}


def _write_files(store: batches.BatchStore, batch: dict, bucket: str) -> dict:
    output = _JsonlUpload(bucket, batches.output_key(batch["id"]))
    errors = _JsonlUpload(bucket, batches.errors_key(batch["id"]))
    counts = {"ok": 0, "failed": 0}
    try:
        for item in store.results(batch["id"]):
            line = item["outcome"]
            if line.startswith('{"s3_key":'):
                key = json.loads(line)["s3_key"]
                line = aws.client("s3").get_object(Bucket=bucket, Key=key)["Body"].read().decode()
            (output if item["ok"] else errors).write(line)
            counts["ok" if item["ok"] else "failed"] += 1
            if (counts["ok"] + counts["failed"]) % TOUCH_EVERY == 0:
                store.touch(batch["id"])
        output.close()
        errors.close()
    except Exception:
        output.abort()
        errors.abort()
        raise
    return counts


def _announce(store: batches.BatchStore, batch: dict, topic_arn: str) -> None:
    """Once (see notify.announce_once): a finalizer that dies holding the lease leaves it to expire,
    and Lambda's retry of the asynchronous invocation announces."""
    event_id = notify.event_id(batch["id"])
    announced = notify.announce_once(
        store.table,
        {"id": batch["id"]},
        lambda: notify.publish(
            topic_arn,
            {"id": event_id, "batch": batch_view(batch, links=False)},
            event=f"batch.{batch['status']}",
            event_id=event_id,
            kind="chat.batch",
            status=batch["status"],
            tenant=batch["tenant"],
        ),
    )
    if announced:
        logger.info("batch announced", extra={"status": batch["status"]})


class _JsonlUpload:
    """Lines into one S3 object: a single PUT when small, a multipart upload of bounded parts if not."""

    def __init__(self, bucket: str, key: str):
        self.bucket, self.key = bucket, key
        self.buffer = bytearray()
        self.upload_id: str | None = None
        self.parts: list[dict] = []

    def write(self, line: str) -> None:
        self.buffer += line.encode()
        self.buffer += b"\n"
        if len(self.buffer) >= PART_BYTES:
            self._upload_part()

    def _upload_part(self) -> None:
        s3 = aws.client("s3")
        if self.upload_id is None:
            self.upload_id = s3.create_multipart_upload(
                Bucket=self.bucket, Key=self.key, ContentType="application/jsonl"
            )["UploadId"]
        number = len(self.parts) + 1
        reply = s3.upload_part(
            Bucket=self.bucket,
            Key=self.key,
            UploadId=self.upload_id,
            PartNumber=number,
            Body=bytes(self.buffer),
        )
        self.parts.append({"ETag": reply["ETag"], "PartNumber": number})
        self.buffer.clear()

    def close(self) -> None:
        s3 = aws.client("s3")
        if self.upload_id is None:
            s3.put_object(
                Bucket=self.bucket, Key=self.key, Body=bytes(self.buffer), ContentType="application/jsonl"
            )
            return
        if self.buffer:
            self._upload_part()
        s3.complete_multipart_upload(
            Bucket=self.bucket, Key=self.key, UploadId=self.upload_id, MultipartUpload={"Parts": self.parts}
        )

    def abort(self) -> None:
        if self.upload_id is not None:
            aws.client("s3").abort_multipart_upload(Bucket=self.bucket, Key=self.key, UploadId=self.upload_id)
