"""The SQS event source mapping as Lambda runs it: WorkQueue -> WorkerFunction with BatchSize 10, a 1 s
batching window, MaximumConcurrency 2 and ReportBatchItemFailures; a 2 s visibility timeout and, after 3
receives, the dead-letter queue, itself mapped to DeadLetterFunction."""

import base64
import hashlib
import json
import time
import uuid
from collections import defaultdict

import pytest

from local.event_sources import EventSources

from .conftest import invocations, max_overlap, wait_until

VISIBILITY_TIMEOUT = 2


@pytest.fixture(autouse=True)
def quiet(stack):
    """Each test starts with both queues empty and no batch in flight, so what it sees is its own."""

    def settled() -> bool:
        sqs = stack.client("sqs")
        for queue in ("WorkQueue", "DeadLetterQueue"):
            attributes = sqs.get_queue_attributes(
                QueueUrl=stack.resources.physical[queue], AttributeNames=["All"]
            )["Attributes"]
            if int(attributes["ApproximateNumberOfMessages"]) + int(
                attributes["ApproximateNumberOfMessagesNotVisible"]
            ):
                return False
        return not any(stack.runtime.stats[f].running for f in ("WorkerFunction", "DeadLetterFunction"))

    wait_until(settled, what="the queues to be empty")


def send(stack, bodies: list[dict], queue: str = "WorkQueue") -> list[str]:
    """Sends the bodies in batches of 10; returns the message ids."""
    sqs, ids = stack.client("sqs"), []
    for start in range(0, len(bodies), 10):
        reply = sqs.send_message_batch(
            QueueUrl=stack.resources.physical[queue],
            Entries=[
                {"Id": str(i), "MessageBody": json.dumps(body)}
                for i, body in enumerate(bodies[start : start + 10])
            ],
        )
        assert not reply.get("Failed")
        ids += [entry["MessageId"] for entry in sorted(reply["Successful"], key=lambda e: int(e["Id"]))]
    return ids


def deliveries(stack, tag: str, function: str = "WorkerFunction") -> list[tuple[object, dict]]:
    """(invocation, record) for each record of the test's messages that the function received."""
    return [
        (invocation, record)
        for invocation in invocations(stack, function)
        for record in invocation.event["Records"]
        if json.loads(record["body"]).get("test") == tag
    ]


def by_message(found: list[tuple[object, dict]]) -> dict[str, list[dict]]:
    grouped = defaultdict(list)
    for _, record in found:
        grouped[record["messageId"]].append(record)
    return grouped


def test_waiting_messages_are_batched_up_to_the_batch_size(stack):
    tag = uuid.uuid4().hex
    ids = send(stack, [{"test": tag, "sleep": 0.2} for _ in range(25)])

    found = wait_until(
        lambda: (d := deliveries(stack, tag)) and {r["messageId"] for _, r in d} == set(ids) and d,
        what="every message to be delivered",
    )

    sizes = defaultdict(int)
    for invocation, _ in found:
        sizes[invocation.request_id] += 1
    assert max(sizes.values()) <= 10
    assert max(sizes.values()) > 1  # the messages were waiting: they came in batches, not one by one
    assert sorted(r["messageId"] for _, r in found) == sorted(ids)  # each once: all were deleted


def test_no_more_batches_run_at_once_than_the_maximum_concurrency(stack):
    tag = uuid.uuid4().hex
    ids = send(stack, [{"test": tag, "sleep": 0.5} for _ in range(60)])

    found = wait_until(
        lambda: (d := deliveries(stack, tag)) and {r["messageId"] for _, r in d} == set(ids) and d,
        what="every message to be delivered",
    )

    batches = {invocation.request_id: (invocation.started, invocation.ended) for invocation, _ in found}
    assert max_overlap(list(batches.values())) == 2
    assert stack.runtime.stats["WorkerFunction"].max_concurrency == 2


