"""Fan-in (xjobs.batch_finalize): output.jsonl in input order, errors.jsonl, the final status and one
SNS notice, on moto's server (the requests run by the worker against the xAI simulator)."""

import json
import uuid

import boto3
import pytest

from tests.unit.conftest import LambdaContext, deliveries
from tests.unit.test_batch_worker import request, sqs_event
from xjobs import batch_finalize, batch_ingest, batch_worker, batches, notify
from xjobs.batch_lines import error_line, result_line
from xjobs.files import batch_file_id


@pytest.fixture
def store(batch_settings) -> batches.BatchStore:
    return batches.BatchStore(batch_settings.batches_table, batch_settings.batch_items_table)


@pytest.fixture
def ingested(batch_settings, data_bucket, work_queue):
    """Ingest lines (dicts, or raw strings for bad lines) as a batch; returns (batch id, deliveries)."""

    def ingest(*lines) -> tuple[str, list[dict]]:
        key = f"{batch_ingest.INCOMING_PREFIX}{uuid.uuid4().hex}.jsonl"
        content = "".join((json.dumps(x) if isinstance(x, dict) else x) + "\n" for x in lines).encode()
        boto3.client("s3").put_object(Bucket=data_bucket, Key=key, Body=content)
        batch_id = batch_ingest.open_batch(data_bucket, key)
        batch_ingest.ingest(batch_id, LambdaContext())
        return batch_id, deliveries(work_queue)

    return ingest


@pytest.fixture
def read_file(data_bucket):
    def read(key: str) -> list[dict]:
        body = boto3.client("s3").get_object(Bucket=data_bucket, Key=key)["Body"].read().decode()
        assert body == "" or body.endswith("\n")
        return [json.loads(line) for line in body.splitlines()]

    return read


def notices_of(notifications, batch_id: str) -> list[dict]:
    """The notices about this batch (the message is {"batch": the batch as GET /v1/batches/{id} shows it})."""
    return [n for n in notifications.read() if n["message"]["batch"]["id"] == batch_id]


def test_a_finished_batch_writes_its_files_in_input_order_and_announces_itself_once(
    sim, store, ingested, read_file, notifications
):
    lines = [request(f"req-{n}", f"text {n}") for n in range(1, 13)]
    lines[1] = "not json"  # line 2
    lines[4] = {**request("req-5"), "method": "GET"}  # line 5
    lines[8] = request("req-9", model="gpt-4o")  # line 9: xAI answers 404
    batch_id, messages = ingested(*lines)
    # The workers finish the requests in reverse order, one message at a time
    for message in sorted(messages, key=lambda m: -json.loads(m["Body"])["line"]):
        assert batch_worker.handle(sqs_event([message]), LambdaContext()) == {"batchItemFailures": []}
    assert store.get(batch_id)["status"] == batches.FINALIZING
    notifications.read()

    batch = batch_finalize.finalize(batch_id)

    assert batch["status"] == batches.COMPLETED
    output = read_file(batch["output_key"])
    good = [n for n in range(1, 13) if n not in (2, 5, 9)]
    assert [line["custom_id"] for line in output] == [f"req-{n}" for n in good]
    assert [line["response"]["body"]["choices"][0]["message"]["content"] for line in output] == [
        f"echo: text {n}" for n in good
    ]
    assert all(line["response"]["status_code"] == 200 and line["error"] is None for line in output)
    errors = read_file(batch["errors_key"])
    assert [line["custom_id"] for line in errors] == [None, "req-5", "req-9"]
    assert errors[0]["error"]["code"] == "invalid_json"
    assert errors[1]["error"]["code"] == "invalid_request"
    assert errors[2]["response"]["status_code"] == 404
    assert batch["request_counts"] == {"total": 12, "completed": 9, "failed": 3}
    assert batch["output_key"] == batches.output_key(batch_id)
    assert batch["errors_key"] == batches.errors_key(batch_id)
    assert batch.get("completed_at")
    (notice,) = notices_of(notifications, batch_id)
    assert notice["attributes"] == {
        "event": "batch.completed",
        "event_id": f"evt_{batch_id}",
        "kind": "chat.batch",
        "status": "completed",
        "tenant": batch_ingest.DIRECT_UPLOAD_TENANT,
    }
    assert notice["message"]["batch"]["status"] == "completed"
    assert notice["message"]["id"] == f"evt_{batch_id}"  # receivers drop a repeat by it
    assert notice["message"]["batch"]["request_counts"] == {"total": 12, "completed": 9, "failed": 3}
    # The Files API's ids of the batch's files (GET /v1/files/{id}/content reads them).
    assert notice["message"]["batch"]["output_file_id"] == batch_file_id(batch_id, "output")
    assert notice["message"]["batch"]["error_file_id"] == batch_file_id(batch_id, "errors")


