"""Time-sortable identifiers (xjobs.ids)."""

import re
import time

from xjobs.ids import new_id

CROCKFORD_26 = re.compile(r"[0-9A-HJKMNP-TV-Z]{26}")


def test_an_id_is_the_prefix_and_26_crockford_characters():
    job_id = new_id("job")

    prefix, _, body = job_id.partition("_")
    assert prefix == "job"
    assert len(job_id) == len("job_") + 26
    assert CROCKFORD_26.fullmatch(body), body


def test_the_first_ten_characters_encode_the_creation_millisecond():
    before = int(time.time() * 1000)
    body = new_id("b").split("_", 1)[1]
    after = int(time.time() * 1000)

    millis = int(body[:10].translate(str.maketrans("ABCDEFGHJKMNPQRSTVWXYZ", "abcdefghijklmnopqrstuv")), 32)
    assert before <= millis <= after


def test_ids_made_in_later_milliseconds_sort_later():
    made = []
    for _ in range(20):
        made.append(new_id("job"))
        time.sleep(0.002)

    assert made == sorted(made)


def test_ten_thousand_ids_are_unique():
    made = {new_id("job") for _ in range(10_000)}

    assert len(made) == 10_000
