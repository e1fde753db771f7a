"""A rate limiter shared by every concurrent Lambda: fixed windows counted in DynamoDB.

One conditional ``ADD`` per acquisition (no read-modify-write race): the window's counter grows
only while it is under the window's capacity. A refused caller learns how long until the next
window opens and waits there (a Step Functions wait, an SQS visibility timeout), never in a sleep.
"""

import math
import time

from botocore.exceptions import ClientError

from . import aws

WINDOW_RETENTION_SECONDS = 3600


class RateLimiter:
    def __init__(self, table_name: str, scope: str, per_second: float):
        if per_second <= 0:
            raise ValueError("per_second must be positive")
        self.table = aws.table(table_name)
        self.scope = scope
        # A rate under one per second gets a longer window holding a single request.
        self.window_seconds = max(1.0, 1.0 / per_second)
        self.capacity = max(1, math.floor(per_second * self.window_seconds))

    def try_acquire(self) -> float:
        """0.0 if a request may go now, else the seconds until the next window opens."""
        now = time.time()
        window = math.floor(now / self.window_seconds)
        try:
            self.table.update_item(
                Key={"id": f"{self.scope}#{window}"},
                UpdateExpression="ADD used :one SET expires_at = if_not_exists(expires_at, :expires)",
                ConditionExpression="attribute_not_exists(used) OR used < :capacity",
                ExpressionAttributeValues={
                    ":one": 1,
                    ":capacity": self.capacity,
                    ":expires": int(now) + WINDOW_RETENTION_SECONDS,
                },
            )
        except ClientError as exc:
            if exc.response["Error"]["Code"] == "ConditionalCheckFailedException":
                return max(0.001, (window + 1) * self.window_seconds - now)
            raise
        return 0.0
