"""Ingest (xjobs.batch_ingest): an S3 JSONL file streamed into the work queue, on moto's server.

Good lines become work messages, bad lines error results; progress is checkpointed so an ingest that
runs out of time continues in a next invocation from its offset.
"""

import json
import os
import subprocess
import sys
import threading
import uuid

import boto3
import pytest

from tests.unit.conftest import LambdaContext
from xjobs import batch_finalize, batch_ingest, batch_worker, batches
from xjobs.batch_ingest import CHECKPOINT_LINES, INLINE_BODY_BYTES, MAX_LINE_BYTES, TIME_MARGIN_MS
from xjobs.batch_lines import estimated_tokens


def request(custom_id: str, content: str = "hello", **body) -> dict:
    return {
        "custom_id": custom_id,
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": "grok-4", "messages": [{"role": "user", "content": content}], **body},
    }


def jsonl(lines: list, *, trailing_newline: bool = True) -> bytes:
    """dict lines are JSON-encoded, str/bytes lines are written as they are."""
    encoded = [
        json.dumps(line).encode()
        if isinstance(line, dict)
        else (line.encode() if isinstance(line, str) else line)
        for line in lines
    ]
    return b"\n".join(encoded) + (b"\n" if trailing_newline else b"")


def upload(bucket: str, content: bytes) -> str:
    key = f"{batch_ingest.INCOMING_PREFIX}{uuid.uuid4().hex}.jsonl"
    boto3.client("s3").put_object(Bucket=bucket, Key=key, Body=content)
    return key


def s3_event(bucket: str, key: str) -> dict:
    return {"Records": [{"s3": {"bucket": {"name": bucket}, "object": {"key": key}}}]}


def received(queue_url: str) -> list[dict]:
    """The bodies of every message in the queue (left in flight: the queue's visibility is 720 s)."""
    sqs = boto3.client("sqs")
    bodies = []
    while True:
        reply = sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10)
        if not reply.get("Messages"):
            return bodies
        bodies.extend(json.loads(m["Body"]) for m in reply["Messages"])


def error_items(settings, batch_id: str) -> dict[int, dict]:
    """The batch's result items by line (at ingest, only bad lines have one), outcome parsed."""
    store = batches.BatchStore(settings.batches_table, settings.batch_items_table)
    return {
        item["line"]: {**item, "outcome": json.loads(item["outcome"])} for item in store.results(batch_id)
    }


def batch_of(settings, batch_id: str) -> dict:
    return batches.BatchStore(settings.batches_table, settings.batch_items_table).get(batch_id)


@pytest.fixture
def ingest_file(batch_settings, data_bucket):
    """Upload content under batches/incoming/ and run the S3 event through the ingest; the batch id."""

    def ingest(content: bytes, context=None) -> str:
        key = upload(data_bucket, content)
        (batch_id,) = batch_ingest.handle_s3_event(s3_event(data_bucket, key), context or LambdaContext())
        return batch_id

    return ingest


@pytest.fixture
def short_of_time(stand_in_function) -> LambdaContext:
    """An invocation that must hand over at its first checkpoint; it invokes a stand-in of itself."""
    arn = stand_in_function(f"ingest-{uuid.uuid4().hex[:8]}")
    return LambdaContext(remaining_ms=TIME_MARGIN_MS - 1, invoked_function_arn=arn)


# -- one invocation --------------------------------------------------------------------------------


