"""Chat batches in DynamoDB: the batch record, its counters, and one result item per request.

A batch moves validating -> in_progress -> finalizing -> completed | expired | cancelled, or
validating -> failed when its file holds nothing to run; cancel moves it to cancelling first. Every
move is a conditional write on the statuses it may come from, as for jobs.

Exactly one result per request: a request's result item (batch id, line) is written with
``attribute_not_exists(outcome)`` in the same transaction that counts it on the batch, so a second
delivery of the same message can neither write a second result nor count one twice. The batch is
finished when the ingest has enqueued its last line and ``done = enqueued``; the one caller whose
conditional write moves it to finalizing hands it to the finalizer.
"""

from __future__ import annotations  # the store has a method named list

import random
import time
from typing import Any

from botocore.exceptions import ClientError

from . import aws
from .ids import new_id
from .jobs import conditional_failure, plain
from .observability import logger, metric

VALIDATING = "validating"
IN_PROGRESS = "in_progress"
FINALIZING = "finalizing"
COMPLETED = "completed"
FAILED = "failed"
EXPIRED = "expired"
CANCELLING = "cancelling"
CANCELLED = "cancelled"
RUNNING = (VALIDATING, IN_PROGRESS, CANCELLING)
TERMINAL = (COMPLETED, FAILED, EXPIRED, CANCELLED)
STATUSES = (VALIDATING, IN_PROGRESS, FINALIZING, CANCELLING) + TERMINAL

ENDPOINT = "/v1/chat/completions"
COMPLETION_WINDOW = "24h"
RETENTION_SECONDS = 30 * 86400
NOTIFIED_FLAG = "notified_at"
MAX_INLINE_RESULT_BYTES = 300_000
TRANSACTION_RESULTS = 50  # with one counter item per batch, well under DynamoDB's 100 items
TRANSACTION_BYTES = 3_000_000  # under DynamoDB's 4 MB per transaction
MAX_TRANSACTION_TRIES = 8


class BatchNotFound(LookupError):
    pass


class BatchConflict(RuntimeError):
    pass


def output_key(batch_id: str) -> str:
    return f"batches/{batch_id}/output.jsonl"


def errors_key(batch_id: str) -> str:
    return f"batches/{batch_id}/errors.jsonl"


def body_key(batch_id: str, line: int) -> str:
    return f"batches/{batch_id}/bodies/{line}.json"


def result_key(batch_id: str, line: int) -> str:
    return f"batches/{batch_id}/results/{line}.json"


def new_batch(
    batch_id: str,
    *,
    tenant: str,
    input_key: str,
    input_file_id: str | None,
    window_seconds: int,
    metadata: dict,
    completion_window: str = COMPLETION_WINDOW,
) -> dict:
    now = int(time.time())
    return {
        "id": batch_id,
        "tenant": tenant,
        "endpoint": ENDPOINT,
        "input_key": input_key,
        "input_file_id": input_file_id,
        "completion_window": completion_window,
        "status": VALIDATING,
        "created_at": now,
        "expires_at": now + window_seconds,
        "metadata": metadata,
        "offset": 0,
        "lines": 0,
        "physical_lines": 0,
        "enqueued": 0,
        "ingest_errors": 0,
        "done": 0,
        "failed": 0,
        "ingested": False,
        "updated_at": now,
        "retain_until": now + RETENTION_SECONDS,
    }


