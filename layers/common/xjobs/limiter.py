"""A rate limiter shared by every concurrent Lambda: fixed windows counted in DynamoDB.

One conditional ``ADD`` per acquisition (no read-modify-write race): the window's counters grow
only while they are under the window's capacity. A refused caller learns how long until the next
window opens and waits there (a Step Functions wait, an SQS visibility timeout), never in a sleep.

A window may also count tokens (chat work is limited in requests and in tokens per minute), and
``block`` fills the windows of the next seconds when xAI says the account is out of capacity, so
every worker holds back, not just the one that was told.
"""

import math
import time

from botocore.exceptions import ClientError

from . import aws
from .observability import emit

WINDOW_RETENTION_SECONDS = 3600
MAX_BLOCK_SECONDS = 120


class RateLimiter:
    def __init__(
        self, table_name: str, scope: str, per_second: float, tokens_per_second: float | None = None
    ):
        if per_second <= 0 or (tokens_per_second is not None and tokens_per_second <= 0):
            raise ValueError("per_second and tokens_per_second must be positive")
        self.table = aws.table(table_name)
        self.scope = scope
        # A rate under one per second gets a longer window holding a single request.
        self.window_seconds = max(1.0, 1.0 / per_second)
        self.capacity = max(1, math.floor(per_second * self.window_seconds))
        self.token_capacity = (
            None if tokens_per_second is None else max(1, math.floor(tokens_per_second * self.window_seconds))
        )

    def try_acquire(self, tokens: int = 0, requests: int = 1) -> float:
        """0.0 if ``requests`` requests (of ``tokens`` tokens in all) may go now, else the seconds until
        the next window. All or nothing: a worker admits a whole SQS batch in one call when it fits."""
        now = time.time()
        window = math.floor(now / self.window_seconds)
        update = "ADD used :n SET expires_at = if_not_exists(expires_at, :expires)"
        condition = "(attribute_not_exists(used) OR used <= :room)"
        values = {
            ":n": requests,
            ":room": self.capacity - requests,
            ":expires": int(now) + WINDOW_RETENTION_SECONDS,
        }
        if self.token_capacity is not None:
            # A request larger than a whole window still goes, alone, into an empty one.
            tokens = min(max(0, int(tokens)), self.token_capacity)
            update = "ADD used :n, used_tokens :tokens SET expires_at = if_not_exists(expires_at, :expires)"
            condition += " AND (attribute_not_exists(used_tokens) OR used_tokens <= :token_room)"
            values |= {":tokens": tokens, ":token_room": self.token_capacity - tokens}
        try:
            self.table.update_item(
                Key={"id": f"{self.scope}#{window}"},
                UpdateExpression=update,
                ConditionExpression=condition,
                ExpressionAttributeValues=values,
            )
        except ClientError as exc:
            if exc.response["Error"]["Code"] == "ConditionalCheckFailedException":
                wait = max(0.001, (window + 1) * self.window_seconds - now)
                if requests == 1:  # a refused group is asked for again request by request: counted there
                    emit(
                        {"LimiterWaits": (1, "Count"), "LimiterWaitSeconds": (wait, "Seconds")},
                        Scope=self.scope,
                    )
                return wait
            raise
        return 0.0

    def block(self, seconds: float) -> None:
        """Fill every window of the next ``seconds`` (capped), so no caller goes before they pass."""
        now = time.time()
        first = math.floor(now / self.window_seconds)
        last = math.floor((now + min(seconds, MAX_BLOCK_SECONDS)) / self.window_seconds)
        for window in range(first, last + 1):
            self.table.update_item(
                Key={"id": f"{self.scope}#{window}"},
                UpdateExpression="SET used = :capacity, expires_at = if_not_exists(expires_at, :expires)",
                ExpressionAttributeValues={
                    ":capacity": self.capacity,
                    ":expires": int(now) + WINDOW_RETENTION_SECONDS,
                },
            )
