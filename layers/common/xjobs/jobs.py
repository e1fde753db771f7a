"""Jobs in DynamoDB: creation, forward-only status changes, reads and listings.

A status only moves forward (pending -> processing -> a terminal status) and a terminal status never
changes: every change is a conditional write on the statuses it may come from.
"""

import time
from decimal import Decimal
from typing import Any

from botocore.exceptions import ClientError

from . import aws
from .observability import logger, metric

PENDING = "pending"  # accepted, not yet handed to xAI
PROCESSING = "processing"  # xAI has it
COMPLETED = "completed"
FAILED = "failed"
CANCELLED = "cancelled"
TIMED_OUT = "timed_out"
ACTIVE = (PENDING, PROCESSING)
TERMINAL = (COMPLETED, FAILED, CANCELLED, TIMED_OUT)
STATUSES = ACTIVE + TERMINAL

RETENTION_SECONDS = 30 * 86400


class JobNotFound(LookupError):
    pass


class JobConflict(RuntimeError):
    pass


class NewsLimited(RuntimeError):
    """The job has had as much upstream news as it may have for now."""


def _allowed_sources(status: str) -> tuple[str, ...]:
    """The statuses a job may move to ``status`` from: forward only, never out of a terminal one."""
    if status == PROCESSING:
        return (PENDING,)
    if status in TERMINAL:
        return ACTIVE
    if status == PENDING:
        return ()  # where every job starts; nothing moves back to it
    raise ValueError(f"a job cannot move to {status!r}")


def now_ms() -> int:
    return int(time.time() * 1000)


def plain(value: Any) -> Any:
    """DynamoDB numbers come back as Decimal; give callers ints and floats."""
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    return value


def conditional_failure(exc: ClientError) -> bool:
    return exc.response["Error"]["Code"] == "ConditionalCheckFailedException"


def changed(job: dict, error: dict | None) -> None:
    """One log line per status change; a job that ended counts in JobsFinished by kind and status."""
    logger.info(
        "job status changed",
        extra={"job_id": job["id"], "tenant": job.get("tenant"), "status": job["status"], "error": error},
    )
    if job["status"] in TERMINAL:
        metric("JobsFinished", Kind=job.get("kind", "unknown"), Status=job["status"])