class BatchStore:
    def __init__(self, batches_table: str, items_table: str):
        self.batches_table = batches_table
        self.items_table = items_table
        self.table = aws.table(batches_table)
        self.items = aws.table(items_table)

    # ---- the batch record --------------------------------------------------------------------
    def create(self, batch: dict) -> bool:
        """False if a batch with this id exists already (a second S3 event for the same upload)."""
        try:
            self.table.put_item(Item=batch, ConditionExpression="attribute_not_exists(id)")
        except ClientError as exc:
            if conditional_failure(exc):
                return False
            raise
        logger.info("batch created", extra={"batch_id": batch["id"], "tenant": batch["tenant"]})
        metric("BatchesCreated")
        return True

    def get(self, batch_id: str) -> dict | None:
        item = self.table.get_item(Key={"id": batch_id}, ConsistentRead=True).get("Item")
        return plain(item) if item else None

    def get_for_tenant(self, batch_id: str, tenant: str) -> dict:
        batch = self.get(batch_id)
        if batch is None or batch["tenant"] != tenant:
            raise BatchNotFound(batch_id)
        return batch

    def list(self, tenant: str, *, limit: int, after: str | None) -> tuple[list[dict], bool]:
        """The tenant's batches, newest first; ``after`` is the id of the last batch of the previous page."""
        from boto3.dynamodb.conditions import Key  # boto3 is imported on first use (see aws.py)

        condition = Key("tenant").eq(tenant)
        if after:
            condition = condition & Key("id").lt(after)
        reply = self.table.query(
            IndexName="by-tenant", KeyConditionExpression=condition, ScanIndexForward=False, Limit=limit + 1
        )
        items = [plain(i) for i in reply["Items"]]
        return items[:limit], len(items) > limit

    def checkpoint(self, batch_id: str, old_offset: int, **progress: Any) -> bool:
        """Record how far the ingest got (absolute values, so a re-run cannot count twice).

        Conditional on the offset the caller started from: False if another ingest moved on.
        """
        names = {"#offset": "offset", "#status": "status"}
        values: dict[str, Any] = {":old": old_offset, ":validating": VALIDATING, ":running": IN_PROGRESS}
        sets = []
        for field, value in progress.items():
            names[f"#{field}"] = field
            values[f":{field}"] = value
            sets.append(f"#{field} = :{field}")
        sets.append("updated_at = :updated_at")  # the sweeper's sign of life (sweeper.py)
        values[":updated_at"] = _now()
        values[":cancelling"] = CANCELLING
        condition = "#offset = :old AND #status IN (:validating, :running, :cancelling)"
        return self._update_if(
            Key={"id": batch_id},
            UpdateExpression="SET " + ", ".join(sets),
            ConditionExpression=condition,
            ExpressionAttributeNames=names,
            ExpressionAttributeValues=values,
        )

    def start(self, batch_id: str) -> None:
        """validating -> in_progress, once the first requests are on their way."""
        self._changed_if(
            batch_id,
            IN_PROGRESS,
            Key={"id": batch_id},
            UpdateExpression="SET #status = :running, in_progress_at = :now",
            ConditionExpression="#status = :validating",
            ExpressionAttributeNames={"#status": "status"},
            ExpressionAttributeValues={":running": IN_PROGRESS, ":validating": VALIDATING, ":now": _now()},
        )

    def claim_finalize(self, batch_id: str) -> bool:
        """Move a batch whose every request is accounted for to finalizing: True for the one winner."""
        return self._changed_if(
            batch_id,
            FINALIZING,
            Key={"id": batch_id},
            UpdateExpression="SET #status = :finalizing, finalizing_at = :now",
            ConditionExpression=(
                "ingested = :yes AND done = enqueued AND #status IN (:validating, :running, :cancelling)"
            ),
            ExpressionAttributeNames={"#status": "status"},
            ExpressionAttributeValues={
                ":finalizing": FINALIZING,
                ":now": _now(),
                ":yes": True,
                ":validating": VALIDATING,
                ":running": IN_PROGRESS,
                ":cancelling": CANCELLING,
            },
        )

    def finish(self, batch_id: str, status: str, **fields: Any) -> bool:
        """finalizing -> a terminal status (or a batch with nothing to run: validating -> failed)."""
        names = {"#status": "status"}
        values: dict[str, Any] = {":status": status, ":at": _now(), ":finalizing": FINALIZING}
        sets = ["#status = :status", f"{status}_at = :at"]
        for field, value in fields.items():
            names[f"#{field}"] = field
            values[f":{field}"] = value
            sets.append(f"#{field} = :{field}")
        return self._changed_if(
            batch_id,
            status,
            Key={"id": batch_id},
            UpdateExpression="SET " + ", ".join(sets),
            ConditionExpression="#status = :finalizing",
            ExpressionAttributeNames=names,
            ExpressionAttributeValues=values,
        )

    def cancel(self, batch_id: str, tenant: str) -> dict:
        """Ask a running batch to stop: it finalizes with what is done. 409 once it has ended."""
        self.get_for_tenant(batch_id, tenant)
        try:
            reply = self.table.update_item(
                Key={"id": batch_id},
                UpdateExpression="SET #status = :cancelling, cancelling_at = :now, updated_at = :now",
                ConditionExpression="#status IN (:validating, :running)",
                ExpressionAttributeNames={"#status": "status"},
                ExpressionAttributeValues={
                    ":cancelling": CANCELLING,
                    ":now": _now(),
                    ":validating": VALIDATING,
                    ":running": IN_PROGRESS,
                },
                ReturnValues="ALL_NEW",
                ReturnValuesOnConditionCheckFailure="ALL_OLD",
            )
        except ClientError as exc:
            if not conditional_failure(exc):
                raise
            current = self.get(batch_id)
            if current["status"] in (CANCELLING, FINALIZING) and current.get("cancelling_at"):
                return current  # cancelling already: asking again changes nothing
            raise BatchConflict(f"batch {batch_id} is already {current['status']}") from None
        logger.info(
            "batch status changed", extra={"batch_id": batch_id, "tenant": tenant, "status": CANCELLING}
        )
        return plain(reply["Attributes"])

    def note_restart(self, batch: dict) -> int | None:
        """Count a restart of stalled work (sweeper.py) and give it a fresh ``updated_at``; None if the
        batch moved (changed status or made progress) since ``batch`` was read."""
        try:
            reply = self.table.update_item(
                Key={"id": batch["id"]},
                UpdateExpression="SET updated_at = :now ADD restarts :one",
                ConditionExpression="#status = :status AND updated_at = :seen",
                ExpressionAttributeNames={"#status": "status"},
                ExpressionAttributeValues={
                    ":now": _now(),
                    ":one": 1,
                    ":status": batch["status"],
                    ":seen": batch["updated_at"],
                },
                ReturnValues="UPDATED_NEW",
            )
        except ClientError as exc:
            if conditional_failure(exc):
                return None
            raise
        return int(reply["Attributes"]["restarts"])

    def fail_stalled(self, batch: dict, code: str, message: str) -> bool:
        """End a batch that stopped making progress: failed, with the reason as its error. Conditional on
        the batch being as ``batch`` saw it, so progress made meanwhile wins."""
        error = {"object": "list", "data": [{"code": code, "message": message, "param": None, "line": None}]}
        return self._changed_if(
            batch["id"],
            FAILED,
            Key={"id": batch["id"]},
            UpdateExpression="SET #status = :failed, failed_at = :now, #errors = :errors",
            ConditionExpression="#status = :status AND updated_at = :seen",
            ExpressionAttributeNames={"#status": "status", "#errors": "errors"},
            ExpressionAttributeValues={
                ":failed": FAILED,
                ":now": _now(),
                ":errors": error,
                ":status": batch["status"],
                ":seen": batch["updated_at"],
            },
        )

    def stalled(self, statuses: tuple[str, ...], updated_before: int):
        """Batches in one of ``statuses`` with no change since ``updated_before``. A scan: batches are few
        (one holds thousands of requests) and kept 30 days."""
        from boto3.dynamodb.conditions import Attr

        condition = Attr("status").is_in(list(statuses)) & Attr("updated_at").lt(updated_before)
        args: dict[str, Any] = {"FilterExpression": condition, "ConsistentRead": True}
        while True:
            reply = self.table.scan(**args)
            for item in reply["Items"]:
                yield plain(item)
            if "LastEvaluatedKey" not in reply:
                return
            args["ExclusiveStartKey"] = reply["LastEvaluatedKey"]

    def touch(self, batch_id: str) -> None:
        """A sign of life from a long finalizer, so the sweeper does not take it for stalled."""
        self._update_if(
            Key={"id": batch_id},
            UpdateExpression="SET updated_at = :now",
            ConditionExpression="#status = :finalizing",
            ExpressionAttributeNames={"#status": "status"},
            ExpressionAttributeValues={":now": _now(), ":finalizing": FINALIZING},
        )

    def claim(self, batch_id: str, flag: str) -> bool:
        """Set ``flag`` once; True for the one caller that set it. Guards one-time side effects."""
        return self._update_if(
            Key={"id": batch_id},
            UpdateExpression="SET #flag = :now",
            ConditionExpression="attribute_not_exists(#flag)",
            ExpressionAttributeNames={"#flag": flag},
            ExpressionAttributeValues={":now": _now()},
        )

    def _changed_if(self, batch_id: str, status: str, **request: Any) -> bool:
        """A conditional status change: one log line when it happens; an ended batch counts in
        BatchesFinished by status."""
        request["UpdateExpression"] += ", updated_at = :updated_at"
        request["ExpressionAttributeValues"][":updated_at"] = _now()
        if not self._update_if(**request):
            return False
        logger.info("batch status changed", extra={"batch_id": batch_id, "status": status})
        if status in TERMINAL:
            metric("BatchesFinished", Status=status)
        return True

    def _update_if(self, **request: Any) -> bool:
        try:
            self.table.update_item(**request)
        except ClientError as exc:
            if conditional_failure(exc):
                return False
            raise
        return True

    # ---- results -----------------------------------------------------------------------------
    def prefetch(self, keys: list[tuple[str, int]]) -> tuple[dict[tuple[str, int], dict], dict[str, dict]]:
        """For a worker's messages, in one consistent BatchGetItem: what is known of each request
        ({"done", "attempts"} by (batch id, line)) and the batches they belong to."""
        from boto3.dynamodb.types import TypeDeserializer

        deserialize = TypeDeserializer().deserialize
        known: dict[tuple[str, int], dict] = {}
        found: dict[str, dict] = {}
        client = aws.client("dynamodb")
        wanted = [
            (self.items_table, {"batch_id": {"S": b}, "line": {"N": str(n)}}) for b, n in dict.fromkeys(keys)
        ]
        wanted += [(self.batches_table, {"id": {"S": b}}) for b in dict.fromkeys(b for b, _ in keys)]
        while wanted:
            chunk, wanted = wanted[:100], wanted[100:]
            request: dict | None = {}
            for table, key in chunk:
                request.setdefault(table, {"Keys": [], "ConsistentRead": True})["Keys"].append(key)
            while request:
                reply = client.batch_get_item(RequestItems=request)
                for item in reply["Responses"].get(self.items_table, []):
                    known[(item["batch_id"]["S"], int(item["line"]["N"]))] = {
                        "attempts": int(item.get("attempts", {}).get("N", 0)),
                        "done": "outcome" in item,
                    }
                for item in reply["Responses"].get(self.batches_table, []):
                    found[item["id"]["S"]] = plain({k: deserialize(v) for k, v in item.items()})
                request = reply.get("UnprocessedKeys") or None
        return known, found

    def record(self, results: list[dict]) -> list[dict]:
        """Store result lines and count them on their batches, atomically, a transaction per chunk.

        ``results``: {"batch_id", "line", "custom_id", "ok", "outcome", "expires_at"}. A request that has
        its result already (a repeated delivery) is left as it is and not counted again. Returns the
        results that were new.
        """
        # A transaction may not name an item twice: of two results for one request, the first stands.
        unique, seen = [], set()
        for r in results:
            if (r["batch_id"], r["line"]) not in seen:
                seen.add((r["batch_id"], r["line"]))
                unique.append(r)
        recorded: list[dict] = []
        for chunk in _transaction_chunks(unique):
            for attempt in range(MAX_TRANSACTION_TRIES):
                if not chunk:
                    break
                if attempt:
                    # Another transaction held the batch's counter item: wait a moment, jittered.
                    logger.info("result transaction retried", extra={"attempt": attempt + 1})
                    time.sleep(random.uniform(0.01, 0.05 * 2**attempt))
                try:
                    aws.client("dynamodb").transact_write_items(TransactItems=self._record_items(chunk))
                except ClientError as exc:
                    if exc.response["Error"]["Code"] != "TransactionCanceledException":
                        raise
                    reasons = exc.response.get("CancellationReasons") or []
                    # The result items come first in the transaction: drop those recorded already.
                    chunk = [
                        r
                        for r, reason in zip(chunk, reasons, strict=False)
                        if reason.get("Code") != "ConditionalCheckFailed"
                    ]
                    continue
                recorded += chunk
                break
            else:
                raise RuntimeError("results could not be recorded: DynamoDB kept cancelling the transaction")
        return recorded

    def _record_items(self, chunk: list[dict]) -> list[dict]:
        items = []
        counts: dict[str, list[int]] = {}
        for r in chunk:
            items.append(
                {
                    "Update": {
                        "TableName": self.items_table,
                        "Key": {"batch_id": {"S": r["batch_id"]}, "line": {"N": str(r["line"])}},
                        "UpdateExpression": (
                            "SET outcome = :outcome, ok = :ok, custom_id = :cid, expires_at = :exp"
                        ),
                        "ConditionExpression": "attribute_not_exists(outcome)",
                        "ExpressionAttributeValues": {
                            ":outcome": {"S": r["outcome"]},
                            ":ok": {"BOOL": r["ok"]},
                            ":cid": {"S": r["custom_id"]},
                            ":exp": {"N": str(r["expires_at"])},
                        },
                    }
                }
            )
            done_failed = counts.setdefault(r["batch_id"], [0, 0])
            done_failed[0] += 1
            done_failed[1] += 0 if r["ok"] else 1
        for batch_id, (done, failed) in counts.items():
            items.append(
                {
                    "Update": {
                        "TableName": self.batches_table,
                        "Key": {"id": {"S": batch_id}},
                        "UpdateExpression": "ADD done :done, failed :failed",
                        "ExpressionAttributeValues": {
                            ":done": {"N": str(done)},
                            ":failed": {"N": str(failed)},
                        },
                    }
                }
            )
        return items

    def count_attempt(self, batch_id: str, line: int, expires_at: int) -> int:
        """Count one more failed xAI attempt of a request; returns the attempts so far."""
        reply = self.items.update_item(
            Key={"batch_id": batch_id, "line": line},
            UpdateExpression="ADD attempts :one SET expires_at = :exp",
            ExpressionAttributeValues={":one": 1, ":exp": expires_at},
            ReturnValues="UPDATED_NEW",
        )
        return int(reply["Attributes"]["attempts"])

    def results(self, batch_id: str):
        """Every result item of the batch, in line order, a page at a time."""
        from boto3.dynamodb.conditions import Key

        start = None
        while True:
            args: dict[str, Any] = {
                "KeyConditionExpression": Key("batch_id").eq(batch_id),
                "ConsistentRead": True,
            }
            if start:
                args["ExclusiveStartKey"] = start
            reply = self.items.query(**args)
            for item in reply["Items"]:
                if "outcome" in item:
                    yield plain(item)
            start = reply.get("LastEvaluatedKey")
            if not start:
                return


def _transaction_chunks(results: list[dict]):
    """Chunks that fit a transaction: at most 100 items and 4 MB (a counter item per batch is added)."""
    chunk: list[dict] = []
    size = 0
    for r in results:
        if chunk and (len(chunk) >= TRANSACTION_RESULTS or size + len(r["outcome"]) > TRANSACTION_BYTES):
            yield chunk
            chunk, size = [], 0
        chunk.append(r)
        size += len(r["outcome"])
    if chunk:
        yield chunk


def request_id() -> str:
    return new_id("batch_req")


def _now() -> int:
    return int(time.time())
