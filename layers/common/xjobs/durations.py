"""How long xAI takes to finish a job, learned from the jobs that finished, and the poll times it gives.

A profile is what a job's time depends on: its kind and model and, for a video, the seconds and the
resolution asked for. Each completed job adds the log of how long it took (and its square) to its
profile's counters for the day, in the limits table: one ADD, no read-modify-write, so any number of
polls may learn at once, and a day's counters expire after HISTORY_DAYS. A poll reads the profile's
last HISTORY_DAYS days (cached per container), fits a lognormal to them, and schedules the next status
call for when the chance that the job has finished since now reaches FINISH_CHANCE: calls crowd where
the profile's jobs usually end. That gives fewer calls than a fixed interval for a shorter mean
detection delay (tests/unit/test_poll_learning.py computes both; bench/poll_efficiency.py measures
them). A job that outlives its profile is not the profile's any more: a wait is never shorter than
AGE_SHARE of the job's age.
"""

import json
import math
import time
from decimal import Decimal
from statistics import NormalDist

from . import aws
from .xai import DEFERRED_CHAT, VIDEO_GENERATION

HISTORY_DAYS = 7
MIN_SAMPLES = 10  # fewer than this, and the poll keeps its fixed schedule
FINISH_CHANCE = 0.22
AGE_SHARE = 0.1
MIN_SIGMA = 0.1  # of log-seconds: never trust a fit narrower than about ±10%
CACHE_SECONDS = 10  # a profile's first fits come from its fastest jobs: follow the rest soon
_DAY = 86400

_fits: dict[str, tuple[float, NormalDist | None]] = {}  # per container: profile -> (read at, fit)


def profile(job: dict) -> str:
    """The profile of a job, from its kind and the request it sends to xAI."""
    kind, request = job["kind"], json.loads(job["request"])
    model = (request.get("model") or "default")[:200]  # a DynamoDB key holds at most 2,048 bytes
    if kind == DEFERRED_CHAT:
        return f"{kind}|{model}"
    resolution = request.get("resolution") or "default"
    if kind == VIDEO_GENERATION:
        seconds = f"{request['duration']}s" if request.get("duration") else "default"
        return f"{kind}|{model}|{seconds}|{resolution}"
    return f"{kind}|{model}|{resolution}"  # an edit's length follows its input video


def next_poll_in(fit: NormalDist, age: float) -> float:
    """Seconds from now, `age` seconds after the submit, until the chance that the job has finished
    since now reaches FINISH_CHANCE, or AGE_SHARE of its age if that is longer."""
    ended = fit.cdf(math.log(age)) if age > 0 else 0.0
    target = ended + FINISH_CHANCE * (1 - ended)
    # So far past the fit that it says nothing (inv_cdf needs target < 1): the age alone decides.
    until_chance = math.exp(fit.inv_cdf(target)) - age if target < 1 - 1e-9 else 0.0
    return max(until_chance, AGE_SHARE * age)


class Durations:
    def __init__(self, table_name: str):
        self.table_name = table_name

    def learn(self, profile: str, seconds: float) -> None:
        """Count one finished job of `profile` that took `seconds`."""
        log = math.log(max(seconds, 0.1))
        now = time.time()
        aws.table(self.table_name).update_item(
            Key={"id": _key(profile, now)},
            UpdateExpression=(
                "ADD samples :one, log_sum :log, log_square_sum :square "
                "SET expires_at = if_not_exists(expires_at, :expires)"
            ),
            ExpressionAttributeValues={
                ":one": 1,
                ":log": Decimal(f"{log:.6f}"),
                ":square": Decimal(f"{log * log:.6f}"),
                ":expires": int(now) + (HISTORY_DAYS + 1) * _DAY,
            },
        )

    def fit(self, profile: str) -> NormalDist | None:
        """The distribution of log-seconds of the profile's recent jobs; None before MIN_SAMPLES."""
        now = time.time()
        cached = _fits.get(profile)
        if cached and now - cached[0] < CACHE_SECONDS:
            return cached[1]
        fit = self.read(profile)[1]
        _fits[profile] = (now, fit)
        return fit

    def read(self, profile: str) -> tuple[int, NormalDist | None]:
        """The profile's samples in the last HISTORY_DAYS days and their fit (None before MIN_SAMPLES),
        read now."""
        now = time.time()
        keys = [{"id": {"S": _key(profile, now - day * _DAY)}} for day in range(HISTORY_DAYS)]
        reply = aws.client("dynamodb").batch_get_item(
            RequestItems={
                self.table_name: {
                    "Keys": keys,
                    "ProjectionExpression": "samples, log_sum, log_square_sum",
                }
            }
        )
        # Keys it could not read this time (throttling) count as no samples: the fit is an estimate.
        items = reply["Responses"].get(self.table_name, [])
        samples = sum(float(item["samples"]["N"]) for item in items)
        if samples < MIN_SAMPLES:
            return int(samples), None
        mean = sum(float(item["log_sum"]["N"]) for item in items) / samples
        square = sum(float(item["log_square_sum"]["N"]) for item in items) / samples
        return int(samples), NormalDist(mean, max(MIN_SIGMA, math.sqrt(max(0.0, square - mean * mean))))


def _key(profile: str, at: float) -> str:
    return f"durations#{profile}#{time.strftime('%Y-%m-%d', time.gmtime(at))}"
