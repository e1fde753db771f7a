"""What the poll loop learns about how long xAI takes (xjobs.durations), on DynamoDB served by moto, and
the schedule it shapes."""

import json
import math
import random
import time
from decimal import Decimal
from statistics import NormalDist

import boto3
import pytest

from xjobs import durations
from xjobs.durations import (
    AGE_SHARE,
    FINISH_CHANCE,
    HISTORY_DAYS,
    MIN_SAMPLES,
    Durations,
    next_poll_in,
    profile,
)
from xjobs.loop import next_wait


def job(kind: str, **request) -> dict:
    return {"kind": kind, "request": json.dumps(request)}


def test_a_video_profile_names_model_length_and_resolution():
    assert profile(
        job("video.generation", model="grok-imagine-video", prompt="a", duration=6, resolution="720p")
    ) == ("video.generation|grok-imagine-video|6s|720p")
    assert profile(job("video.generation", prompt="a")) == "video.generation|default|default|default"
    assert profile(job("video.edit", model="m", prompt="a", video={"url": "u"})) == "video.edit|m|default"
    assert (
        profile(job("chat.completion", model="grok-4", messages=[], deferred=True))
        == "chat.completion|grok-4"
    )


# -- the schedule ----------------------------------------------------------------------------------

FIT = NormalDist(math.log(20), 0.5)  # the poll benchmark's video jobs: lognormal, median 20 s


def chance_of_ending_between(fit: NormalDist, start: float, end: float) -> float:
    """P(start < T <= end | T > start) for a job whose log-seconds follow `fit`."""
    before = fit.cdf(math.log(start)) if start > 0 else 0.0
    return (fit.cdf(math.log(end)) - before) / (1 - before)


def test_the_first_status_call_comes_when_that_share_of_such_jobs_have_ended():
    first = next_poll_in(FIT, 0)

    assert first == pytest.approx(math.exp(FIT.inv_cdf(FINISH_CHANCE)))
    assert FIT.cdf(math.log(first)) == pytest.approx(FINISH_CHANCE)


@pytest.mark.parametrize("age", [1, 10, 20, 25])
def test_each_wait_lasts_until_the_job_has_the_same_chance_of_having_ended(age):
    wait = next_poll_in(FIT, age)

    assert chance_of_ending_between(FIT, age, age + wait) == pytest.approx(FINISH_CHANCE, abs=1e-6)


def test_waits_are_shortest_where_jobs_usually_end():
    waits = {age: next_poll_in(FIT, age) for age in (0, 10, 20, 30)}

    assert waits[20] < waits[10] < waits[0]
    assert waits[20] < 4


@pytest.mark.parametrize("age", [80, 600, 3600])
def test_a_job_past_its_profile_waits_a_share_of_its_age(age):
    assert next_poll_in(FIT, age) == pytest.approx(AGE_SHARE * age)


def _expected_calls_and_delay(poll_times, samples: list[float]) -> tuple[float, float]:
    calls = delay = 0.0
    for finished in samples:
        index = next(i for i, at in enumerate(poll_times) if at >= finished)
        calls += index + 1
        delay += poll_times[index] - finished
    return calls / len(samples), delay / len(samples)


def test_the_learned_schedule_beats_a_fixed_interval_on_both_counts():
    """The xAI docs' poller (a status call at once, then every 5 s) against ours, over the same draws."""
    rng = random.Random(5)
    samples = [rng.lognormvariate(FIT.mean, FIT.stdev) for _ in range(20_000)]
    fixed = [5.0 * n for n in range(200)]
    learned, age = [], 0.0
    while age < 1000:
        age += next_wait(1, 3600, 2, 60, learned=next_poll_in(FIT, age))
        learned.append(age)

    fixed_calls, fixed_delay = _expected_calls_and_delay(fixed, samples)
    calls, delay = _expected_calls_and_delay(learned, samples)

    assert calls <= 0.75 * fixed_calls
    assert delay < fixed_delay


def test_the_loop_rounds_a_learned_wait_and_keeps_its_cap():
    assert next_wait(1, 3600, 2, 60, learned=14.4) == 14
    assert next_wait(1, 3600, 2, 60, learned=14.6) == 15
    assert next_wait(1, 3600, 2, 60, learned=0.2) == 1
    assert next_wait(1, 3600, 2, 60, learned=500) == 60
    assert next_wait(1, 5, 2, 60, learned=30) == 6  # never much past the deadline
    assert next_wait(3, 3600, 2, 60) == 5  # nothing learned: the fixed schedule


# -- learning on DynamoDB --------------------------------------------------------------------------


@pytest.fixture
def learned(limits_table):
    durations._fits.clear()
    yield Durations(limits_table)
    durations._fits.clear()


def test_nothing_is_fitted_before_enough_jobs_have_ended(learned, unique, monkeypatch):
    name = unique("profile")
    for _ in range(MIN_SAMPLES - 1):
        learned.learn(name, 5.0)

    assert learned.fit(name) is None
    learned.learn(name, 5.0)
    assert learned.fit(name) is None, "what was read is kept for CACHE_SECONDS"
    monkeypatch.setattr(durations, "CACHE_SECONDS", 0)
    assert learned.fit(name) is not None


def test_the_fit_is_the_lognormal_of_the_learned_durations(learned, unique):
    name, rng = unique("profile"), random.Random(3)
    seconds = [rng.lognormvariate(math.log(30), 0.4) for _ in range(200)]
    for value in seconds:
        learned.learn(name, value)

    fit = learned.fit(name)

    assert learned.read(name) == (len(seconds), fit)
    logs = [math.log(value) for value in seconds]
    assert fit.mean == pytest.approx(sum(logs) / len(logs), abs=1e-4)
    assert fit.stdev == pytest.approx(NormalDist.from_samples(logs).stdev, rel=0.01)
    assert learned.fit(unique("other")) is None, "profiles do not share what they learned"


def test_identical_durations_still_leave_room_for_doubt(learned, unique):
    name = unique("profile")
    for _ in range(MIN_SAMPLES):
        learned.learn(name, 8.0)

    assert learned.fit(name).stdev == durations.MIN_SIGMA


def test_only_the_last_days_count_and_each_day_expires(learned, limits_table, unique):
    name = unique("profile")
    table = boto3.resource("dynamodb").Table(limits_table)
    old = time.time() - HISTORY_DAYS * 86400
    # Many slow jobs, a day too old to count.
    table.put_item(
        Item={
            "id": durations._key(name, old),
            "samples": 100,
            "log_sum": Decimal(f"{100 * math.log(600):.6f}"),
            "log_square_sum": Decimal(f"{100 * math.log(600) ** 2:.6f}"),
        }
    )
    for _ in range(MIN_SAMPLES):
        learned.learn(name, 10.0)

    assert math.exp(learned.fit(name).mean) == pytest.approx(10.0, rel=1e-3)
    today = table.get_item(Key={"id": durations._key(name, time.time())})["Item"]
    assert today["samples"] == MIN_SAMPLES
    assert today["expires_at"] > time.time() + HISTORY_DAYS * 86400


def test_a_fit_is_reused_for_a_while_then_read_again(learned, unique, monkeypatch):
    name = unique("profile")
    for _ in range(MIN_SAMPLES):
        learned.learn(name, 10.0)
    first = learned.fit(name)
    for _ in range(MIN_SAMPLES * 3):
        learned.learn(name, 40.0)

    assert learned.fit(name) is first
    monkeypatch.setattr(durations, "CACHE_SECONDS", 0)
    assert learned.fit(name).mean > first.mean