def test_a_mixed_file_enqueues_exactly_the_good_lines_and_stores_the_bad_ones(
    ingest_file, batch_settings, work_queue
):
    file_part = {"type": "file", "file": {"file_id": "file-1"}}
    lines = [
        request("a", "first"),  # 1
        '{"custom_id": "broken", "method": "POST",',  # 2 invalid JSON
        "[1, 2, 3]",  # 3 not an object
        {k: v for k, v in request("x").items() if k != "custom_id"},  # 4
        {k: v for k, v in request("no-method").items() if k != "method"},  # 5
        {k: v for k, v in request("no-url").items() if k != "url"},  # 6
        {k: v for k, v in request("no-body").items() if k != "body"},  # 7
        {**request("wrong-url"), "url": "/v1/embeddings"},  # 8
        {**request("get"), "method": "GET"},  # 9
        request("x" * 65),  # 10
        request("a", "again"),  # 11 duplicate of line 1
        request("n2", n=2, messages=[{"role": "user", "content": [file_part]}]),  # 12
        request("streamed", stream=True),  # 13
        {**request("extra"), "priority": "high"},  # 14
        "",  # blank: skipped, not counted
        "   \t",  # whitespace only: skipped
        request("b", "second", max_tokens=5),  # 15
    ]
    content = jsonl(lines)

    batch_id = ingest_file(content)

    # The queue holds exactly the two good lines, numbered by their place among the non-blank lines
    messages = sorted(received(work_queue), key=lambda m: m["line"])
    batch = batch_of(batch_settings, batch_id)
    assert [(m["line"], m["custom_id"]) for m in messages] == [(1, "a"), (15, "b")]
    assert messages[0]["body"] == lines[0]["body"]
    assert messages[1]["body"] == lines[16]["body"]
    for message, line in zip(messages, (lines[0], lines[16]), strict=True):
        assert message["tokens"] == estimated_tokens(line["body"])
        assert message["batch_id"] == batch_id
        assert message["expires_at"] == batch["expires_at"]
        assert "body_key" not in message

    # Every bad line has an error result naming its code, its line and (when it had one) its custom_id
    errors = error_items(batch_settings, batch_id)
    expected = {
        2: ("invalid_json", None),
        3: ("invalid_json", None),
        4: ("invalid_request", None),
        5: ("invalid_request", "no-method"),
        6: ("invalid_request", "no-url"),
        7: ("invalid_request", "no-body"),
        8: ("invalid_request", "wrong-url"),
        9: ("invalid_request", "get"),
        10: ("invalid_request", "x" * 65),
        11: ("duplicate_custom_id", "a"),
        12: ("invalid_request", "n2"),
        13: ("invalid_request", "streamed"),
        14: ("invalid_request", "extra"),
    }
    assert {
        line: (e["outcome"]["error"]["code"], e["outcome"]["custom_id"]) for line, e in errors.items()
    } == (expected)
    for line, item in errors.items():
        assert item["ok"] is False
        assert item["outcome"]["response"] is None
        assert item["outcome"]["error"]["line"] == line
        assert item["outcome"]["id"].startswith("batch_req_")
    assert "'custom_id'" in errors[4]["outcome"]["error"]["message"]
    assert "'url'" in errors[8]["outcome"]["error"]["message"]

    # The counters add up; the batch runs
    assert batch["lines"] == 15
    assert batch["enqueued"] == 2
    assert batch["ingest_errors"] == 13
    assert batch["ingested"] is True
    assert batch["offset"] == len(content)
    assert batch["status"] == batches.IN_PROGRESS
    assert (batch["done"], batch["failed"]) == (13, 13), "the error lines are counted as results"


def test_the_last_line_counts_without_a_trailing_newline(ingest_file, batch_settings, work_queue):
    content = jsonl([request("a"), request("b"), request("c")], trailing_newline=False)

    batch_id = ingest_file(content)

    assert [m["custom_id"] for m in sorted(received(work_queue), key=lambda m: m["line"])] == ["a", "b", "c"]
    batch = batch_of(batch_settings, batch_id)
    assert (batch["lines"], batch["enqueued"], batch["offset"]) == (3, 3, len(content))


def test_a_body_over_64_kb_travels_through_s3(ingest_file, batch_settings, work_queue, data_bucket):
    big = request("big", "y" * (INLINE_BODY_BYTES + 1000))
    small = request("small")

    batch_id = ingest_file(jsonl([small, big]))

    messages = {m["custom_id"]: m for m in received(work_queue)}
    assert "body" not in messages["big"]
    assert messages["big"]["body_key"] == batches.body_key(batch_id, 2)
    stored = boto3.client("s3").get_object(Bucket=data_bucket, Key=messages["big"]["body_key"])
    assert json.loads(stored["Body"].read()) == big["body"]
    assert messages["big"]["tokens"] == estimated_tokens(big["body"])
    assert messages["small"]["body"] == small["body"], "a small body stays in the message"
    assert len(json.dumps(messages["big"])) < 1024


