"""Bad input and faults: in every case output lines + error lines = input lines, each custom_id once."""

import json

from .helpers import assert_each_once, jsonl, request_line


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


def test_ten_thousand_lines_with_one_percent_bad(batches, sim):
    lines = []
    for i in range(10_000):
        lines.append(b'{"custom_id": "broken-%d", ' % i if i % 100 == 7 else request_line(f"r-{i}", f"q{i}"))
    batch, output, errors = batches.run(lines, timeout=400)
    assert batch["status"] == "completed", batch
    assert len(output) == 9_900 and len(errors) == 100
    assert [o["custom_id"] for o in output] == [f"r-{i}" for i in range(10_000) if i % 100 != 7]
    # Every good line reached xAI; a line delivered twice by the local stack under this load (its
    # ingest or work message redelivered while the first copy still ran) may be answered twice, but
    # its result is kept once (above). Bounded, not eliminated: see the closing notes of issue 4.
    answered = sim.count("/v1/chat/completions", status=200)
    assert 9_900 <= answered <= 9_900 + 10


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
