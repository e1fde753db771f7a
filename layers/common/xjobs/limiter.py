"""A rate limiter shared by every concurrent Lambda: fixed windows counted in DynamoDB.

One conditional ``ADD`` per acquisition (no read-modify-write race): the window's counters grow
only while they are under the window's capacity. A refused caller learns how long until the next
window opens and waits there (a Step Functions wait, an SQS visibility timeout), never in a sleep.

A window may also count tokens (chat work is limited in requests and in tokens per minute), and
``block`` fills the windows of the next seconds when xAI states a wait, so every worker holds back,
not just the one that was told.

xAI usually states neither its limits nor a wait, so the rate itself adapts (:class:`AdaptiveRate`):
it starts from the configured limits, takes xAI's ``x-ratelimit-limit-*`` when they come, and
otherwise learns from the 429s — a multiplicative cut on a 429, an additive climb back while callers
are held back without 429s — in one DynamoDB item every worker reads, so all of them agree.
"""

import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

from botocore.exceptions import ClientError

from . import aws
from .observability import emit

WINDOW_RETENTION_SECONDS = 3600
MAX_BLOCK_SECONDS = 120


class RateLimiter:
    def __init__(
        self,
        table_name: str,
        scope: str,
        per_second: float,
        tokens_per_second: float | None = None,
        *,
        epoch: int = 0,
        window_seconds: float = 1.0,
        metric_scope: str | None = None,
    ):
        if per_second <= 0 or (tokens_per_second is not None and tokens_per_second <= 0):
            raise ValueError("per_second and tokens_per_second must be positive")
        self.table = aws.table(table_name)
        self.scope = scope
        self.metric_scope = metric_scope or scope  # the metrics' Scope dimension (no tenant ids in it)
        self.per_second = per_second
        self.epoch = epoch  # the AdaptiveRate epoch these limits come from (see AdaptiveRate.cut)
        self.last_window: int | None = None  # the window of the last admission
        # A rate under one per window gets a longer window holding a single request.
        self.window_seconds = max(window_seconds, 1.0 / per_second)
        self.capacity = max(1, math.floor(per_second * self.window_seconds))
        self.token_capacity = (
            None if tokens_per_second is None else max(1, math.floor(tokens_per_second * self.window_seconds))
        )

    def try_acquire(self, tokens: int = 0, requests: int = 1) -> float:
        """0.0 if ``requests`` requests (of ``tokens`` tokens in all) may go now, else the seconds until
        the next window. All or nothing: a worker admits a whole SQS batch in one call when it fits."""
        now = time.time()
        window = math.floor(now / self.window_seconds)
        if requests > self.capacity_of(window):
            # More than any one window holds: the caller asks for them one at a time.
            return max(0.001, (window + 1) * self.window_seconds - now)
        update = "ADD used :n SET expires_at = if_not_exists(expires_at, :expires)"
        condition = "(attribute_not_exists(used) OR used <= :room)"
        values = {
            ":n": requests,
            ":room": self.capacity_of(window) - requests,
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
                        Scope=self.metric_scope,
                    )
                return wait
            raise
        self.last_window = window
        return 0.0

    def count_refused(self, window: int | None) -> None:
        """Count a 429 on the window its request was admitted in (see accepted_per_minute)."""
        if window is None:
            return
        self.table.update_item(
            Key={"id": f"{self.scope}#{window}"},
            UpdateExpression="ADD refused :one SET expires_at = if_not_exists(expires_at, :expires)",
            ExpressionAttributeValues={":one": 1, ":expires": int(time.time()) + WINDOW_RETENTION_SECONDS},
        )

    def recent(self, window: int) -> tuple[int, int, float]:
        """(requests admitted, requests xAI refused, seconds) over the second of windows up to ``window``."""
        count = max(1, round(1.0 / self.window_seconds))
        keys = [{"id": {"S": f"{self.scope}#{w}"}} for w in range(window - count + 1, window + 1)]
        reply = aws.client("dynamodb").batch_get_item(
            RequestItems={self.table.name: {"Keys": keys, "ConsistentRead": True}}
        )
        items = reply["Responses"].get(self.table.name, [])
        used = sum(int(i.get("used", {}).get("N", 0)) for i in items)
        refused = sum(int(i.get("refused", {}).get("N", 0)) for i in items)
        return used, refused, count * self.window_seconds

    def accepted_per_minute(self, window: int | None) -> float | None:
        """What xAI accepted, as requests per minute, over the second of windows up to ``window``, if it
        refused some of them (None: no sign yet).

        Admissions minus 429s, while the account was over its limit, is the limit itself, measured.
        The estimate errs high while answers are still coming."""
        if window is None:
            return None
        used, refused, seconds = self.recent(window)
        if refused < 2 or used <= refused:
            return None
        return (used - refused) / seconds * 60

    def busy(self, window: int | None = None) -> bool:
        """Whether the second of windows up to ``window`` (by default: up to the current one) admitted
        about as much as the rate allows: the demand is above the rate, not bunched into one window."""
        if window is None:
            window = math.floor(time.time() / self.window_seconds) - 1
        used, _, seconds = self.recent(window)
        return used >= 0.9 * self.per_second * seconds

    def capacity_of(self, window: int) -> int:
        """Requests one window holds: a fractional rate (9.5 a second) alternates 9 and 10, so the
        windows add up to the rate instead of rounding it down."""
        per_window = self.per_second * self.window_seconds
        if per_window <= 1.0:
            return self.capacity
        return max(1, math.floor(per_window * (window + 1)) - math.floor(per_window * window))

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