def test_a_repeated_upload_event_opens_and_ingests_the_batch_once(batch_settings, data_bucket, work_queue):
    key = upload(data_bucket, jsonl([request("a"), request("b")]))

    first = batch_ingest.handle_s3_event(s3_event(data_bucket, key), LambdaContext())
    second = batch_ingest.handle_s3_event(s3_event(data_bucket, key), LambdaContext())

    assert first == second
    assert len(received(work_queue)) == 2, "the second event must not enqueue the lines again"
    batch = batch_of(batch_settings, first[0])
    assert batch["tenant"] == batch_ingest.DIRECT_UPLOAD_TENANT
    assert batch["input_key"] == key


def test_objects_outside_the_incoming_prefix_start_nothing(batch_settings, data_bucket, work_queue):
    key = f"batches/elsewhere/{uuid.uuid4().hex}.jsonl"
    boto3.client("s3").put_object(Bucket=data_bucket, Key=key, Body=jsonl([request("a")]))

    assert batch_ingest.handle_s3_event(s3_event(data_bucket, key), LambdaContext()) == []
    assert received(work_queue) == []


def test_an_empty_file_is_handed_to_the_finalizer_at_once(ingest_file, batch_settings, work_queue):
    batch_id = ingest_file(b"")

    batch = batch_of(batch_settings, batch_id)
    assert batch["status"] == batches.FINALIZING
    assert (batch["lines"], batch["enqueued"], batch["ingested"]) == (0, 0, True)
    assert received(work_queue) == []


def test_a_file_of_only_bad_lines_is_handed_to_the_finalizer(ingest_file, batch_settings, work_queue):
    batch_id = ingest_file(jsonl(["not json", {**request("a"), "method": "GET"}]))

    batch = batch_of(batch_settings, batch_id)
    assert batch["status"] == batches.FINALIZING
    assert (batch["lines"], batch["enqueued"], batch["ingest_errors"]) == (2, 0, 2)
    assert received(work_queue) == []


def test_a_batch_cancelled_before_its_ingest_gives_every_line_an_error_line(
    batch_settings, data_bucket, work_queue
):
    store = batches.BatchStore(batch_settings.batches_table, batch_settings.batch_items_table)
    lines = [request(f"r{i}") for i in range(1, 26)]
    lines[3] = "not json"
    key = upload(data_bucket, jsonl(lines))
    batch_id = batch_ingest.open_batch(data_bucket, key)
    store.cancel(batch_id, batch_ingest.DIRECT_UPLOAD_TENANT)

    batch_ingest.ingest(batch_id, LambdaContext())

    batch = batch_of(batch_settings, batch_id)
    assert received(work_queue) == [], "nothing is sent once the cancel is seen"
    errors = error_items(batch_settings, batch_id)
    assert sorted(errors) == list(range(1, 26)), "every line has its result"
    codes = {line: e["outcome"]["error"]["code"] for line, e in errors.items()}
    assert codes == {line: "invalid_json" if line == 4 else "batch_cancelled" for line in range(1, 26)}
    assert errors[5]["outcome"]["custom_id"] == "r5"
    assert (batch["lines"], batch["enqueued"], batch["done"]) == (25, 0, 25)
    assert batch["status"] == batches.FINALIZING