def test_a_finalizer_that_runs_twice_announces_once_and_changes_nothing(
    sim, store, ingested, read_file, notifications
):
    batch_id, messages = ingested(request("a"), request("b"))
    batch_worker.handle(sqs_event(messages), LambdaContext())
    notifications.read()

    first = batch_finalize.finalize(batch_id)
    output = read_file(first["output_key"])
    second = batch_finalize.finalize(batch_id)

    assert second["status"] == first["status"] == batches.COMPLETED
    assert second["completed_at"] == first["completed_at"]
    assert read_file(second["output_key"]) == output
    assert len(notices_of(notifications, batch_id)) == 1


def test_concurrent_finalizers_announce_once(sim, store, ingested, notifications):
    import threading

    batch_id, messages = ingested(request("a"))
    batch_worker.handle(sqs_event(messages), LambdaContext())
    notifications.read()
    go = threading.Barrier(4)
    statuses = []

    def run() -> None:
        go.wait()
        try:
            statuses.append(batch_finalize.finalize(batch_id)["status"])
        except notify.NoticeLeased:  # another finalizer is announcing: Lambda retries this one later
            statuses.append("leased")

    threads = [threading.Thread(target=run) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=20)

    assert len(statuses) == 4 and set(statuses) <= {batches.COMPLETED, "leased"}
    assert batches.COMPLETED in statuses
    assert batch_finalize.finalize(batch_id)["status"] == batches.COMPLETED  # a retry, after the winner
    assert len(notices_of(notifications, batch_id)) == 1


def test_an_empty_file_ends_failed_with_empty_files(store, ingested, read_file, notifications):
    batch_id, _ = ingested()
    notifications.read()

    batch = batch_finalize.finalize(batch_id)

    assert batch["status"] == batches.FAILED
    assert batch["errors"]["data"][0]["code"] == "empty_file"
    assert batch["request_counts"] == {"total": 0, "completed": 0, "failed": 0}
    assert read_file(batch["output_key"]) == []
    assert read_file(batch["errors_key"]) == []
    (notice,) = notices_of(notifications, batch_id)
    assert notice["attributes"]["status"] == "failed"
    assert notice["attributes"]["event"] == "batch.failed"


def test_a_file_without_a_valid_line_ends_failed_with_its_error_lines(store, ingested, read_file):
    batch_id, _ = ingested("{", {**request("a"), "url": "/v1/embeddings"})

    batch = batch_finalize.finalize(batch_id)

    assert batch["status"] == batches.FAILED
    assert batch["errors"]["data"][0]["code"] == "no_valid_lines"
    assert [line["error"]["code"] for line in read_file(batch["errors_key"])] == [
        "invalid_json",
        "invalid_request",
    ]
    assert batch["request_counts"] == {"total": 2, "completed": 0, "failed": 2}


def test_a_cancelled_batch_ends_cancelled_with_what_was_done(sim, store, ingested, read_file, notifications):
    batch_id, messages = ingested(request("a"), request("b"), request("c"))
    ordered = sorted(messages, key=lambda m: json.loads(m["Body"])["line"])
    batch_worker.handle(sqs_event(ordered[:1]), LambdaContext())
    store.cancel(batch_id, batch_ingest.DIRECT_UPLOAD_TENANT)
    batch_worker.handle(sqs_event(ordered[1:]), LambdaContext())
    assert store.get(batch_id)["status"] == batches.FINALIZING
    notifications.read()

    batch = batch_finalize.finalize(batch_id)

    assert batch["status"] == batches.CANCELLED
    assert [line["custom_id"] for line in read_file(batch["output_key"])] == ["a"]
    errors = read_file(batch["errors_key"])
    assert [(line["custom_id"], line["error"]["code"]) for line in errors] == [
        ("b", "batch_cancelled"),
        ("c", "batch_cancelled"),
    ]
    assert batch["request_counts"] == {"total": 3, "completed": 1, "failed": 2}
    assert len(sim.calls) == 1
    (notice,) = notices_of(notifications, batch_id)
    assert notice["attributes"]["status"] == "cancelled"


def test_a_batch_past_its_window_ends_expired_with_partial_results(sim, store, ingested, read_file):
    batch_id, messages = ingested(request("a"), request("b"))
    ordered = sorted(messages, key=lambda m: json.loads(m["Body"])["line"])
    batch_worker.handle(sqs_event(ordered[:1]), LambdaContext())
    store.table.update_item(
        Key={"id": batch_id},
        UpdateExpression="SET expires_at = :past",
        ExpressionAttributeValues={":past": 1},
    )
    batch_worker.handle(sqs_event(ordered[1:]), LambdaContext())

    batch = batch_finalize.finalize(batch_id)

    assert batch["status"] == batches.EXPIRED
    assert [line["custom_id"] for line in read_file(batch["output_key"])] == ["a"]
    assert [line["error"]["code"] for line in read_file(batch["errors_key"])] == ["batch_expired"]
    assert batch["request_counts"] == {"total": 2, "completed": 1, "failed": 1}


