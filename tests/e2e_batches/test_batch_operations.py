"""What an operator sees of batches: the metrics of a run, and no batch left stuck when its ingest or its
finalizer crashes (on-failure destination -> sweeper) or when its ingest silently stops (the schedule)."""

import time

from .helpers import jsonl, request_line


def counts(stack, name: str, **dimensions) -> float:
    return stack.metrics.sum(name, **dimensions)


def batch_record(stack, batch_id: str) -> dict:
    table = stack.session.resource("dynamodb", endpoint_url=stack.aws_endpoint).Table(
        stack.resources.physical["BatchesTable"]
    )
    return table.get_item(Key={"id": batch_id}, ConsistentRead=True)["Item"]


def test_a_batch_run_emits_its_metrics(batches, stack, sim):
    names = [
        ("BatchLines", {"Outcome": "ok"}),
        ("BatchLines", {"Outcome": "invalid_json"}),
        ("BatchLines", {"Outcome": "duplicate_custom_id"}),
        ("BatchesFinished", {"Status": "completed"}),
        ("XaiCalls", {"Operation": "chat", "Outcome": "ok"}),
        ("XaiCalls", {"Operation": "chat", "Outcome": "rate_limited"}),
        ("NoticesSent", {"Channel": "sns", "Event": "batch.completed"}),
    ]
    before = {(n, tuple(d.items())): counts(stack, n, **d) for n, d in names}
    sim.inject("/v1/chat/completions", 429, 429)
    lines = [request_line(f"m-{i}") for i in range(12)] + [b"{broken", request_line("m-0")]

    batch, output, errors = batches.run(lines)

    assert batch["status"] == "completed" and len(output) == 12 and len(errors) == 2
    notices = before[("NoticesSent", (("Channel", "sns"), ("Event", "batch.completed")))]
    deadline = time.time() + 15  # the notice goes out just after the batch shows completed
    while counts(stack, "NoticesSent", Channel="sns", Event="batch.completed") == notices:
        assert time.time() < deadline, "no notice"
        time.sleep(0.2)
    delta = {(n, tuple(d.items())): counts(stack, n, **d) - before[(n, tuple(d.items()))] for n, d in names}
    # A request the local stack delivers twice under load may be answered twice (kept once): at least 12.
    assert delta.pop(("XaiCalls", (("Operation", "chat"), ("Outcome", "ok")))) >= 12
    assert delta == {
        ("BatchLines", (("Outcome", "ok"),)): 12,
        ("BatchLines", (("Outcome", "invalid_json"),)): 1,
        ("BatchLines", (("Outcome", "duplicate_custom_id"),)): 1,
        ("BatchesFinished", (("Status", "completed"),)): 1,
        ("XaiCalls", (("Operation", "chat"), ("Outcome", "rate_limited"))): 2,
        ("NoticesSent", (("Channel", "sns"), ("Event", "batch.completed"))): 1,
    }


def test_a_crashed_ingest_is_restarted_and_its_batch_completes(batches, stack):
    restarted = counts(stack, "StalledWork", Kind="batch", Action="restarted")
    # The first invocation and Lambda's two retries crash: the event goes to the on-failure destination.
    stack.runtime.fail_next["BatchIngestFunction"] = ["ingest crashed"] * 3
    lines = [request_line(f"i-{i}") for i in range(5)]

    batch, output, errors = batches.run(lines, timeout=90)

    assert batch["status"] == "completed", batch
    assert sorted(o["custom_id"] for o in output) == [f"i-{i}" for i in range(5)] and errors == []
    assert batch_record(stack, batch["id"])["restarts"] == 1
    assert counts(stack, "StalledWork", Kind="batch", Action="restarted") == restarted + 1


def test_an_ingest_that_keeps_crashing_fails_its_batch_with_the_reason(batches, stack):
    failed = counts(stack, "StalledWork", Kind="batch", Action="failed")
    # Three attempts, a restart (StalledMaxRestarts = 1) and its three attempts: all crash.
    stack.runtime.fail_next["BatchIngestFunction"] = ["ingest crashed"] * 6

    batch = batches.wait(batches.create(jsonl([request_line("never")]))["id"], timeout=90)

    assert batch["status"] == "failed", batch
    error = batch["errors"]["data"][0]
    assert error["code"] == "stalled"
    assert "ingest" in error["message"] and "ingest crashed" in error["message"]
    assert counts(stack, "StalledWork", Kind="batch", Action="failed") == failed + 1


def test_a_crashed_finalizer_is_restarted_and_its_batch_completes(batches, stack):
    restarted = counts(stack, "StalledWork", Kind="batch", Action="restarted")
    stack.runtime.fail_next["BatchFinalizeFunction"] = ["finalizer crashed"] * 3
    lines = [request_line(f"f-{i}") for i in range(5)]

    batch, output, errors = batches.run(lines, timeout=90)

    assert batch["status"] == "completed", batch
    assert len(output) == 5 and errors == []
    assert batch_record(stack, batch["id"])["restarts"] == 1
    assert counts(stack, "StalledWork", Kind="batch", Action="restarted") == restarted + 1


def test_the_schedule_finds_a_batch_whose_ingest_stopped_without_a_trace(batches, stack):
    # A batch left validating long ago (its ingest gone: a timeout, a lost event): its file is in place.
    restarted = counts(stack, "StalledWork", Kind="batch", Action="restarted")
    key = f"files/ops/stalled-{time.time_ns()}.jsonl"
    stack.client("s3").put_object(Bucket=batches.bucket, Key=key, Body=jsonl([request_line("late")]))
    batch_id = f"batch_STALLED{time.time_ns()}"[:32]
    now = int(time.time())
    table = stack.session.resource("dynamodb", endpoint_url=stack.aws_endpoint).Table(
        stack.resources.physical["BatchesTable"]
    )
    table.put_item(
        Item={
            "id": batch_id,
            "tenant": stack.tenant,
            "endpoint": "/v1/chat/completions",
            "input_key": key,
            "input_file_id": None,
            "completion_window": "24h",
            "status": "validating",
            "created_at": now - 600,
            "expires_at": now + 3600,
            "metadata": {},
            "offset": 0,
            "lines": 0,
            "physical_lines": 0,
            "enqueued": 0,
            "ingest_errors": 0,
            "done": 0,
            "failed": 0,
            "ingested": False,
            "updated_at": now - 600,
            "retain_until": now + 3600,
        }
    )

    batch = batches.wait(batch_id, timeout=60)

    assert batch["status"] == "completed", batch
    assert batch["request_counts"] == {"total": 1, "completed": 1, "failed": 0}
    assert counts(stack, "StalledWork", Kind="batch", Action="restarted") == restarted + 1
