"""Chat batches in DynamoDB: the batch record, its counters, and one result item per request.

A batch moves validating -> in_progress -> finalizing -> completed | expired | cancelled, or
validating -> failed when its file holds nothing to run; cancel moves it to cancelling first. Every
move is a conditional write on the statuses it may come from, as for jobs.

Exactly one result per request: a request's result item (batch id, line) is written with
``attribute_not_exists(outcome)``, in the same transaction that counts it on the batch or, when the
batch's counter item is contended, alone and marked ``uncounted`` until a count transaction removes
the mark; so a second delivery of the same message can neither write a second result nor count one
twice, and no answer waits on the counter. Before its xAI call a request is leased (``lease_until``
on its item), so two copies of one message never both call. The batch is finished when the ingest
has read its last line and ``done = lines`` (the ingest's error lines are counted too); the one
caller whose conditional write moves it to finalizing hands it to the finalizer.
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
FAST_TRIES = 3  # transactions that store and count at once, before results are stored alone
COUNT_SECONDS = 10.0  # how long record() tries to count before leaving it to a later delivery


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
                "ingested = :yes AND done = #lines AND #status IN (:validating, :running, :cancelling)"
            ),
            ExpressionAttributeNames={"#status": "status", "#lines": "lines"},
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
        for attempt in range(MAX_TRANSACTION_TRIES):
            try:
                self.table.update_item(**request)
                return True
            except ClientError as exc:
                if conditional_failure(exc):
                    return False
                # A count transaction holds the batch's item for a moment.
                if exc.response["Error"]["Code"] != "TransactionConflictException":
                    raise
            time.sleep(random.uniform(0.01, 0.05 * 2**attempt))
        raise RuntimeError("the batch's item stayed in transactions")

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
                        "uncounted": "uncounted" in item,
                        "ok": item.get("ok", {}).get("BOOL", False),
                    }
                for item in reply["Responses"].get(self.batches_table, []):
                    found[item["id"]["S"]] = plain({k: deserialize(v) for k, v in item.items()})
                request = reply.get("UnprocessedKeys") or None
        return known, found

    def record(
        self, results: list[dict], recount: list[dict] = (), count_seconds: float = COUNT_SECONDS
    ) -> set[tuple[str, int]]:
        """Store result lines and count them on their batches; returns the (batch id, line) of those
        stored but not yet counted, for a later delivery of their messages to count.

        ``results``: {"batch_id", "line", "custom_id", "ok", "outcome", "expires_at"}. A request that has
        its result already (a repeated delivery) is left as it is and not counted again. ``recount``:
        {"batch_id", "line", "ok"} of results stored earlier and left uncounted.

        An answer is never lost to the counter: each chunk is first stored and counted in one
        transaction; when the batch's counter item stays contended, the results are stored alone
        (marked ``uncounted``, no counter touched) and counted after, each exactly once (the count
        transaction removes the mark, on the condition that it is there).
        """
        # A transaction may not name an item twice: of two results for one request, the first stands.
        unique, seen = [], set()
        for r in results:
            if (r["batch_id"], r["line"]) not in seen:
                seen.add((r["batch_id"], r["line"]))
                unique.append(r)
        to_count = {(r["batch_id"], r["line"]): r for r in recount}
        for chunk in _transaction_chunks(unique):
            # A request recorded already may have been left uncounted (a crash between the two
            # steps): counting it again is harmless, it is counted at most once.
            contended, existing = self._store_and_count(chunk)
            for r in contended:
                self._store_uncounted(r)
            for r in contended + existing:
                to_count.setdefault((r["batch_id"], r["line"]), r)
        return self._count(list(to_count.values()), count_seconds)

    def _store_and_count(self, chunk: list[dict]) -> tuple[list[dict], list[dict]]:
        """One transaction: the results (conditional on none stored) and their counts. Returns the
        results it could not record because the counter item stayed contended, and those that had a
        result already."""
        existing: list[dict] = []
        for attempt in range(FAST_TRIES):
            if not chunk:
                return [], existing
            if attempt:
                time.sleep(random.uniform(0.01, 0.05 * 2**attempt))
            reasons = self._transact([self._result_update(r) for r in chunk] + self._counter_updates(chunk))
            if reasons is None:
                return [], existing
            # Results already recorded (a repeated delivery) drop out; the rest go again.
            recorded = [reason.get("Code") == "ConditionalCheckFailed" for reason in reasons[: len(chunk)]]
            existing += [r for r, done in zip(chunk, recorded, strict=False) if done]
            chunk = [r for r, done in zip(chunk, recorded + [False] * len(chunk), strict=False) if not done]
        return chunk, existing

    def _store_uncounted(self, r: dict) -> None:
        """Store one result without counting it (no transaction, no counter item), unless the request
        has a result already."""
        update = self._result_update(r)["Update"]
        update["UpdateExpression"] += ", uncounted = :yes"
        update["ExpressionAttributeValues"][":yes"] = {"BOOL": True}
        for attempt in range(MAX_TRANSACTION_TRIES):
            try:
                aws.client("dynamodb").update_item(**update)
                return
            except ClientError as exc:
                if conditional_failure(exc):
                    return  # recorded already
                # Only a transaction recording this very request holds its item; wait for it.
                if exc.response["Error"]["Code"] != "TransactionConflictException":
                    raise
            time.sleep(random.uniform(0.01, 0.05 * 2**attempt))
        raise RuntimeError("a result could not be stored: its item stayed in a transaction")

    def _count(self, entries: list[dict], seconds: float) -> set[tuple[str, int]]:
        """Count stored, uncounted results, each once; returns those still uncounted after ``seconds``."""
        deadline = time.monotonic() + seconds
        left: set[tuple[str, int]] = set()
        for chunk in _transaction_chunks([{**e, "outcome": ""} for e in entries]):
            attempt = 0
            while chunk:
                items = [
                    {
                        "Update": {
                            "TableName": self.items_table,
                            "Key": {"batch_id": {"S": r["batch_id"]}, "line": {"N": str(r["line"])}},
                            "UpdateExpression": "REMOVE uncounted",
                            # ok as counted here: a result that is not this one is counted by its own
                            "ConditionExpression": "attribute_exists(uncounted) AND ok = :ok",
                            "ExpressionAttributeValues": {":ok": {"BOOL": r["ok"]}},
                        }
                    }
                    for r in chunk
                ]
                reasons = self._transact(items + self._counter_updates(chunk))
                if reasons is None:
                    break
                chunk = [
                    r
                    for r, reason in zip(chunk, reasons, strict=False)
                    if reason.get("Code") != "ConditionalCheckFailed"  # counted already
                ]
                attempt += 1
                pause = random.uniform(0.01, min(1.0, 0.05 * 2**attempt))
                if chunk and time.monotonic() + pause > deadline:
                    left |= {(r["batch_id"], r["line"]) for r in chunk}
                    break
                time.sleep(pause)
        return left

    def _transact(self, items: list[dict]) -> list[dict] | None:
        """Run a transaction: None when it went through; when cancelled, the reasons, one per item."""
        try:
            aws.client("dynamodb").transact_write_items(TransactItems=items)
        except ClientError as exc:
            if exc.response["Error"]["Code"] != "TransactionCanceledException":
                raise
            return exc.response.get("CancellationReasons") or [{}] * len(items)
        return None

    def _result_update(self, r: dict) -> dict:
        return {
            "Update": {
                "TableName": self.items_table,
                "Key": {"batch_id": {"S": r["batch_id"]}, "line": {"N": str(r["line"])}},
                "UpdateExpression": "SET outcome = :outcome, ok = :ok, custom_id = :cid, expires_at = :exp",
                "ConditionExpression": "attribute_not_exists(outcome)",
                "ExpressionAttributeValues": {
                    ":outcome": {"S": r["outcome"]},
                    ":ok": {"BOOL": r["ok"]},
                    ":cid": {"S": r["custom_id"]},
                    ":exp": {"N": str(r["expires_at"])},
                },
            }
        }

    def _counter_updates(self, chunk: list[dict]) -> list[dict]:
        counts: dict[str, list[int]] = {}
        for r in chunk:
            done_failed = counts.setdefault(r["batch_id"], [0, 0])
            done_failed[0] += 1
            done_failed[1] += 0 if r["ok"] else 1
        return [
            {
                "Update": {
                    "TableName": self.batches_table,
                    "Key": {"id": {"S": batch_id}},
                    "UpdateExpression": "ADD done :done, failed :failed",
                    "ExpressionAttributeValues": {":done": {"N": str(done)}, ":failed": {"N": str(failed)}},
                }
            }
            for batch_id, (done, failed) in counts.items()
        ]

    def claim_custom_ids(self, batch_id: str, lines: list[tuple[str, int, int]], expires_at: int) -> dict:
        """Claim custom_ids of the batch for their lines: (custom_id, line, file line number) each, the
        custom_ids distinct. Returns {custom_id: file line number of the earlier line that has it} for
        those claimed already by another line.

        One small item per custom_id, so the ingest keeps none in memory. A consistent read, then
        plain writes: safe because every run of the ingest reads the file in order from a checkpoint,
        so a custom_id is claimed for its first line (by this run or an earlier one) before any later
        line that repeats it is read.
        """
        from boto3.dynamodb.types import TypeSerializer

        def key(custom_id: str) -> dict:
            return {"batch_id": f"{batch_id}#custom_id#{custom_id}", "line": 0}

        serialize = TypeSerializer().serialize
        found: dict[str, tuple[int, int]] = {}
        client = aws.client("dynamodb")
        for start in range(0, len(lines), 100):
            keys = [{k: serialize(v) for k, v in key(c).items()} for c, _, _ in lines[start : start + 100]]
            request: dict | None = {self.items_table: {"Keys": keys, "ConsistentRead": True}}
            while request:
                reply = client.batch_get_item(RequestItems=request)
                for item in reply["Responses"].get(self.items_table, []):
                    custom_id = item["batch_id"]["S"].split("#custom_id#", 1)[1]
                    found[custom_id] = (int(item["first_line"]["N"]), int(item["first_number"]["N"]))
                request = reply.get("UnprocessedKeys") or None
        with self.items.batch_writer() as writer:
            for custom_id, line, number in lines:
                if custom_id not in found:
                    writer.put_item(
                        Item={
                            **key(custom_id),
                            "first_line": line,
                            "first_number": number,
                            "expires_at": expires_at,
                        }
                    )
        mine = {custom_id: line for custom_id, line, _ in lines}
        return {c: number for c, (line, number) in found.items() if line != mine[c]}

    # ---- leases: one running copy of a request at a time ---------------------------------------
    def lease(self, batch_id: str, line: int, seconds: float, expires_at: int) -> tuple[int | None, float]:
        """Take the request (batch id, line) for ``seconds`` before calling xAI for it. Returns (the
        lease's token, 0) when taken; (None, 0) when the request has its result; (None, seconds until
        the holder's lease ends) when another copy holds it. A lease ends by itself, so a crashed
        worker's request is taken again by the next delivery."""
        now = int(time.time() * 1000)
        until = now + max(1000, int(seconds * 1000))
        try:
            self.items.update_item(
                Key={"batch_id": batch_id, "line": line},
                UpdateExpression="SET lease_until = :until, expires_at = if_not_exists(expires_at, :exp)",
                ConditionExpression=(
                    "attribute_not_exists(outcome)"
                    " AND (attribute_not_exists(lease_until) OR lease_until < :now)"
                ),
                ExpressionAttributeValues={":until": until, ":now": now, ":exp": expires_at},
                ReturnValuesOnConditionCheckFailure="ALL_OLD",
            )
        except ClientError as exc:
            if not conditional_failure(exc):
                raise
            held = exc.response.get("Item") or {}
            if "outcome" in held:
                return None, 0
            return None, max(1.0, (int(held.get("lease_until", {}).get("N", now)) - now) / 1000)
        return until, 0

    def release(self, batch_id: str, line: int, token: int) -> None:
        """Give a lease back (the request goes back to the queue without a result)."""
        try:
            self.items.update_item(
                Key={"batch_id": batch_id, "line": line},
                UpdateExpression="REMOVE lease_until",
                ConditionExpression="lease_until = :token",
                ExpressionAttributeValues={":token": token},
            )
        except ClientError as exc:
            if not conditional_failure(exc):
                raise

    def count_attempt(self, batch_id: str, line: int, expires_at: int) -> int:
        """Count one more failed xAI attempt of a request; returns the attempts so far."""
        reply = self.items.update_item(
            Key={"batch_id": batch_id, "line": line},
            UpdateExpression="ADD attempts :one SET expires_at = :exp REMOVE lease_until",
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
