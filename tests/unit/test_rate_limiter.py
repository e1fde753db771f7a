"""The shared rate limiter (xjobs.limiter.RateLimiter) on DynamoDB served by moto."""

import math
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import boto3
import pytest

from xjobs.limiter import (
    CUT_FAR,
    CUT_NEAR,
    GROW_EVERY_SECONDS,
    GROW_FAST,
    MAX_BLOCK_SECONDS,
    WINDOW_RETENTION_SECONDS,
    AdaptiveRate,
    RateLimiter,
)


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
    for _ in range(3):  # a loaded machine may spread the burst over a window edge: try again
        scope = unique("burst")
        results = burst(limits_table, scope, 5, callers=20)
        windows = {math.floor(t) for started, ended, _ in results for t in (started, ended)}
        if len(windows) == 1:
            break
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
    for _ in range(3):  # on a loaded machine the two calls may straddle a window edge: measure again
        leave_time_in_window(2.0, needed=1.5)
        before = time.time()
        first = limiter.try_acquire()
        second = limiter.try_acquire()
        after = time.time()
        window_closes = (math.floor(before / 2.0) + 1) * 2.0
        if after < window_closes:
            break
        time.sleep(second + 0.02)
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


# -- tokens per window -----------------------------------------------------------------------------


def test_a_token_rate_of_zero_or_less_is_refused(limits_table):
    with pytest.raises(ValueError, match="positive"):
        RateLimiter(limits_table, "nothing", 10, tokens_per_second=0)


@pytest.mark.parametrize(
    ("per_second", "tokens_per_second", "token_capacity"),
    [(10, 1000, 1000), (0.5, 100, 200), (10, 0.4, 1)],
)
def test_the_token_capacity_is_the_token_rate_over_the_window(
    limits_table, per_second, tokens_per_second, token_capacity
):
    limiter = RateLimiter(limits_table, "shape", per_second, tokens_per_second)

    assert limiter.token_capacity == token_capacity
    assert RateLimiter(limits_table, "shape", per_second).token_capacity is None


def test_requests_go_while_their_tokens_fit_the_window(limits_table, unique):
    scope = unique("tokens")
    limiter = RateLimiter(limits_table, scope, 100, tokens_per_second=1000)
    leave_time_in_window(1.0, needed=0.5)
    window = math.floor(time.time())

    assert limiter.try_acquire(tokens=600) == 0.0
    assert limiter.try_acquire(tokens=300) == 0.0
    refused = limiter.try_acquire(tokens=200)  # 1,100 > 1,000
    assert 0 < refused <= 1.0
    assert limiter.try_acquire(tokens=100) == 0.0, "a request that still fits goes"
    assert limiter.try_acquire(tokens=1) > 0

    item = window_item(limits_table, scope, window)
    assert (item["used"], item["used_tokens"]) == (3, 1000), "refused requests consumed nothing"


def test_a_request_larger_than_a_window_goes_alone_into_an_empty_one(limits_table, unique):
    limiter = RateLimiter(limits_table, unique("huge"), 100, tokens_per_second=1000)
    leave_time_in_window(1.0, needed=0.5)

    assert limiter.try_acquire(tokens=1) == 0.0
    assert limiter.try_acquire(tokens=50_000) > 0, "not into a window others use"
    leave_time_in_window(1.0, needed=1.0)  # the next window
    assert limiter.try_acquire(tokens=50_000) == 0.0, "alone, it goes: it could never fit otherwise"
    assert limiter.try_acquire(tokens=1) > 0


def test_the_request_count_still_limits_when_tokens_are_left(limits_table, unique):
    limiter = RateLimiter(limits_table, unique("count"), 2, tokens_per_second=1_000_000)
    leave_time_in_window(1.0, needed=0.5)

    assert [limiter.try_acquire(tokens=1) == 0.0 for _ in range(3)] == [True, True, False]