# -- the adaptive rate -------------------------------------------------------------------------------

RATE_READ_SECONDS = 0.5  # how stale a container's copy of the shared rate may be
# Chat windows are a quarter second: xAI refills its per-second budget continuously, so a full
# second's requests sent at once, at the turn of two windows, would be twice what it holds.
CHAT_WINDOW_SECONDS = 0.25
GROW_EVERY_SECONDS = 1.0  # the climb: one step per second at most, for all callers together
GROW_FAST = 0.05  # per step, while far under the rate of the last 429 (or none came yet)
GROW_SLOW = 0.005  # per step near (or above) it: probing slowly for more
NEAR_CEILING = 0.9
CUT_NEAR = 0.9  # a 429 while probing near the last 429's rate: a small step back
CUT_FAR = 0.75  # a 429 anywhere else (a limit configured too high): a big one
MAX_CUT = 0.3  # no cut goes below this share of the rate, whatever the estimate
UNDER_ACCEPTED = 0.95  # a cut to what xAI was seen to accept goes a little under it
MIN_PER_MINUTE = 1.0


@dataclass(frozen=True)
class Rate:
    requests_per_minute: float
    tokens_per_minute: float
    epoch: int = 0  # counts the cuts: a 429 cuts only the rate its request was admitted under
    ceiling: float = 0.0  # the requests per minute at the last cut (0: none yet)
    stated: float = 0.0  # requests per minute xAI's headers stated (0: never), a cap for the climb
    stated_tokens: float = 0.0
    changed_at: float = 0.0
    version: int = 0  # counts the writes; 0: no item (the configured rate)


