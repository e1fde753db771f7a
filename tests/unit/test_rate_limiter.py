"""The shared rate limiter (xjobs.limiter.RateLimiter) on DynamoDB served by moto."""

import math
import threading
import time

import boto3
import pytest

from xjobs.limiter import WINDOW_RETENTION_SECONDS, RateLimiter


def leave_time_in_window(window_seconds: float, needed: float) -> None:
    """If the current window closes within `needed` seconds, sleep until just after the next one opens."""
    now = time.time()
    closes = (math.floor(now / window_seconds) + 1) * window_seconds
    if closes - now < needed:
        time.sleep(closes - now + 0.02)


def window_item(limits_table: str, scope: str, window: int) -> dict | None:
    table = boto3.resource("dynamodb").Table(limits_table)
    return table.get_item(Key={"id": f"{scope}#{window}"}, ConsistentRead=True).get("Item")


def test_a_rate_of_zero_or_less_is_refused(limits_table):
    with pytest.raises(ValueError, match="positive"):
        RateLimiter(limits_table, "nothing", 0)
    with pytest.raises(ValueError, match="positive"):
        RateLimiter(limits_table, "nothing", -1)


@pytest.mark.parametrize(
    ("per_second", "window", "capacity"),
    [(5, 1.0, 5), (1, 1.0, 1), (0.5, 2.0, 1), (0.25, 4.0, 1), (20, 1.0, 20)],
)
def test_window_and_capacity_follow_the_rate(limits_table, per_second, window, capacity):
    limiter = RateLimiter(limits_table, "shape", per_second)

    assert limiter.window_seconds == window
    assert limiter.capacity == capacity


def burst(limits_table: str, scope: str, per_second: float, callers: int) -> list[tuple[float, float, float]]:
    """`callers` threads, each with its own limiter (as many Lambdas would), call try_acquire at once,
    just after a window opens. Returns (started, ended, wait) per caller.
    """
    prepared = threading.Barrier(callers + 1)
    go = threading.Event()
    results: list[tuple[float, float, float]] = []
    lock = threading.Lock()

    def caller() -> None:
        limiter = RateLimiter(limits_table, scope, per_second)
        limiter.table.get_item(Key={"id": "warm-up"})  # open the connection before the burst
        prepared.wait()
        go.wait()
        started = time.time()
        wait = limiter.try_acquire()
        ended = time.time()
        with lock:
            results.append((started, ended, wait))

    threads = [threading.Thread(target=caller) for _ in range(callers)]
    for thread in threads:
        thread.start()
    prepared.wait(timeout=60)
    leave_time_in_window(1.0 / min(1.0, per_second), needed=0.9)
    go.set()
    for thread in threads:
        thread.join(timeout=10)
    return results


def test_twenty_concurrent_callers_in_one_window_get_exactly_five_grants(limits_table, unique):
    # Given a scope allowing 5 per second, when 20 callers ask at once within one window
    scope = unique("burst")
    results = burst(limits_table, scope, 5, callers=20)
    windows = {math.floor(t) for started, ended, _ in results for t in (started, ended)}
    assert len(windows) == 1, "precondition: the burst must fit in one window (the host was too slow)"
    (window,) = windows

    # Then exactly 5 may go now, and the other 15 learn how long until the next window opens
    assert len(results) == 20
    granted = [wait for _, _, wait in results if wait == 0.0]
    refused = [(started, ended, wait) for started, ended, wait in results if wait != 0.0]
    assert len(granted) == 5
    assert len(refused) == 15
    for started, ended, wait in refused:
        assert 0 < wait <= 1.0
        assert started + wait <= window + 1 <= ended + wait, "the wait ends when the next window opens"

    # And refused callers consumed nothing: the window's counter stopped at the capacity
    item = window_item(limits_table, scope, window)
    assert item["used"] == 5
    assert abs(int(item["expires_at"]) - (window + WINDOW_RETENTION_SECONDS)) <= 2


def test_half_a_request_per_second_allows_one_per_two_second_window(limits_table, unique):
    limiter = RateLimiter(limits_table, unique("slow"), 0.5)
    leave_time_in_window(2.0, needed=0.5)

    before = time.time()
    first = limiter.try_acquire()
    second = limiter.try_acquire()
    after = time.time()

    window_closes = (math.floor(before / 2.0) + 1) * 2.0
    assert first == 0.0
    assert 0 < second <= 2.0
    assert before + second <= window_closes <= after + second, "refused until the 2 s window closes"

    # After waiting as told, the next window grants one again
    time.sleep(second + 0.02)
    assert limiter.try_acquire() == 0.0
    assert limiter.try_acquire() > 0


def test_scopes_do_not_share_capacity(limits_table, unique):
    leave_time_in_window(1.0, needed=0.5)
    videos = RateLimiter(limits_table, unique("video"), 1)
    chats = RateLimiter(limits_table, unique("chat"), 1)

    assert videos.try_acquire() == 0.0
    assert chats.try_acquire() == 0.0
    assert videos.try_acquire() > 0