def test_each_record_has_the_shape_lambda_delivers(stack):
    tag = uuid.uuid4().hex
    body = json.dumps({"test": tag})
    queue = stack.resources.physical["WorkQueue"]
    sent = stack.client("sqs").send_message(
        QueueUrl=queue,
        MessageBody=body,
        MessageAttributes={
            "kind": {"DataType": "String", "StringValue": "report"},
            "pages": {"DataType": "Number", "StringValue": "12"},
            "blob": {"DataType": "Binary", "BinaryValue": b"\x00\x01\xff"},
        },
    )

    (invocation, record), *_ = wait_until(lambda: deliveries(stack, tag), what="the message")

    queue_arn = stack.resources.attributes["WorkQueue"]["Arn"]
    assert record["messageId"] == sent["MessageId"]
    assert record["body"] == body
    assert record["md5OfBody"] == hashlib.md5(body.encode()).hexdigest()
    assert record["md5OfMessageAttributes"] == sent["MD5OfMessageAttributes"]
    assert record["receiptHandle"]
    assert (record["eventSource"], record["eventSourceARN"], record["awsRegion"]) == (
        "aws:sqs",
        queue_arn,
        "us-east-1",
    )
    attributes = record["attributes"]
    assert attributes["ApproximateReceiveCount"] == "1"
    assert attributes["SentTimestamp"].isdigit() and attributes["ApproximateFirstReceiveTimestamp"].isdigit()
    assert attributes["SenderId"]
    assert record["messageAttributes"] == {
        "kind": {
            "stringValue": "report",
            "stringListValues": [],
            "binaryListValues": [],
            "dataType": "String",
        },
        "pages": {"stringValue": "12", "stringListValues": [], "binaryListValues": [], "dataType": "Number"},
        "blob": {
            "binaryValue": base64.b64encode(b"\x00\x01\xff").decode(),
            "stringListValues": [],
            "binaryListValues": [],
            "dataType": "Binary",
        },
    }
    assert invocation.event.keys() == {"Records"}


def test_a_partial_batch_response_brings_back_only_the_failed_messages(stack):
    tag = uuid.uuid4().hex
    ids = send(stack, [{"test": tag, "fail": "first" if i in (1, 4) else None} for i in range(6)])
    failing = {ids[1], ids[4]}

    found = wait_until(
        lambda: (d := deliveries(stack, tag)) and len(d) == 8 and d, what="the failed messages to come back"
    )
    wait_until(lambda: stack.runtime.stats["WorkerFunction"].running == 0, what="the last batch to end")

    received = by_message(deliveries(stack, tag))
    assert {m for m, records in received.items() if len(records) == 2} == failing
    assert all(len(received[m]) == 1 for m in set(ids) - failing)  # the others were deleted
    for message_id in failing:
        assert [r["attributes"]["ApproximateReceiveCount"] for r in received[message_id]] == ["1", "2"]
    for message_id in failing:
        first, second = [invocation for invocation, r in found if r["messageId"] == message_id]
        assert second.started - first.ended > VISIBILITY_TIMEOUT - 1  # back after its visibility timeout


def test_an_invalid_partial_batch_response_fails_the_whole_batch(stack):
    tag = uuid.uuid4().hex
    ids = send(stack, [{"test": tag, "bogus": i == 0} for i in range(3)])

    wait_until(lambda: len(deliveries(stack, tag)) == 6, what="the batch to come back")

    received = by_message(deliveries(stack, tag))
    assert set(received) == set(ids)
    for records in received.values():
        assert [r["attributes"]["ApproximateReceiveCount"] for r in records] == ["1", "2"]


def test_a_function_crash_brings_back_the_whole_batch(stack):
    tag = uuid.uuid4().hex
    errors = stack.runtime.stats["WorkerFunction"].errors
    stack.runtime.fail_next["WorkerFunction"] = ["injected crash"]
    ids = send(stack, [{"test": tag} for _ in range(10)])

    found = wait_until(
        lambda: (d := deliveries(stack, tag)) and len(d) == 10 and d, what="the batch to come back"
    )

    assert sorted(r["messageId"] for _, r in found) == sorted(ids)
    assert {r["attributes"]["ApproximateReceiveCount"] for _, r in found} == {"2"}
    assert stack.runtime.stats["WorkerFunction"].errors == errors + 1