def test_a_batch_still_running_is_not_finalized(sim, store, ingested, notifications, data_bucket):
    batch_id, _ = ingested(request("a"))
    notifications.read()

    batch = batch_finalize.finalize(batch_id)

    assert batch["status"] == batches.IN_PROGRESS
    assert notices_of(notifications, batch_id) == []
    listed = boto3.client("s3").list_objects_v2(Bucket=data_bucket, Prefix=f"batches/{batch_id}/")
    assert listed.get("KeyCount", 0) == 0


def test_an_unknown_batch_finalizes_to_none(batch_settings):
    assert batch_finalize.finalize("batch_UNKNOWN") is None


def test_an_output_larger_than_a_part_is_uploaded_in_parts_in_order(
    batch_settings, store, read_file, data_bucket
):
    # Results over MAX_INLINE_RESULT_BYTES live in S3 (the item points there), as the worker stores them.
    batch = batches.new_batch(
        f"batch_{uuid.uuid4().hex.upper()[:26]}",
        tenant="t",
        input_key="batches/incoming/large.jsonl",
        input_file_id=None,
        window_seconds=3600,
        metadata={},
    )
    batch_id = batch["id"]
    store.create({**batch, "status": batches.FINALIZING, "ingested": True, "enqueued": 12, "lines": 12})
    s3 = boto3.client("s3")
    expected, stored = [], []
    for line in range(1, 13):
        if line % 4 == 0:
            outcome = error_line(f"batch_req_{line}", f"r{line}", "upstream_unavailable", "500", None)
            ok = False
        else:
            text = str(line) * (1 << 20)  # a result of 1 MiB
            outcome = result_line(f"batch_req_{line}", f"r{line}", 200, {"text": text}, None)
            ok = True
            key = batches.result_key(batch_id, line)
            s3.put_object(Bucket=data_bucket, Key=key, Body=outcome.encode())
            outcome_stored = json.dumps({"s3_key": key})
        expected.append((ok, outcome))
        stored.append(
            {
                "batch_id": batch_id,
                "line": line,
                "custom_id": f"r{line}",
                "ok": ok,
                "outcome": outcome_stored if ok else outcome,
                "expires_at": 0,
            }
        )
    assert store.record(stored) == set()

    finished = batch_finalize.finalize(batch_id)

    assert finished["status"] == batches.COMPLETED
    head = s3.head_object(Bucket=data_bucket, Key=finished["output_key"])
    assert head["ContentLength"] > batch_finalize.PART_BYTES
    assert head["ETag"].strip('"').endswith("-2"), "two parts: one full part and the rest"
    body = s3.get_object(Bucket=data_bucket, Key=finished["output_key"])["Body"].read().decode()
    assert body == "".join(outcome + "\n" for ok, outcome in expected if ok)
    assert [line["custom_id"] for line in read_file(finished["errors_key"])] == ["r4", "r8", "r12"]
    assert finished["request_counts"] == {"total": 12, "completed": 9, "failed": 3}
    uploads = s3.list_multipart_uploads(Bucket=data_bucket).get("Uploads", [])
    assert [u for u in uploads if u["Key"].startswith(f"batches/{batch_id}/")] == [], "no upload left open"


def test_the_view_counts_a_running_batch_and_links_the_files_of_an_ended_one(sim, store, ingested):
    import httpx

    from xjobs.views import batch_view

    batch_id, messages = ingested(request("a"), "bad line", request("b", model="gpt-4o"), request("c"))
    ordered = sorted(messages, key=lambda m: json.loads(m["Body"])["line"])
    batch_worker.handle(sqs_event(ordered[:2]), LambdaContext())

    running = batch_view(store.get(batch_id))

    assert running["status"] == batches.IN_PROGRESS
    assert running["request_counts"] == {"total": 4, "completed": 1, "failed": 2}
    assert running["output_file_id"] is None and "output_file_url" not in running

    batch_worker.handle(sqs_event(ordered[2:]), LambdaContext())
    ended = batch_view(batch_finalize.finalize(batch_id))

    assert ended["status"] == batches.COMPLETED
    assert ended["request_counts"] == {"total": 4, "completed": 2, "failed": 2}
    output = httpx.get(ended["output_file_url"]).text.splitlines()
    errors = httpx.get(ended["error_file_url"]).text.splitlines()
    assert [json.loads(line)["custom_id"] for line in output] == ["a", "c"]
    assert [json.loads(line)["custom_id"] for line in errors] == [None, "b"]