class AdaptiveRate:
    """The account's limits as every caller believes them now, in one item of the limits table.

    Starts from the configured limits (again whenever the configuration changes). ``cut`` after a
    429 that stated no wait, ``grow`` when a caller was held back (the demand is above the rate),
    ``stated`` when xAI's headers name the limits. Every write is conditional on the version read,
    so concurrent workers make one step, not one each.
    """

    def __init__(self, table_name: str, scope: str, requests_per_minute: float, tokens_per_minute: float):
        self.table_name = table_name
        self.key = {"id": f"{scope}#rate"}
        self.configured = Rate(float(requests_per_minute), float(tokens_per_minute))
        self._cached: Rate | None = None
        self._read_at = 0.0

    def read(self, *, fresh: bool = False) -> Rate:
        """The shared rate, at most ``RATE_READ_SECONDS`` old (``fresh``: read now)."""
        now = time.monotonic()
        if fresh or self._cached is None or now - self._read_at >= RATE_READ_SECONDS:
            item = aws.table(self.table_name).get_item(Key=self.key, ConsistentRead=True).get("Item")
            self._cached = self._rate(item)
            self._read_at = now
        return self._cached

    def _rate(self, item: dict | None) -> Rate:
        if not item or item.get("configured") != self._configured_key():
            return self.configured
        return Rate(
            float(item["rpm"]),
            float(item["tpm"]),
            int(item.get("epoch", 0)),
            float(item.get("ceiling", 0)),
            float(item.get("stated", 0)),
            float(item.get("stated_tokens", 0)),
            float(item["changed_at"]),
            int(item["version"]),
        )

    def _configured_key(self) -> str:
        return f"{self.configured.requests_per_minute:g}/{self.configured.tokens_per_minute:g}"

    def cut(self, epoch: int, accepted: "Callable[[], float | None]" = lambda: None) -> Rate:
        """A 429 of a request admitted under ``epoch``: step the rate down, once per epoch — to
        ``CUT_FAR`` or ``CUT_NEAR`` of it, or lower, to just under what xAI was seen to accept
        (``accepted()`` requests a minute, see RateLimiter.accepted_per_minute), then the ceiling."""
        rate = self.read(fresh=True)
        if rate.epoch != epoch:
            return rate  # the rate was cut since that request went: this 429 is old news
        accepted_per_minute = accepted()
        rpm = rate.requests_per_minute
        near = rate.ceiling and rpm <= rate.ceiling * 1.02
        new_rpm = rpm * (CUT_NEAR if near else CUT_FAR)
        ceiling = rpm
        if accepted_per_minute and accepted_per_minute < rpm:
            new_rpm = min(new_rpm, max(rpm * MAX_CUT, accepted_per_minute * UNDER_ACCEPTED))
            ceiling = accepted_per_minute
        new_rpm = max(MIN_PER_MINUTE, new_rpm)
        return self._write(
            rate,
            new_rpm,
            max(MIN_PER_MINUTE, rate.tokens_per_minute * new_rpm / rpm),
            epoch=rate.epoch + 1,
            ceiling=ceiling,
        )

    def grow(self) -> Rate:
        """A caller was held back and no 429 came for a while: step the rate up (once a second)."""
        rate = self.read()
        if rate.version and time.time() - rate.changed_at < GROW_EVERY_SECONDS:
            return rate
        rpm = rate.requests_per_minute
        step = GROW_FAST if not rate.ceiling or rpm < rate.ceiling * NEAR_CEILING else GROW_SLOW
        new_rpm = rpm * (1 + step)
        if rate.ceiling and rpm < rate.ceiling * NEAR_CEILING:
            new_rpm = min(new_rpm, rate.ceiling * NEAR_CEILING)  # from there on, slowly
        if rate.stated:
            new_rpm = min(new_rpm, rate.stated)
        if new_rpm <= rpm:
            return rate
        return self._write(rate, new_rpm, rate.tokens_per_minute * new_rpm / rpm)

    def stated(self, requests_per_minute: int | None, tokens_per_minute: int | None) -> Rate:
        """xAI's headers named the limits: take them (a write only when they differ from the last stated)."""
        rate = self.read()
        rpm = float(requests_per_minute or rate.stated or rate.requests_per_minute)
        tpm = float(tokens_per_minute or rate.stated_tokens or rate.tokens_per_minute)
        if (rpm, tpm) == (rate.stated, rate.stated_tokens):
            return rate
        return self._write(rate, rpm, tpm, epoch=rate.epoch + 1, ceiling=rpm, stated=(rpm, tpm))

    def _write(
        self,
        seen: Rate,
        rpm: float,
        tpm: float,
        *,
        epoch: int | None = None,
        ceiling: float | None = None,
        stated: tuple[float, float] | None = None,
    ) -> Rate:
        from decimal import Decimal

        now = time.time()
        new = Rate(
            round(rpm, 3),  # as stored
            round(tpm, 3),
            seen.epoch if epoch is None else epoch,
            seen.ceiling if ceiling is None else ceiling,
            seen.stated if stated is None else stated[0],
            seen.stated_tokens if stated is None else stated[1],
            now,
            seen.version + 1,
        )
        item = {
            **self.key,
            "rpm": Decimal(f"{new.requests_per_minute:.3f}"),
            "tpm": Decimal(f"{new.tokens_per_minute:.3f}"),
            "epoch": new.epoch,
            "ceiling": Decimal(f"{new.ceiling:.3f}"),
            "stated": Decimal(f"{new.stated:.3f}"),
            "stated_tokens": Decimal(f"{new.stated_tokens:.3f}"),
            "changed_at": Decimal(f"{now:.3f}"),
            "version": new.version,
            "configured": self._configured_key(),
        }
        if not seen.version:
            # The configured rate: the item is missing, or it was learned under another configuration.
            condition = "attribute_not_exists(version) OR configured <> :configured"
            values = {":configured": item["configured"]}
        else:
            condition, values = "version = :seen", {":seen": seen.version}
        try:
            aws.table(self.table_name).put_item(
                Item=item, ConditionExpression=condition, ExpressionAttributeValues=values
            )
        except ClientError as exc:
            if exc.response["Error"]["Code"] != "ConditionalCheckFailedException":
                raise
            return self.read(fresh=True)  # another caller moved it first: theirs stands
        self._cached, self._read_at = new, time.monotonic()
        return new