def test_a_message_failing_every_time_moves_to_the_dead_letter_queue_after_three_receives(stack):
    tag = uuid.uuid4().hex
    (message_id,) = send(stack, [{"test": tag, "fail": "always"}])

    (invocation, dead), *_ = wait_until(
        lambda: deliveries(stack, tag, "DeadLetterFunction"), timeout=30, what="the dead letter"
    )

    tries = [r for _, r in deliveries(stack, tag)]
    assert [r["attributes"]["ApproximateReceiveCount"] for r in tries] == ["1", "2", "3"]
    assert dead["messageId"] == message_id
    assert dead["eventSourceARN"] == stack.resources.attributes["DeadLetterQueue"]["Arn"]
    assert invocation.function == "DeadLetterFunction"


def test_a_batch_holds_at_most_six_megabytes(stack):
    tag = uuid.uuid4().hex
    sqs, queue = stack.client("sqs"), stack.resources.physical["WorkQueue"]
    body = json.dumps({"test": tag, "padding": "x" * 900_000})  # one to a SendMessage: 1 MiB at most
    ids = [sqs.send_message(QueueUrl=queue, MessageBody=body)["MessageId"] for _ in range(8)]

    found = wait_until(
        lambda: (d := deliveries(stack, tag)) and {r["messageId"] for _, r in d} == set(ids) and d,
        what="every message to be delivered",
    )

    sizes: dict[str, int] = defaultdict(int)
    for invocation, record in found:
        sizes[invocation.request_id] += record["size"]
    assert max(sizes.values()) <= 6 * 1024 * 1024
    assert len(sizes) > 1  # 8 messages of 900 KB: more than one batch, though BatchSize is 10
    assert sorted(r["messageId"] for _, r in found) == sorted(ids)


def test_pollers_stop_promptly(stack):
    sources = EventSources(stack.resources.event_source_mappings, stack.runtime, stack.client("sqs")).start()
    threads = [poller._thread for poller in sources.pollers]
    assert len(threads) == 2 and all(thread.is_alive() for thread in threads)

    started = time.monotonic()
    sources.stop()

    assert time.monotonic() - started < 3
    assert not any(thread.is_alive() for thread in threads)


def test_a_standard_queue_delivers_a_quiet_tenants_messages_before_a_noisy_ones_as_fair_queues_do(stack):
    # A queue of its own, with no mapping: the test receives by hand.
    sqs = stack.client("sqs")
    url = sqs.create_queue(QueueName=f"fair-{uuid.uuid4().hex[:8]}", Attributes={"VisibilityTimeout": "60"})[
        "QueueUrl"
    ]

    def send_group(group: str, count: int) -> None:
        for start in range(0, count, 10):
            entries = [
                {"Id": str(i), "MessageBody": json.dumps({"group": group}), "MessageGroupId": group}
                for i in range(min(10, count - start))
            ]
            assert not sqs.send_message_batch(QueueUrl=url, Entries=entries).get("Failed")

    def receive(count: int) -> list[str]:
        got: list[str] = []
        while len(got) < count:
            reply = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=min(10, count - len(got)))
            got += [json.loads(m["Body"])["group"] for m in reply.get("Messages", [])]
        return got

    # GIVEN a tenant with 29 messages in flight (under SQS's 30): no tenant is noisy, the order is as sent
    send_group("noisy", 29)
    assert receive(29) == ["noisy"] * 29
    send_group("noisy", 5)
    send_group("quiet", 2)
    assert receive(1) == ["noisy"]

    # WHEN it holds 30 of the 30 in flight, the quiet tenant's messages, sent after its own, come first
    assert receive(3) == ["quiet", "quiet", "noisy"]
    sqs.delete_queue(QueueUrl=url)