def test_a_cancel_seen_mid_ingest_turns_the_rest_of_the_file_into_error_lines(
    batch_settings, data_bucket, work_queue, short_of_time
):
    store = batches.BatchStore(batch_settings.batches_table, batch_settings.batch_items_table)
    total = 2 * CHECKPOINT_LINES + 30
    key = upload(data_bucket, jsonl([request(f"r{i}") for i in range(1, total + 1)]))
    batch_id = batch_ingest.open_batch(data_bucket, key)
    batch_ingest.ingest(batch_id, short_of_time)  # stops after its first checkpoint
    store.cancel(batch_id, batch_ingest.DIRECT_UPLOAD_TENANT)

    batch_ingest.ingest(batch_id, LambdaContext())

    batch = batch_of(batch_settings, batch_id)
    sent = sorted(m["line"] for m in received(work_queue))
    errors = error_items(batch_settings, batch_id)
    assert sent == list(range(1, CHECKPOINT_LINES + 1))
    assert sorted(errors) == list(range(CHECKPOINT_LINES + 1, total + 1)), "no line lost, none twice"
    assert {e["outcome"]["error"]["code"] for e in errors.values()} == {"batch_cancelled"}
    assert (batch["lines"], batch["enqueued"], batch["ingested"]) == (total, len(sent), True)
    assert batch["done"] == len(errors)
    assert batch["status"] == batches.CANCELLING, "the sent lines are still to be accounted for"


def test_hostile_lines_are_their_own_error_lines_and_the_rest_runs(ingest_file, batch_settings, work_queue):
    lines = [
        request("a"),
        b"[" * 100_000 + b"]" * 100_000,
        json.dumps(request("b\ud800")).encode(),
        request("c", max_tokens=10**60),
        b'{"custom_id": "d", ' + b'"x": ' * 50_000,
        request("e"),
    ]

    batch_id = ingest_file(jsonl(lines))

    sent = sorted((m["line"], m["custom_id"]) for m in received(work_queue))
    assert sent == [(1, "a"), (4, "c"), (6, "e")]
    errors = error_items(batch_settings, batch_id)
    assert {line: e["outcome"]["error"]["code"] for line, e in errors.items()} == {
        2: "invalid_json",
        3: "invalid_json",
        5: "invalid_json",
    }
    assert errors[3]["custom_id"] == "", "a custom_id that cannot be stored is left out"
    assert batch_of(batch_settings, batch_id)["ingested"] is True


def test_a_file_over_the_line_limit_fails_the_batch_before_any_line_runs(
    ingest_file, batch_settings, work_queue, monkeypatch
):
    monkeypatch.setenv("BATCH_MAX_LINES", "5")
    from xjobs.settings import get_settings

    get_settings.cache_clear()
    at_limit = ingest_file(jsonl([request(f"r{i}") for i in range(5)] + ["", ""]))
    assert batch_of(batch_settings, at_limit)["enqueued"] == 5, "blank lines do not count"
    received(work_queue)

    over = ingest_file(jsonl([request(f"r{i}") for i in range(6)]))

    batch = batch_of(batch_settings, over)
    assert received(work_queue) == []
    assert error_items(batch_settings, over) == {}, "no item per line"
    assert batch["refused"]["code"] == "too_many_lines"
    assert batch["status"] == batches.FINALIZING
    assert batch_finalize.finalize(over)["errors"]["data"][0]["code"] == "too_many_lines"


def test_two_ingests_of_one_upload_run_each_line_once(batch_settings, data_bucket, work_queue, sim):
    from tests.unit.conftest import deliveries
    from tests.unit.test_batch_worker import sqs_event

    lines = [request(f"r{i}", f"q{i}") for i in range(1, 121)] + [request("r7", "again")]
    key = upload(data_bucket, jsonl(lines))
    batch_id = batch_ingest.open_batch(data_bucket, key)
    # Two invocations for the same event (S3 delivered it twice), both started before either checkpointed
    go = threading.Barrier(2)

    def run() -> None:
        go.wait()
        batch_ingest.ingest(batch_id, LambdaContext())

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)

    messages = deliveries(work_queue)
    assert {json.loads(m["Body"])["line"] for m in messages} == set(range(1, 121))
    errors = error_items(batch_settings, batch_id)
    assert [(line, e["outcome"]["error"]["code"]) for line, e in errors.items()] == [
        (121, "duplicate_custom_id")
    ]
    # Whatever was sent twice is run once: the workers, each message delivered (copies to several)
    for start in range(0, len(messages), 10):
        batch_worker.handle(sqs_event(messages[start : start + 10]), LambdaContext())
    assert len([c for c in sim.calls if c.path == "/v1/chat/completions"]) == 120
    finished = batch_of(batch_settings, batch_id)
    assert (finished["done"], finished["lines"], finished["status"]) == (121, 121, batches.FINALIZING)