def test_several_requests_are_admitted_all_or_nothing(limits_table, unique):
    scope = unique("several")
    limiter = RateLimiter(limits_table, scope, 5, tokens_per_second=1000)
    leave_time_in_window(1.0, needed=0.5)
    window = math.floor(time.time())

    assert limiter.try_acquire(tokens=300, requests=3) == 0.0
    assert limiter.try_acquire(tokens=30, requests=3) > 0, "3 + 3 requests do not fit 5"
    assert limiter.try_acquire(tokens=800, requests=2) > 0, "2 requests fit, 1,100 tokens do not"
    assert limiter.try_acquire(tokens=700, requests=2) == 0.0

    item = window_item(limits_table, scope, window)
    assert (item["used"], item["used_tokens"]) == (5, 1000)


def token_burst(limits_table: str, scope: str, callers: int) -> list[tuple[float, float, float]]:
    """`callers` threads with limiters of 100 requests and 500 tokens a second each ask for 100 tokens
    at once, just after a window opens. Returns (started, ended, wait) per caller."""
    prepared = threading.Barrier(callers + 1)
    go = threading.Event()
    results: list[tuple[float, float, float]] = []

    def caller() -> None:
        limiter = RateLimiter(limits_table, scope, 100, tokens_per_second=500)
        limiter.table.get_item(Key={"id": "warm-up"})
        prepared.wait()
        go.wait()
        started = time.time()
        wait = limiter.try_acquire(tokens=100)
        results.append((started, time.time(), wait))

    threads = [threading.Thread(target=caller) for _ in range(callers)]
    for thread in threads:
        thread.start()
    prepared.wait(timeout=60)
    leave_time_in_window(1.0, needed=0.9)
    go.set()
    for thread in threads:
        thread.join(timeout=10)
    return results


def test_concurrent_callers_share_the_tokens_exactly(limits_table, unique):
    for _ in range(3):  # a burst that straddles two windows (a slow host) is tried again
        scope = unique("token-burst")
        results = token_burst(limits_table, scope, callers=12)
        windows = {math.floor(t) for started, ended, _ in results for t in (started, ended)}
        if len(windows) == 1:
            break
    assert len(windows) == 1, "precondition: the burst must fit in one window (the host was too slow)"

    assert len(results) == 12
    assert sum(1 for _, _, wait in results if wait == 0.0) == 5, "500 tokens: five requests of 100"
    item = window_item(limits_table, scope, windows.pop())
    assert item["used_tokens"] == 500
    assert item["used"] == 5


# -- block -----------------------------------------------------------------------------------------


def test_block_holds_every_caller_back_for_the_seconds_given(limits_table, unique):
    scope = unique("block")
    leave_time_in_window(1.0, needed=0.5)
    blocker = RateLimiter(limits_table, scope, 5, tokens_per_second=1000)
    other = RateLimiter(limits_table, scope, 5, tokens_per_second=1000)  # another worker, same scope
    now = time.time()

    blocker.block(2.0)

    first, last = math.floor(now), math.floor(now + 2.0)
    for window in range(first, last + 1):
        assert window_item(limits_table, scope, window)["used"] == blocker.capacity, window
    assert window_item(limits_table, scope, last + 1) is None, "nothing past the block"
    assert other.try_acquire(tokens=1) > 0
    assert blocker.try_acquire() > 0


def test_a_blocked_window_opens_again_after_the_block(limits_table, unique):
    scope = unique("unblock")
    leave_time_in_window(1.0, needed=0.5)
    limiter = RateLimiter(limits_table, scope, 5)

    limiter.block(0.1)  # the current window only (0.1 s later is the same window)

    wait = limiter.try_acquire()
    assert 0 < wait <= 1.0
    time.sleep(wait + 0.02)
    assert limiter.try_acquire() == 0.0


