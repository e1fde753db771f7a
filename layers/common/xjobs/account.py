"""Whether the xAI account is blocked — out of credits or over its monthly spending limit — shared by
every Lambda through one item of the limits table.

xAI answers every call with a 429 (or, in newer answers, a 403) until the operator pays, so blocked
work pauses instead of failing: the first caller to meet the answer records the block and announces
it once on SNS; while it lasts, one caller at a time may send a real request as a probe (at most one
per ``probe_seconds``) and everything else waits; the first call that succeeds lifts the block and
announces that too.
"""

import random
import time
from dataclasses import dataclass

from botocore.exceptions import ClientError

from . import aws, notify
from .jobs import conditional_failure
from .observability import account_blocked

ITEM_ID = "xai-account#blocked"
READ_SECONDS = 1.0  # how stale a container's view of the block may be
MAX_PAUSE_SECONDS = 900  # SQS's longest DelaySeconds
BLOCKED_EVENT = "account.blocked"
RESUMED_EVENT = "account.resumed"
PAUSED_REASON = "xai_account_blocked"


@dataclass(frozen=True)
class Block:
    since: float
    status_code: int
    message: str

    def view(self) -> dict:
        """What a paused job or batch says about it in the API."""
        return {
            "paused_reason": PAUSED_REASON,
            "paused_detail": {
                "since": int(self.since),
                "status_code": self.status_code,
                "message": f"the xAI account is out of credits or over its spending limit: {self.message}",
            },
        }


class Account:
    def __init__(self, table_name: str, topic_arn: str, probe_seconds: float):
        self.table_name = table_name
        self.topic_arn = topic_arn
        self.probe_seconds = probe_seconds
        self._cached: Block | None = None
        self._read_at = -READ_SECONDS

    def blocked(self, *, fresh: bool = False) -> Block | None:
        now = time.monotonic()
        if fresh or now - self._read_at >= READ_SECONDS:
            item = aws.table(self.table_name).get_item(Key={"id": ITEM_ID}, ConsistentRead=True).get("Item")
            self._cached = (
                Block(float(item["since"]), int(item["status_code"]), str(item["message"])) if item else None
            )
            self._read_at = now
        return self._cached

    def block(self, status_code: int, message: str) -> None:
        """xAI said the account is blocked: record it; the caller that records it first announces it."""
        account_blocked(f"xAI answered {status_code}: {message[:300]}")  # each refusal, for the alarm
        now = time.time()
        from decimal import Decimal

        try:
            aws.table(self.table_name).put_item(
                Item={
                    "id": ITEM_ID,
                    "since": Decimal(f"{now:.3f}"),
                    "status_code": status_code,
                    "message": message[:1000],
                    "probe_at": Decimal(f"{now + self.probe_seconds:.3f}"),
                },
                ConditionExpression="attribute_not_exists(id)",
            )
        except ClientError as exc:
            if not conditional_failure(exc):
                raise
            self.blocked(fresh=True)
            return
        self._cached, self._read_at = Block(now, status_code, message[:1000]), time.monotonic()
        self._announce(
            BLOCKED_EVENT, {"since": int(now), "status_code": status_code, "message": message[:1000]}
        )

    def may_probe(self) -> bool:
        """While blocked: True for the one caller that may try a real request now (one per
        ``probe_seconds``); everyone else waits."""
        from decimal import Decimal

        now = time.time()
        try:
            aws.table(self.table_name).update_item(
                Key={"id": ITEM_ID},
                UpdateExpression="SET probe_at = :next",
                ConditionExpression="attribute_exists(id) AND probe_at <= :now",
                ExpressionAttributeValues={
                    ":now": Decimal(f"{now:.3f}"),
                    ":next": Decimal(f"{now + self.probe_seconds:.3f}"),
                },
            )
        except ClientError as exc:
            if not conditional_failure(exc):
                raise
            return False
        return True

    def resume(self) -> None:
        """A call went through: lift the block (if there is one); the caller that lifts it announces it."""
        if self.blocked() is None:
            return
        try:
            reply = aws.table(self.table_name).delete_item(
                Key={"id": ITEM_ID}, ConditionExpression="attribute_exists(id)", ReturnValues="ALL_OLD"
            )
        except ClientError as exc:
            if not conditional_failure(exc):
                raise
            self._cached, self._read_at = None, time.monotonic()
            return
        self._cached, self._read_at = None, time.monotonic()
        since = float(reply.get("Attributes", {}).get("since", time.time()))
        self._announce(RESUMED_EVENT, {"since": int(since), "resumed": int(time.time())})

    def pause_seconds(self, cap: float = MAX_PAUSE_SECONDS) -> float:
        """How long a waiting request or job holds back before it looks again: the probe interval at
        first, longer the longer the block lasts (fewer idle wake-ups), jittered, at most ``cap``."""
        block = self.blocked()
        blocked_for = time.time() - block.since if block else 0.0
        wait = max(self.probe_seconds, blocked_for / 4)
        return max(1.0, min(cap, wait * random.uniform(0.8, 1.2)))

    def _announce(self, event: str, account: dict) -> None:
        notify.publish(
            self.topic_arn,
            {"event": event, "account": account},
            event=event,
            kind="xai.account",
            status="blocked" if event == BLOCKED_EVENT else "active",
            tenant="*",
        )
