"""The batch sample events in events/ (also for `sam local invoke`) drive the real handlers."""

import json
import time
from pathlib import Path

import pytest

from .helpers import jsonl, read_lines, request_line

EVENTS = Path(__file__).resolve().parents[2] / "events"


def load(name: str) -> dict:
    return json.loads((EVENTS / name).read_text())


@pytest.mark.parametrize(
    ("event", "status"),
    [
        ("api_create_file.json", 200),
        ("api_create_batch.json", 400),  # the example's input file was never uploaded
        ("api_get_batch.json", 404),
        ("api_cancel_batch.json", 404),
    ],
)
def test_batch_api_events(stack, event, status):
    reply = stack.runtime.invoke("ApiFunction", load(event))
    assert reply["statusCode"] == status, reply["body"]


def test_the_s3_event_starts_the_batch_of_the_object_it_names_once(stack, batches):
    """The put notifies the ingest, and the sample event names the same object: S3 delivering one event
    twice. Both ingests enqueue the lines; each request still has one result."""
    event = load("batch_ingest_s3_put.json")
    bucket = stack.resources.physical["DataBucket"]
    event["Records"][0]["s3"]["bucket"]["name"] = bucket
    stack.client("s3").put_object(
        Bucket=bucket,
        Key="batches/incoming/nightly run.jsonl",
        Body=jsonl([request_line("a"), request_line("b")]),
        Metadata={"tenant": stack.tenant},  # so that the API shows it to us
    )
    [batch_id] = stack.runtime.invoke("BatchIngestFunction", event)["batches"]
    batch = batches.wait(batch_id)
    assert batch["status"] == "completed" and batch["request_counts"] == {
        "total": 2,
        "completed": 2,
        "failed": 0,
    }
    assert [line["custom_id"] for line in read_lines(batch["output_file_url"])] == ["a", "b"]


def test_worker_and_dead_letter_events_of_an_unknown_batch_are_dropped(stack):
    for function, event in (
        ("BatchWorkerFunction", "batch_worker.json"),
        ("BatchDeadLetterFunction", "batch_dead_letter.json"),
    ):
        assert stack.runtime.invoke(function, load(event)) == {"batchItemFailures": []}


def test_the_finalize_event_of_an_unknown_batch_does_nothing(stack):
    assert stack.runtime.invoke("BatchFinalizeFunction", load("batch_finalize.json")) == {
        "batch_id": "batch_01JXAMPLE00000000000000000",
        "status": None,
    }


def test_a_dead_letter_of_a_running_batch_becomes_its_error_line_with_the_handler_s_own_role(
    stack, batches, sim
):
    """The dead-letter handler only records: it reads neither the xAI key nor the limits, which its role
    does not allow (the session fails on any refused call)."""
    sim.update(chat_latency_median=5.0, chat_latency_sigma=0.01)  # the worker still has it out
    batch = batches.create(jsonl([request_line("late")]))
    batches.wait(batch["id"], statuses={"in_progress"})
    event = load("batch_dead_letter.json")
    message = json.loads(event["Records"][0]["body"])
    message.update(batch_id=batch["id"], custom_id="late", expires_at=int(time.time()) + 86400)
    event["Records"][0]["body"] = json.dumps(message)
    event["Records"][0]["attributes"]["ApproximateReceiveCount"] = "30"

    assert stack.runtime.invoke("BatchDeadLetterFunction", event) == {"batchItemFailures": []}

    ended = batches.wait(batch["id"])
    assert ended["request_counts"] == {"total": 1, "completed": 0, "failed": 1}
    [error] = read_lines(ended["error_file_url"])
    assert error["custom_id"] == "late" and error["error"]["code"] == "delivery_failed"
    assert not [c for c in stack.iam.denied if c.principal == "BatchDeadLetterFunction"]