def test_block_is_capped(limits_table, unique):
    scope = unique("capped")
    limiter = RateLimiter(limits_table, scope, 1)
    now = time.time()

    limiter.block(10 * MAX_BLOCK_SECONDS)

    assert window_item(limits_table, scope, math.floor(now + MAX_BLOCK_SECONDS) - 1) is not None
    assert window_item(limits_table, scope, math.floor(now + MAX_BLOCK_SECONDS) + 2) is None


def test_block_keeps_the_window_expiry_of_a_window_in_use(limits_table, unique):
    scope = unique("expiry")
    leave_time_in_window(1.0, needed=0.5)
    limiter = RateLimiter(limits_table, scope, 5)
    limiter.try_acquire()
    window = math.floor(time.time())
    expires = window_item(limits_table, scope, window)["expires_at"]

    limiter.block(0.1)

    item = window_item(limits_table, scope, window)
    assert item["used"] == limiter.capacity
    assert item["expires_at"] == expires


# -- the adaptive rate -----------------------------------------------------------------------------


def test_a_fractional_rate_alternates_window_capacities_that_add_up_to_it(limits_table):
    limiter = RateLimiter(limits_table, "fraction", 9.5)

    capacities = [limiter.capacity_of(window) for window in range(1000, 1010)]

    assert set(capacities) == {9, 10}
    assert sum(capacities) == 95


def test_the_rate_starts_from_the_configuration(limits_table, unique):
    rate = AdaptiveRate(limits_table, unique("start"), 600, 60_000).read()

    assert (rate.requests_per_minute, rate.tokens_per_minute, rate.epoch, rate.version) == (600, 60_000, 0, 0)


def test_concurrent_429s_of_one_epoch_cut_the_rate_once(limits_table, unique):
    # GIVEN ten workers that all got a 429 for requests admitted under the configured rate
    scope = unique("cut")
    workers = [AdaptiveRate(limits_table, scope, 600, 60_000) for _ in range(10)]
    with ThreadPoolExecutor(max_workers=10) as pool:
        list(pool.map(lambda worker: worker.cut(0), workers))

    # THEN the shared rate took one multiplicative step down, not ten
    rate = AdaptiveRate(limits_table, scope, 600, 60_000).read()
    assert rate.requests_per_minute == pytest.approx(600 * CUT_FAR)
    assert rate.tokens_per_minute == pytest.approx(60_000 * CUT_FAR)
    assert (rate.epoch, rate.ceiling) == (1, 600)

    # AND a late 429 of a request admitted before the cut changes nothing
    assert workers[0].cut(0).requests_per_minute == pytest.approx(600 * CUT_FAR)
    # AND a 429 under the new rate, near the ceiling it found, steps back less
    near = AdaptiveRate(limits_table, scope, 600, 60_000)
    for _ in range(8):  # climb back to the ceiling (grow waits a second between steps)
        rate = near.read(fresh=True)
        rate = near._write(rate, 600, 60_000)
    assert near.cut(rate.epoch).requests_per_minute == pytest.approx(600 * CUT_NEAR)


def test_the_rate_climbs_fast_far_below_the_last_429_then_slowly_and_once_a_second(limits_table, unique):
    scope = unique("grow")
    rate = AdaptiveRate(limits_table, scope, 600, 60_000)
    rate.cut(0)  # 450 a minute, ceiling 600

    assert rate.grow().requests_per_minute == pytest.approx(450), "not within a second of the cut"
    steps = []
    for _ in range(7):
        time.sleep(GROW_EVERY_SECONDS + 0.05)
        steps.append(rate.grow().requests_per_minute)
        assert AdaptiveRate(limits_table, scope, 600, 60_000).read().requests_per_minute == steps[-1]

    # 450 -> 472.5 -> 496.1 -> 520.9 -> 540 (0.9 of the ceiling) -> then 0.5 % a step
    assert steps[:4] == pytest.approx([450 * 1.05, 450 * 1.05**2, 450 * 1.05**3, 540], abs=0.01)
    assert steps[4:] == pytest.approx([540 * 1.005, 540 * 1.005**2, 540 * 1.005**3], abs=0.01)
    assert rate.read().tokens_per_minute == pytest.approx(60_000 * steps[-1] / 600, rel=1e-4)


