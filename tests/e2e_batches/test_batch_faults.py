"""Bad input and faults: in every case output lines + error lines = input lines, each custom_id once."""

import json
import time

from .helpers import assert_each_once, jsonl, read_lines, request_line


def test_an_empty_file_fails_the_batch(batches):
    batch, output, errors = batches.run([])
    assert batch["status"] == "failed"
    assert batch["errors"]["data"][0]["code"] == "empty_file"
    assert output == errors == []


def test_a_file_that_is_not_jsonl_yields_an_error_line_per_line(batches, sim):
    content = b"id,prompt\n1,hello\n2,world\n"
    batch = batches.wait(batches.create(content)["id"])
    assert batch["status"] == "failed"
    assert batch["request_counts"] == {"total": 3, "completed": 0, "failed": 3}
    assert sim.count("/v1/chat/completions") == 0


def test_bad_lines_and_duplicate_custom_ids_become_error_lines(batches, sim):
    lines = [
        request_line("good-1"),
        b"{not json",
        {"custom_id": "no-body", "method": "POST", "url": "/v1/chat/completions"},
        {**request_line("wrong-url"), "url": "/v1/embeddings"},
        request_line("good-1", "again"),
        request_line(
            "many", n=2, messages=[{"role": "user", "content": [{"type": "file", "file": {"file_id": "f"}}]}]
        ),
        request_line("good-2"),
    ]
    batch, output, errors = batches.run(lines)
    assert batch["status"] == "completed"
    assert [o["custom_id"] for o in output] == ["good-1", "good-2"]
    codes = {e["custom_id"]: e["error"]["code"] for e in errors}
    assert codes == {
        None: "invalid_json",
        "no-body": "invalid_request",
        "wrong-url": "invalid_request",
        "good-1": "duplicate_custom_id",
        "many": "invalid_request",
    }
    assert all(e["error"]["line"] for e in errors)
    assert sim.count("/v1/chat/completions") == 2


def test_two_thousand_lines_with_one_percent_bad(batches, sim):
    # Four ingest checkpoints and hundreds of SQS batches; larger files run in `make bench`.
    lines = []
    for i in range(2_000):
        lines.append(b'{"custom_id": "broken-%d", ' % i if i % 100 == 7 else request_line(f"r-{i}", f"q{i}"))
    batch, output, errors = batches.run(lines, timeout=300)
    assert batch["status"] == "completed", batch
    assert len(output) == 1_980 and len(errors) == 20
    assert [o["custom_id"] for o in output] == [f"r-{i}" for i in range(2_000) if i % 100 != 7]
    # Every good line reached xAI once: a copy delivered while the first still ran finds its lease.
    assert sim.count("/v1/chat/completions", status=200) == 1_980


def test_a_one_megabyte_body_travels_by_reference(batches, sim):
    big = "x" * (1 << 20)
    batch, output, errors = batches.run([request_line("big", big), request_line("small")])
    assert batch["status"] == "completed", (batch, errors)
    assert [o["custom_id"] for o in output] == ["big", "small"]
    assert output[0]["response"]["body"]["choices"][0]["message"]["content"].startswith("echo: xxx")


def test_an_unknown_model_is_an_error_line_and_not_retried(batches, sim):
    batch, output, errors = batches.run(
        [request_line("bad-model", model="gpt-nonexistent"), request_line("fine")]
    )
    assert [o["custom_id"] for o in output] == ["fine"]
    assert errors[0]["custom_id"] == "bad-model"
    assert errors[0]["response"]["status_code"] in (400, 404)
    assert sim.count("/v1/chat/completions", status=errors[0]["response"]["status_code"]) == 1


def test_a_worker_crash_mid_batch_loses_and_repeats_nothing(batches, stack, sim):
    stack.runtime.fail_next["BatchWorkerFunction"] = ["worker crashed"] * 3
    lines = [request_line(f"crash-{i}") for i in range(80)]
    batch, output, errors = batches.run(lines, timeout=180)
    assert batch["status"] == "completed", batch
    assert_each_once([line["custom_id"] for line in lines], output, errors)
    assert errors == []
    assert sim.count("/v1/chat/completions", status=200) == 80


def test_a_message_delivered_twice_runs_once(batches, stack, sim):
    sim.update(chat_latency_median=0.3, chat_latency_sigma=0.01)
    lines = [request_line(f"dup-{i}") for i in range(40)]
    created = batches.create(jsonl(lines))
    batches.wait(created["id"], statuses={"in_progress", "finalizing", "completed"})
    # The same message SQS would deliver again: line 1 of this batch.
    sqs = stack.client("sqs")
    queue = stack.resources.physical["WorkQueue"]
    duplicate = {
        "batch_id": created["id"],
        "line": 1,
        "custom_id": "dup-0",
        "tokens": 10,
        "expires_at": created["expires_at"],
        "body": lines[0]["body"],
    }
    for _ in range(3):
        sqs.send_message(QueueUrl=queue, MessageBody=json.dumps(duplicate))
    batch = batches.wait(created["id"])
    output = [o for o in batches_output(batch)]
    assert [o["custom_id"] for o in output] == [f"dup-{i}" for i in range(40)]
    prompts = [
        c.body["messages"][0]["content"] for c in sim.calls if c.path == "/v1/chat/completions" and c.body
    ]
    assert len(prompts) == 40