# -- across invocations ----------------------------------------------------------------------------


def test_an_ingest_out_of_time_continues_from_its_offset(
    ingest_file, batch_settings, work_queue, short_of_time
):
    # Every tenth line is good (the others are cheap bad lines); line 1,050 repeats line 1's custom_id,
    # more than two checkpoints after it.
    total = 2 * CHECKPOINT_LINES + 100
    duplicate_at = 2 * CHECKPOINT_LINES + 50
    lines = []
    for n in range(1, total + 1):
        if n == duplicate_at:
            lines.append(request("good-1", "again"))
        elif n % 10 == 1:
            lines.append(request(f"good-{n}"))
        else:
            lines.append({**request(f"bad-{n}"), "method": "GET"})
    content = jsonl(lines)
    ends = [len(jsonl(lines[:n])) for n in (CHECKPOINT_LINES, 2 * CHECKPOINT_LINES)]
    good = [n for n in range(1, total + 1) if n % 10 == 1]

    # The first invocation stops at its first checkpoint
    batch_id = ingest_file(content, short_of_time)
    first = received(work_queue)
    batch = batch_of(batch_settings, batch_id)
    assert (batch["offset"], batch["lines"], batch["ingested"]) == (ends[0], CHECKPOINT_LINES, False)
    assert sorted(m["line"] for m in first) == [n for n in good if n <= CHECKPOINT_LINES]
    assert batch["enqueued"] == len(first)

    # The next one (also short of time) does the next stretch, sending nothing twice
    batch_ingest.ingest(batch_id, short_of_time)
    second = received(work_queue)
    batch = batch_of(batch_settings, batch_id)
    assert (batch["offset"], batch["lines"], batch["ingested"]) == (ends[1], 2 * CHECKPOINT_LINES, False)
    assert sorted(m["line"] for m in second) == [
        n for n in good if CHECKPOINT_LINES < n <= 2 * CHECKPOINT_LINES
    ]

    # The last one finishes, and still knows the custom_ids before its offset
    batch_ingest.ingest(batch_id, LambdaContext())
    third = received(work_queue)
    batch = batch_of(batch_settings, batch_id)
    assert sorted(m["line"] for m in third) == [n for n in good if n > 2 * CHECKPOINT_LINES]
    all_lines = [m["line"] for m in first + second + third]
    assert sorted(all_lines) == good, "every good line sent exactly once"
    errors = error_items(batch_settings, batch_id)
    assert errors[duplicate_at]["outcome"]["error"]["code"] == "duplicate_custom_id"
    assert sorted(errors) == [n for n in range(1, total + 1) if n not in good]
    assert batch["ingested"] is True
    assert batch["offset"] == len(content)
    assert (batch["lines"], batch["enqueued"], batch["ingest_errors"]) == (
        total,
        len(good),
        total - len(good),
    )


def test_an_ingest_that_ran_out_of_time_exactly_at_the_end_of_the_file_finishes(
    ingest_file, batch_settings, work_queue, short_of_time
):
    lines = [request(f"r{n}") if n % 50 == 0 else "bad" for n in range(1, CHECKPOINT_LINES + 1)]
    content = jsonl(lines)
    batch_id = ingest_file(content, short_of_time)
    batch = batch_of(batch_settings, batch_id)
    assert (batch["offset"], batch["ingested"]) == (len(content), False), (
        "precondition: handed over at the end"
    )

    batch_ingest.ingest(batch_id, LambdaContext())

    batch = batch_of(batch_settings, batch_id)
    good = CHECKPOINT_LINES // 50
    assert batch["ingested"] is True
    assert (batch["lines"], batch["enqueued"], batch["ingest_errors"]) == (
        CHECKPOINT_LINES,
        good,
        CHECKPOINT_LINES - good,
    )
    assert len(received(work_queue)) == good