def jittered(seconds: float, spread: float = 0.2) -> float:
    return seconds * random.uniform(1 - spread, 1 + spread)


# -- fair shares between tenants ---------------------------------------------------------------------

ACTIVE_SECONDS = 5.0  # a tenant has work waiting this long after its last heartbeat
SHARES_READ_SECONDS = 1.0  # how stale a container's copy of the active tenants may be
FORGET_SECONDS = 300.0  # an entry this long past its heartbeat is removed from the item


def fair_shares(weights: "dict[str, float]", cap: float = 1.0) -> "dict[str, float]":
    """Each tenant's share of the account's limit: its weight over the weights of all the tenants with
    work waiting, none above ``cap`` (a share of the limit); what a capped tenant cannot take goes to the
    others by their weights (weighted max-min fairness). A tenant alone gets ``cap`` (1.0: everything)."""
    shares: dict[str, float] = {}
    left, uncapped = 1.0, {t: w for t, w in weights.items() if w > 0}
    while uncapped:
        total = sum(uncapped.values())
        capped = {t for t, w in uncapped.items() if left * w / total > cap}
        if not capped:
            shares |= {t: left * w / total for t, w in uncapped.items()}
            break
        for tenant in capped:
            shares[tenant] = cap
            left -= cap
            del uncapped[tenant]
    return shares


MAX_WEIGHT = 1000.0


