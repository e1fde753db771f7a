"""A chat batch from upload to results, through the HTTP API and straight through S3."""

import json
import time

from .helpers import SIGV4, TERMINAL, assert_each_once, jsonl, read_lines, request_line


def test_a_batch_runs_every_request_once_and_writes_results_in_input_order(batches, stack, sim):
    lines = [request_line(f"req-{i}", f"question {i}") for i in range(60)]
    created = batches.create(jsonl(lines), metadata={"team": "search"})
    assert created["status"] == "validating" and created["metadata"] == {"team": "search"}

    batch = batches.wait(created["id"])

    assert batch["status"] == "completed", batch
    assert batch["request_counts"] == {"total": 60, "completed": 60, "failed": 0}
    assert SIGV4 in batch["output_file_url"] and SIGV4 in batch["error_file_url"]
    output = read_lines(batch["output_file_url"])
    assert [line["custom_id"] for line in output] == [f"req-{i}" for i in range(60)]
    assert output[7]["response"]["status_code"] == 200
    assert output[7]["response"]["body"]["choices"][0]["message"]["content"] == "echo: question 7"
    assert read_lines(batch["error_file_url"]) == []
    assert sim.count("/v1/chat/completions", status=200) == 60
    for moment in ("created_at", "in_progress_at", "finalizing_at", "completed_at"):
        assert isinstance(batch[moment], int), moment


def test_the_finished_batch_is_announced_once_on_sns(batches, stack):
    batch = batches.wait(batches.create(jsonl([request_line("only")]))["id"])
    announced = _announcements(stack, batch["id"], expect=1)
    time.sleep(2)  # a second message would come from a second finalizer run
    announced += _announcements(stack, batch["id"], expect=0, timeout=0)
    assert len(announced) == 1
    attributes, body = announced[0]
    assert attributes["event"] == "batch.completed" and attributes["kind"] == "chat.batch"
    assert attributes["tenant"] == stack.tenant
    assert body["batch"]["request_counts"] == {"total": 1, "completed": 1, "failed": 0}


def test_a_file_put_under_batches_incoming_starts_a_batch(batches, stack):
    lines = [request_line(f"s3-{i}") for i in range(5)]
    batches.put_incoming("batches/incoming/nightly run.jsonl", jsonl(lines), tenant="ops-team")

    batch = _batch_of_tenant(stack, "ops-team")
    assert batch["status"] == "completed", batch
    assert batch["request_counts"]["completed"] == 5
    assert batch["metadata"]["source"].endswith("batches/incoming/nightly run.jsonl")


def test_batches_belong_to_their_tenant(batches, stack, api):
    batch = batches.create(jsonl([request_line("mine")]))
    _, key = stack.create_tenant(name="other")
    headers = {"x-api-key": key}
    import httpx

    with httpx.Client(base_url=stack.api_url, headers=headers, timeout=30) as stranger:
        assert stranger.get(f"/v1/batches/{batch['id']}").status_code == 404
        assert stranger.post(f"/v1/batches/{batch['id']}/cancel").status_code == 404
        assert batch["id"] not in [b["id"] for b in stranger.get("/v1/batches").json()["data"]]
    listed = api.get("/v1/batches", params={"limit": 100}).json()
    assert batch["id"] in [b["id"] for b in listed["data"]]


def test_an_idempotency_key_returns_the_first_batch(batches, api):
    file_id = batches.upload(jsonl([request_line("once")]))
    headers = {"Idempotency-Key": f"nightly-{time.time_ns()}"}
    first = api.post("/v1/batches", json={"input_file_id": file_id}, headers=headers)
    again = api.post("/v1/batches", json={"input_file_id": file_id}, headers=headers)
    assert first.status_code == again.status_code == 200
    assert first.json()["id"] == again.json()["id"]
    other_file = batches.upload(jsonl([request_line("twice")]))
    reused = api.post("/v1/batches", json={"input_file_id": other_file}, headers=headers)
    assert reused.status_code == 422