def test_concurrent_growers_take_one_step(limits_table, unique):
    scope = unique("grow-once")
    workers = [AdaptiveRate(limits_table, scope, 600, 60_000) for _ in range(10)]
    started = time.time()
    with ThreadPoolExecutor(max_workers=10) as pool:
        list(pool.map(lambda worker: worker.grow(), workers))
    took = time.time() - started

    rate = AdaptiveRate(limits_table, scope, 600, 60_000).read()
    steps = 1 + math.floor(took / GROW_EVERY_SECONDS)  # one, unless the host took seconds for it
    assert 1 <= rate.version <= steps
    assert rate.requests_per_minute == pytest.approx(600 * (1 + GROW_FAST) ** rate.version, abs=0.01)


def test_stated_limits_replace_the_learned_ones_and_cap_the_climb(limits_table, unique):
    scope = unique("stated")
    rate = AdaptiveRate(limits_table, scope, 6000, 10_000_000)

    stated = rate.stated(600, 90_000)
    assert (stated.requests_per_minute, stated.tokens_per_minute, stated.stated) == (600, 90_000, 600)
    assert rate.stated(600, 90_000).version == stated.version, "the same statement writes nothing"
    time.sleep(GROW_EVERY_SECONDS + 0.05)
    assert rate.grow().requests_per_minute == 600, "never above what xAI states"


def test_a_new_configuration_starts_again_from_it(limits_table, unique):
    scope = unique("reconfigured")
    AdaptiveRate(limits_table, scope, 600, 60_000).cut(0)

    fresh = AdaptiveRate(limits_table, scope, 1200, 60_000)
    assert fresh.read().requests_per_minute == 1200
    assert fresh.cut(0).requests_per_minute == pytest.approx(1200 * CUT_FAR)


def test_quarter_second_windows_spread_a_second_of_requests(limits_table, unique):
    limiter = RateLimiter(limits_table, unique("quarter"), 10, window_seconds=0.25)

    assert limiter.window_seconds == 0.25
    assert [limiter.capacity_of(w) for w in range(4000, 4004)] == [2, 3, 2, 3]
    assert limiter.try_acquire(requests=4) > 0, "more than a window holds is refused at once"


def test_busy_means_the_last_second_admitted_about_the_whole_rate(limits_table, unique):
    for _ in range(3):  # a second in which the slow host missed a window is tried again
        scope = unique("busy")
        limiter = RateLimiter(limits_table, scope, 8, window_seconds=0.25)
        leave_time_in_window(1.0, needed=0.95)
        second = math.floor(time.time())
        last = 4 * second + 3  # the second's last quarter
        admitted = []
        for quarter in range(4):  # every window of this second used to its capacity
            time.sleep(max(0.0, second + quarter / 4 + 0.01 - time.time()))
            admitted.append(limiter.try_acquire(requests=2) == 0.0)
        if all(admitted):
            break
    assert all(admitted), "precondition: the host was too slow"

    assert limiter.busy(last)
    assert not limiter.busy(last - 2), "half of it was the second before, unused"
    other = RateLimiter(limits_table, scope, 20, window_seconds=0.25)  # a rate it did not use
    assert not other.busy(last)


def test_what_xai_accepted_is_admissions_minus_429s_over_the_last_second(limits_table, unique):
    limiter = RateLimiter(limits_table, unique("accepted"), 40, window_seconds=0.25)
    leave_time_in_window(1.0, needed=0.5)
    assert limiter.try_acquire(requests=10) == 0.0
    window = limiter.last_window

    limiter.count_refused(window)
    assert limiter.accepted_per_minute(window) is None, "one 429 says too little"
    for _ in range(5):
        limiter.count_refused(window)

    assert limiter.accepted_per_minute(window) == pytest.approx((10 - 6) * 60)