def test_429_storms_500s_and_hangs_still_end_with_every_request_once(batches, sim):
    sim.update(error_500_rate=0.05, error_503_rate=0.03, hang_rate=0.01, hang_seconds=20)
    sim.inject("/v1/chat/completions", *[429] * 25)
    lines = [request_line(f"storm-{i}") for i in range(150)]
    batch, output, errors = batches.run(lines, timeout=300)
    assert batch["status"] == "completed", batch
    assert_each_once([line["custom_id"] for line in lines], output, errors)
    assert sim.count("/v1/chat/completions", status=429) == 25
    assert sim.count("/v1/chat/completions", status=500) + sim.count("/v1/chat/completions", status=503) > 0
    assert len(output) >= 140
    assert {e["error"]["code"] for e in errors} <= {"upstream_unavailable"}


def batches_output(batch: dict) -> list[dict]:
    from .helpers import read_lines

    return read_lines(batch["output_file_url"])


def test_an_ingest_out_of_time_hands_the_rest_to_a_new_invocation_of_itself(batches, stack):
    # A timeout under the ingest's 30-second margin: it hands over at its first checkpoint (500
    # lines), invoking itself as its role allows (the session's IAM check fails on a refusal).
    ingest = stack.runtime.functions["BatchIngestFunction"]
    timeout, ingest.timeout = ingest.timeout, 29
    invocations = stack.runtime.stats["BatchIngestFunction"].count
    try:
        lines = [request_line(f"t-{i}") for i in range(600)]
        batch, output, errors = batches.run(lines, timeout=120)
    finally:
        ingest.timeout = timeout
    assert batch["status"] == "completed", batch
    assert stack.runtime.stats["BatchIngestFunction"].count - invocations == 2
    assert_each_once([line["custom_id"] for line in lines], output, errors)
    assert errors == []


def test_a_batch_cancelled_during_its_ingest_loses_no_line(batches, api, sim):
    sim.update(chat_latency_median=0.2, chat_latency_sigma=0.01)
    lines = [request_line(f"x-{i}", f"q{i}") for i in range(3_000)]
    created = batches.create(jsonl(lines))
    time.sleep(0.3)
    assert api.post(f"/v1/batches/{created['id']}/cancel").status_code == 200

    batch = batches.wait(created["id"], timeout=400)

    assert batch["status"] == "cancelled", batch
    output, errors = read_lines(batch["output_file_url"]), read_lines(batch["error_file_url"])
    assert_each_once([line["custom_id"] for line in lines], output, errors)
    assert {e["error"]["code"] for e in errors} == {"batch_cancelled"}
    assert len(errors) > 2_000, "the lines not yet run when the cancel came are error lines"
    assert batch["request_counts"] == {"total": 3_000, "completed": len(output), "failed": len(errors)}
    assert sim.count("/v1/chat/completions") == len(output)


def test_an_s3_event_delivered_twice_pays_each_line_once(batches, stack, sim):
    sim.update(chat_latency_median=0.2, chat_latency_sigma=0.01)
    lines = [request_line(f"twice-{i}", f"q{i}") for i in range(200)]
    created = batches.create(jsonl(lines))
    # S3 delivers the upload's event again while the first ingest runs (at-least-once delivery)
    key = f"batches/incoming/{created['id']}.jsonl"
    event = {"Records": [{"s3": {"bucket": {"name": batches.bucket}, "object": {"key": key}}}]}
    for _ in range(2):
        stack.runtime.invoke_async("BatchIngestFunction", event)

    batch = batches.wait(created["id"], timeout=300)

    assert batch["status"] == "completed", batch
    output = read_lines(batch["output_file_url"])
    assert [o["custom_id"] for o in output] == [line["custom_id"] for line in lines]
    assert sim.count("/v1/chat/completions") == 200, "xAI calls == lines"


def test_malformed_messages_on_the_queues_block_nothing(batches, stack, sim):
    sqs = stack.client("sqs")
    for queue in ("WorkQueue", "WorkDeadLetterQueue"):
        url = stack.resources.physical[queue]
        for body in ("not json", "[" * 50_000, '{"batch_id": 1}'):
            sqs.send_message(QueueUrl=url, MessageBody=body)
    lines = [request_line(f"m-{i}") for i in range(30)]

    batch, output, errors = batches.run(lines, timeout=180)

    assert batch["status"] == "completed", batch
    assert_each_once([line["custom_id"] for line in lines], output, errors)
    assert errors == []
    for queue in ("WorkQueue", "WorkDeadLetterQueue"):
        attributes = sqs.get_queue_attributes(
            QueueUrl=stack.resources.physical[queue], AttributeNames=["ApproximateNumberOfMessages"]
        )
        assert attributes["Attributes"]["ApproximateNumberOfMessages"] == "0", f"{queue}: set aside"


def test_hostile_bodies_are_4xx_naming_the_problem_on_every_post_route(api):
    nested = "[" * 100_000 + "]" * 100_000
    for path in ("/v1/videos/generations", "/v1/videos/edits", "/v1/chat/completions", "/v1/batches"):
        reply = api.post(path, content=nested, headers={"Content-Type": "application/json"})
        assert reply.status_code == 400, (path, reply.status_code, reply.text[:300])
        assert "nested 100000 levels deep" in reply.text, path
    for path in ("/v1/jobs/job_NOPE/cancel", "/v1/batches/batch_NOPE/cancel"):
        reply = api.post(path, content=nested, headers={"Content-Type": "application/json"})
        assert 400 <= reply.status_code < 500, (path, reply.status_code)
    window = api.post(
        "/v1/batches",
        json={"input_file_id": "file_01J00000000000000000000000", "completion_window": "9" * 5_000 + "h"},
    )
    assert window.status_code == 400 and "completion_window" in window.text
    metadata = api.post(
        "/v1/batches",
        json={"input_file_id": "file_01J00000000000000000000000", "metadata": {"k": "v" * 513}},
    )
    assert metadata.status_code == 400 and "metadata.k" in metadata.text