class JobStore:
    def __init__(self, table_name: str):
        self.table = aws.table(table_name)

    def create(self, job: dict) -> None:
        from boto3.dynamodb.conditions import Attr  # boto3 is imported on first use (see aws.py)

        self.table.put_item(Item=job, ConditionExpression=Attr("id").not_exists())

    def delete(self, job_id: str) -> None:
        self.table.delete_item(Key={"id": job_id})

    def get(self, job_id: str) -> dict | None:
        item = self.table.get_item(Key={"id": job_id}, ConsistentRead=True).get("Item")
        return plain(item) if item else None

    def get_for_tenant(self, job_id: str, tenant: str) -> dict:
        job = self.get(job_id)
        if job is None or job["tenant"] != tenant:
            raise JobNotFound(job_id)
        return job

    def list(
        self, tenant: str, *, status: str | None, limit: int, after: str | None
    ) -> tuple[list[dict], bool]:
        """The tenant's jobs, newest first; ``after`` is the id of the last job of the previous page."""
        from boto3.dynamodb.conditions import Attr, Key  # boto3 is imported on first use (see aws.py)

        condition = Key("tenant").eq(tenant)
        if after:
            condition = condition & Key("id").lt(after)
        query: dict[str, Any] = {
            "IndexName": "by-tenant",
            "KeyConditionExpression": condition,
            "ScanIndexForward": False,
            "Limit": limit + 1,
        }
        if status:
            query["FilterExpression"] = Attr("status").eq(status)
        jobs: list[dict] = []
        while len(jobs) <= limit:
            page = self.table.query(**query)
            jobs.extend(plain(item) for item in page["Items"])
            if "LastEvaluatedKey" not in page:
                break
            query["ExclusiveStartKey"] = page["LastEvaluatedKey"]
        return jobs[:limit], len(jobs) > limit

    def advance(self, job_id: str, status: str, **fields: Any) -> dict | None:
        """Move the job to ``status`` if it may get there from where it is; None if it may not."""
        sources = _allowed_sources(status)
        if not sources:
            return None
        names = {"#status": "status"}
        values: dict[str, Any] = {":status": status, ":updated": int(time.time())}
        assignments = ["#status = :status", "updated = :updated"]
        for index, (name, value) in enumerate(fields.items()):
            names[f"#f{index}"] = name
            values[f":f{index}"] = value
            assignments.append(f"#f{index} = :f{index}")
        for index, source in enumerate(sources):
            values[f":from{index}"] = source
        condition = "#status IN (" + ", ".join(f":from{i}" for i in range(len(sources))) + ")"
        reply = self._update_if(
            Key={"id": job_id},
            UpdateExpression="SET " + ", ".join(assignments),
            ConditionExpression=condition,
            ExpressionAttributeNames=names,
            ExpressionAttributeValues=values,
            ReturnValues="ALL_NEW",
        )
        if not reply:
            return None
        job = plain(reply["Attributes"])
        changed(job, fields.get("error"))
        return job

    def record_poll(self, job_id: str, progress: int | None) -> None:
        """Count a status poll (and keep xAI's progress) while the job is still active."""
        values: dict[str, Any] = {
            ":one": 1,
            ":updated": int(time.time()),
            ":polled": now_ms(),
            ":pending": PENDING,
            ":proc": PROCESSING,
        }
        update = "SET updated = :updated, polled_at = :polled ADD attempts :one"
        if progress is not None:
            update = "SET updated = :updated, polled_at = :polled, progress = :progress ADD attempts :one"
            values[":progress"] = progress
        self._update_if(
            Key={"id": job_id},
            UpdateExpression=update,
            ConditionExpression="#status IN (:pending, :proc)",
            ExpressionAttributeNames={"#status": "status"},
            ExpressionAttributeValues=values,
        )

    def park(self, job_id: str, token: str, seen_news: int = 0) -> bool:
        """Store the token that wakes the job's loop; False if the job is no longer active, or if news
        (an upstream callback) came after the last poll and after `seen_news`, the news the last Poll
        read: then the loop should poll, not wait. News that Poll saw waits for the timer Poll set, so
        a Poll that could not act on it (the limiter was full) never makes the loop spin."""
        stored = self._update_if(
            Key={"id": job_id},
            UpdateExpression="SET wake_token = :token",
            ConditionExpression=(
                "#status IN (:pending, :proc) AND (attribute_not_exists(news_at) OR news_at < polled_at"
                " OR news_at <= :seen)"
            ),
            ExpressionAttributeNames={"#status": "status"},
            ExpressionAttributeValues={
                ":token": token,
                ":pending": PENDING,
                ":proc": PROCESSING,
                ":seen": seen_news,
            },
        )
        return stored is not None

    def note_news(self, job_id: str, *, min_interval_ms: int, most: int) -> dict | None:
        """Record that the upstream says the job changed: the job as it now is; None if it has ended.
        Raises NewsLimited if news came less than `min_interval_ms` ago or `most` times already."""
        now = now_ms()
        try:
            reply = self.table.update_item(
                Key={"id": job_id},
                UpdateExpression="SET news_at = :now ADD callbacks :one",
                ConditionExpression=(
                    "#status IN (:pending, :proc)"
                    " AND (attribute_not_exists(news_at) OR news_at < :recent)"
                    " AND (attribute_not_exists(callbacks) OR callbacks < :most)"
                ),
                ExpressionAttributeNames={"#status": "status"},
                ExpressionAttributeValues={
                    ":now": now,
                    ":one": 1,
                    ":recent": now - min_interval_ms,
                    ":most": most,
                    ":pending": PENDING,
                    ":proc": PROCESSING,
                },
                ReturnValues="ALL_NEW",
                ReturnValuesOnConditionCheckFailure="ALL_OLD",
            )
        except ClientError as exc:
            if not conditional_failure(exc):
                raise
            old = exc.response.get("Item") or {}
            if old.get("status", {}).get("S") in ACTIVE:
                raise NewsLimited(job_id) from None
            return None
        return plain(reply["Attributes"])

    def cancel(self, job_id: str, tenant: str) -> dict:
        """Cancel an active job of the tenant; raises JobNotFound or JobConflict."""
        try:
            reply = self.table.update_item(
                Key={"id": job_id},
                UpdateExpression="SET #status = :cancelled, updated = :now",
                ConditionExpression="tenant = :tenant AND #status IN (:pending, :proc)",
                ExpressionAttributeNames={"#status": "status"},
                ExpressionAttributeValues={
                    ":cancelled": CANCELLED,
                    ":now": int(time.time()),
                    ":tenant": tenant,
                    ":pending": PENDING,
                    ":proc": PROCESSING,
                },
                ReturnValues="ALL_NEW",
                ReturnValuesOnConditionCheckFailure="ALL_OLD",
            )
        except ClientError as exc:
            if not conditional_failure(exc):
                raise
            old = exc.response.get("Item")
            if not old or old.get("tenant", {}).get("S") != tenant:
                raise JobNotFound(job_id) from None
            raise JobConflict(f"job {job_id} is already {old['status']['S']}") from None
        job = plain(reply["Attributes"])
        changed(job, None)
        return job

    def claim(self, job_id: str, flag: str) -> bool:
        """Set ``flag`` once; True for the one caller that set it. Guards one-time side effects."""
        claimed = self._update_if(
            Key={"id": job_id},
            UpdateExpression="SET #flag = :now",
            ConditionExpression="attribute_not_exists(#flag)",
            ExpressionAttributeNames={"#flag": flag},
            ExpressionAttributeValues={":now": int(time.time())},
        )
        return claimed is not None

    def note_restart(self, job_id: str, old_execution: str, new_execution: str) -> bool:
        """Make ``new_execution`` the job's loop in place of ``old_execution`` and count the restart; False if
        another sweep did it first. A job's first execution is named after the job (see submission.py)."""
        condition = "attribute_not_exists(execution)" if old_execution == job_id else "execution = :old"
        values: dict[str, Any] = {":new": new_execution, ":one": 1}
        if old_execution != job_id:
            values[":old"] = old_execution
        return (
            self._update_if(
                Key={"id": job_id},
                UpdateExpression="SET execution = :new ADD restarts :one",
                ConditionExpression=condition,
                ExpressionAttributeValues=values,
            )
            is not None
        )

    def _update_if(self, **request: Any) -> dict | None:
        """update_item that answers None, instead of raising, when its condition does not hold."""
        try:
            return self.table.update_item(**request)
        except ClientError as exc:
            if conditional_failure(exc):
                return None
            raise

    def release(self, job_id: str, flag: str) -> None:
        self.table.update_item(
            Key={"id": job_id}, UpdateExpression="REMOVE #flag", ExpressionAttributeNames={"#flag": flag}
        )