class FairShare:
    """Which tenants have work waiting, and their weights, in one item of the limits table; each
    tenant's share.

    A tenant's worker (and its batch's ingest) beats its heartbeat when it takes work: an attribute
    ``t#<tenant>`` of the item holding the time it lapses. A tenant whose heartbeat lapsed
    (``active_seconds`` after the last beat), or whose batch just ended, has nothing waiting and takes
    no share. ``w#<tenant>`` holds the tenant's weight when an operator set one (1 otherwise). Each
    container reads the item at most once a second.
    """

    def __init__(self, table_name: str, scope: str, cap: float = 1.0, active_seconds: float = ACTIVE_SECONDS):
        if not 0 < cap <= 1:
            raise ValueError("cap must be a share of the limit, over 0 and at most 1")
        self.table_name = table_name
        self.key = {"id": f"{scope}#tenants"}
        self.cap = cap
        self.active_seconds = active_seconds
        self._until: dict[str, float] = {}  # tenant -> when its heartbeat lapses
        self._weights: dict[str, float] = {}
        self._read_at = -SHARES_READ_SECONDS
        self._beaten: dict[str, tuple[float, float]] = {}  # tenant -> (monotonic time, until) of our beat

    def heartbeat(self, tenant: str) -> None:
        """The tenant has work waiting (at most one write a second per tenant from this container)."""
        from decimal import Decimal

        now = time.monotonic()
        last = self._beaten.get(tenant)
        if last and now - last[0] < min(1.0, self.active_seconds / 4):
            return
        until = time.time() + self.active_seconds
        aws.table(self.table_name).update_item(
            Key=self.key,
            UpdateExpression="SET #tenant = :until",
            ExpressionAttributeNames={"#tenant": f"t#{tenant}"},
            ExpressionAttributeValues={":until": Decimal(f"{until:.3f}")},
        )
        self._beaten[tenant] = (now, until)
        self._until[tenant] = until

    def finished(self, tenant: str) -> None:
        """A batch of the tenant ended: the tenant has nothing waiting, unless another of its batches
        runs — whose next heartbeat (within a second or so) counts it in again."""
        aws.table(self.table_name).update_item(
            Key=self.key,
            UpdateExpression="REMOVE #tenant",
            ExpressionAttributeNames={"#tenant": f"t#{tenant}"},
        )
        self._beaten.pop(tenant, None)
        self._until.pop(tenant, None)

    def set_weight(self, tenant: str, weight: float) -> None:
        """The tenant's weight from now on (1: the default); every worker sees it within a second."""
        from decimal import Decimal

        if not 0 < weight <= MAX_WEIGHT:
            raise ValueError(f"a share weight is over 0 and at most {MAX_WEIGHT:g}, not {weight:g}")
        aws.table(self.table_name).update_item(
            Key=self.key,
            UpdateExpression="SET #weight = :weight",
            ExpressionAttributeNames={"#weight": f"w#{tenant}"},
            ExpressionAttributeValues={":weight": Decimal(str(weight))},
        )
        self._read_at = -SHARES_READ_SECONDS

    def weight(self, tenant: str) -> float:
        self._read()
        return self._weights.get(tenant, 1.0)

    def active(self, *, fresh: bool = False) -> "dict[str, float]":
        """The weights of the tenants with work waiting now."""
        self._read(fresh=fresh)
        wall = time.time()
        return {t: self._weights.get(t, 1.0) for t, until in self._until.items() if until > wall}

    def share(self, tenant: str) -> float:
        """The tenant's share of the account's limit now: 1.0 when it is alone (and not capped)."""
        weights = self.active() | {tenant: self.weight(tenant)}
        return fair_shares(weights, self.cap)[tenant]

    def _read(self, *, fresh: bool = False) -> None:
        now = time.monotonic()
        if not fresh and now - self._read_at < SHARES_READ_SECONDS:
            return
        item = aws.table(self.table_name).get_item(Key=self.key).get("Item") or {}
        until = {name[2:]: float(value) for name, value in item.items() if name.startswith("t#")}
        # Our own beats stand even if the (eventually consistent) read does not show them yet.
        for tenant, (_, beaten) in self._beaten.items():
            if beaten > until.get(tenant, 0.0) and tenant in self._until:
                until[tenant] = beaten
        self._until = until
        self._weights = {name[2:]: float(value) for name, value in item.items() if name.startswith("w#")}
        self._read_at = now
        self._forget([t for t, lapses in until.items() if lapses < time.time() - FORGET_SECONDS])

    def _forget(self, tenants: "list[str]") -> None:
        """Remove heartbeats long lapsed, unless the tenant came back meanwhile."""
        from decimal import Decimal

        for tenant in tenants:
            try:
                aws.table(self.table_name).update_item(
                    Key=self.key,
                    UpdateExpression="REMOVE #tenant",
                    ConditionExpression="#tenant < :stale",
                    ExpressionAttributeNames={"#tenant": f"t#{tenant}"},
                    ExpressionAttributeValues={":stale": Decimal(f"{time.time() - FORGET_SECONDS:.3f}")},
                )
            except ClientError as exc:
                if exc.response["Error"]["Code"] != "ConditionalCheckFailedException":
                    raise
            self._until.pop(tenant, None)