def test_bad_batch_requests_are_refused_naming_the_field(api):
    missing = api.post("/v1/batches", json={"input_file_id": "file_01J00000000000000000000000"})
    assert missing.status_code == 400 and "input_file_id" in missing.json()["error"]["message"]
    wrong = api.post("/v1/batches", json={"input_file_id": "nope"})
    assert wrong.status_code == 400 and "input_file_id" in wrong.json()["error"]["message"]
    endpoint = api.post(
        "/v1/batches", json={"input_file_id": "file_01J00000000000000000000000", "endpoint": "/v1/x"}
    )
    assert endpoint.status_code == 400 and "endpoint" in endpoint.json()["error"]["message"]
    assert api.get("/v1/batches/batch_NOPE").status_code == 404


def test_cancel_stops_the_remaining_requests_and_keeps_what_is_done(batches, api, sim):
    sim.update(chat_latency_median=0.5, chat_latency_sigma=0.01)
    lines = [request_line(f"c-{i}") for i in range(200)]
    created = batches.create(jsonl(lines))
    batches.wait(created["id"], statuses={"in_progress"})
    time.sleep(1.5)
    cancelling = api.post(f"/v1/batches/{created['id']}/cancel")
    assert cancelling.status_code == 200 and cancelling.json()["status"] in ("cancelling", "cancelled")

    batch = batches.wait(created["id"])
    assert batch["status"] == "cancelled", batch
    output, errors = read_lines(batch["output_file_url"]), read_lines(batch["error_file_url"])
    assert 0 < len(output) < 200
    assert sim.count("/v1/chat/completions") < 200
    assert {e["error"]["code"] for e in errors} <= {"batch_cancelled"}
    assert batch["request_counts"]["total"] == len(output) + len(errors)
    assert api.post(f"/v1/batches/{created['id']}/cancel").status_code == 409


def test_a_batch_past_its_completion_window_ends_expired_with_partial_results(batches, sim):
    # 400 requests of 1 s each, 40 at a time: about 10 s of work in a 4-second window.
    sim.update(chat_latency_median=1.0, chat_latency_sigma=0.01)
    lines = [request_line(f"e-{i}") for i in range(400)]
    batch, output, errors = batches.run(lines, completion_window="4s", timeout=90)
    assert batch["status"] == "expired", batch
    assert output and errors
    assert {e["error"]["code"] for e in errors} == {"batch_expired"}
    assert_each_once([line["custom_id"] for line in lines], output, errors)


def _announcements(stack, batch_id: str, expect: int, timeout: float = 15) -> list[tuple[dict, dict]]:
    sqs = stack.client("sqs")
    found: list[tuple[dict, dict]] = []
    deadline = time.time() + timeout
    while True:
        reply = sqs.receive_message(
            QueueUrl=stack.inbox_url, MaxNumberOfMessages=10, MessageAttributeNames=["All"]
        )
        for message in reply.get("Messages", []):
            body = json.loads(message["Body"])
            if body.get("batch", {}).get("id") == batch_id:
                attributes = {k: v["StringValue"] for k, v in message["MessageAttributes"].items()}
                found.append((attributes, body))
            # Earlier tests' notices are of no further use; left in the queue they would crowd ours out.
            sqs.delete_message(QueueUrl=stack.inbox_url, ReceiptHandle=message["ReceiptHandle"])
        if len(found) >= expect or time.time() > deadline:
            return found
        time.sleep(0.3)


def _batch_of_tenant(stack, tenant: str, timeout: float = 60) -> dict:
    """A batch started straight through S3 has no API caller: read it from the table."""
    table = stack.session.resource("dynamodb", endpoint_url=stack.aws_endpoint).Table(
        stack.resources.physical["BatchesTable"]
    )
    deadline = time.time() + timeout
    while True:
        items = [i for i in table.scan()["Items"] if i["tenant"] == tenant]
        if items and items[0]["status"] in TERMINAL:
            item = items[0]
            return {**item, "request_counts": {k: int(v) for k, v in item["request_counts"].items()}}
        if time.time() > deadline:
            raise AssertionError(f"no finished batch of {tenant}: {items}")
        time.sleep(0.3)
