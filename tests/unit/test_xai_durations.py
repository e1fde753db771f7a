"""Parsing of the x-ratelimit-reset-* durations (xjobs.xai._duration)."""

import pytest

from xjobs.xai import _duration, ceil_seconds


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("1.5s", 1.5),
        ("20ms", 0.02),
        ("1m30s", 90.0),
        ("2h", 7200.0),
        ("1h1m1s", 3661.0),
        ("2", 2.0),
        ("0.25", 0.25),
    ],
)
def test_duration_parses_units_and_bare_seconds(text, seconds):
    assert _duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", [None, "", "garbage", "s", "ms", "soon"])
def test_duration_of_nothing_or_garbage_is_none(text):
    assert _duration(text) is None


@pytest.mark.parametrize(("seconds", "whole"), [(0, 1), (0.2, 1), (1.0, 1), (1.01, 2), (59.5, 60)])
def test_ceil_seconds_rounds_up_to_at_least_one(seconds, whole):
    assert ceil_seconds(seconds) == whole