def test_a_line_over_the_size_limit_is_an_error_and_later_offsets_stay_right(
    ingest_file, batch_settings, work_queue, short_of_time
):
    huge = '{"custom_id": "huge", "pad": "' + "z" * (MAX_LINE_BYTES + (1 << 20)) + '"}'
    rest = [{**request(f"bad-{n}"), "method": "GET"} for n in range(2, CHECKPOINT_LINES + 1)]
    after = [request("after-1"), request("after-2")]
    content = jsonl([huge, *rest, *after])

    batch_id = ingest_file(content, short_of_time)
    batch = batch_of(batch_settings, batch_id)
    assert batch["offset"] == len(jsonl([huge, *rest])), (
        "the checkpoint's offset is a byte offset in the file"
    )
    batch_ingest.ingest(batch_id, LambdaContext())

    batch = batch_of(batch_settings, batch_id)
    errors = error_items(batch_settings, batch_id)
    assert errors[1]["outcome"]["error"]["code"] == "line_too_long"
    assert sorted(m["custom_id"] for m in received(work_queue)) == ["after-1", "after-2"]
    assert (batch["lines"], batch["enqueued"], batch["ingest_errors"]) == (
        CHECKPOINT_LINES + 2,
        2,
        CHECKPOINT_LINES,
    )


# -- memory ----------------------------------------------------------------------------------------

# Runs in a child process so tracemalloc sees the ingest alone, not moto's server (which holds the file
# and the messages in this process). The clients are warmed up by a first small ingest.
_MEASURE = """
import json, sys, tracemalloc
from aws_lambda_powertools import Logger
from xjobs import batch_ingest
Logger(service=batch_ingest.logger.service, level="ERROR")
warm, *measured = sys.argv[1:]
batch_ingest.ingest(warm, None)
peaks = []
tracemalloc.start()
for batch_id in measured:
    before = tracemalloc.get_traced_memory()[0]
    tracemalloc.reset_peak()
    batch_ingest.ingest(batch_id, None)
    peaks.append(tracemalloc.get_traced_memory()[1] - before)
print(json.dumps(peaks))
"""


def test_peak_memory_grows_far_less_than_the_file(batch_settings, data_bucket, http_peer):
    # moto's SQS takes time linear in the queue's length per message, so the work queue here is a peer
    # that accepts every SendMessageBatch (it answers {}: no entry failed); S3 and DynamoDB are moto's.
    def opened(count: int) -> tuple[str, int]:
        content = jsonl([request(f"req-{n}", f"{n} " + "w" * 2000) for n in range(count)])
        return batch_ingest.open_batch(data_bucket, upload(data_bucket, content)), len(content)

    warm, _ = opened(20)
    small, small_bytes = opened(1_000)
    large, large_bytes = opened(10_000)
    environment = os.environ | {
        "PYTHONPATH": os.pathsep.join(sys.path),
        "AWS_ENDPOINT_URL_SQS": http_peer.url,
    }

    run = subprocess.run(
        [sys.executable, "-c", _MEASURE, warm, small, large],
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert run.returncode == 0, run.stderr[-3000:]
    small_peak, large_peak = json.loads(run.stdout.splitlines()[-1])
    sent = sum(len(json.loads(r.body)["Entries"]) for r in http_peer.received)
    assert sent == 20 + 1_000 + 10_000, "every line reached the queue"
    assert batch_of(batch_settings, large)["enqueued"] == 10_000
    file_growth = large_bytes - small_bytes
    assert large_peak - small_peak < 0.15 * file_growth, (small_peak, large_peak, file_growth)
    assert large_peak < 0.5 * large_bytes, (large_peak, large_bytes)
