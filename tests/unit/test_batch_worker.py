"""Workers (xjobs.batch_worker) against the xAI simulator and moto's server: each request's result is
recorded once, 429s go back to the queue without sleeping, 5xx are retried up to a limit, 4xx and
cancelled or expired batches become error lines; and the fan-in (BatchStore.record, claim_finalize)."""

import json
import math
import threading
import time
import uuid

import boto3
import pytest

from tests.unit.conftest import LambdaContext, deliveries
from tests.unit.test_batch_ingest import request
from xjobs import batch_ingest, batch_worker, batches, limiter, upstream
from xjobs.batch_ingest import INLINE_BODY_BYTES
from xjobs.xai import rate_limit_backoff

CHAT_PATH = "/v1/chat/completions"


def sqs_event(messages: list[dict]) -> dict:
    """The event Lambda's SQS event source mapping hands the worker for these deliveries."""
    return {
        "Records": [
            {
                "messageId": m["MessageId"],
                "receiptHandle": m["ReceiptHandle"],
                "body": m["Body"],
                "attributes": m.get("Attributes", {}),
                "messageAttributes": {},
                "md5OfBody": m["MD5OfBody"],
                "eventSource": "aws:sqs",
                "eventSourceARN": "arn:aws:sqs:us-east-1:123456789012:work",
                "awsRegion": "us-east-1",
            }
            for m in messages
        ]
    }


def returned(response: dict) -> set[str]:
    return {failure["itemIdentifier"] for failure in response["batchItemFailures"]}


@pytest.fixture
def store(batch_settings) -> batches.BatchStore:
    return batches.BatchStore(batch_settings.batches_table, batch_settings.batch_items_table)


def outcomes(store: batches.BatchStore, batch_id: str) -> dict[int, dict]:
    return {
        item["line"]: {**item, "outcome": json.loads(item["outcome"])} for item in store.results(batch_id)
    }


def item(batch_settings, batch_id: str, line: int) -> dict | None:
    table = boto3.resource("dynamodb").Table(batch_settings.batch_items_table)
    return table.get_item(Key={"batch_id": batch_id, "line": line}, ConsistentRead=True).get("Item")


def chat_calls(sim) -> list:
    return [call for call in sim.calls if call.path == CHAT_PATH]


# -- results, once ---------------------------------------------------------------------------------


def test_each_request_is_sent_once_and_its_result_recorded(sim, store, start_batch):
    batch_id, messages = start_batch(request("a", "alpha"), request("b", "beta"), request("c", "gamma"))

    response = batch_worker.handle(sqs_event(messages), LambdaContext())

    assert response == {"batchItemFailures": []}
    assert sorted(call.body["messages"][0]["content"] for call in chat_calls(sim)) == [
        "alpha",
        "beta",
        "gamma",
    ]
    assert all(call.status == 200 for call in chat_calls(sim))
    results = outcomes(store, batch_id)
    assert sorted(results) == [1, 2, 3]
    for line, custom_id, text in ((1, "a", "alpha"), (2, "b", "beta"), (3, "c", "gamma")):
        result = results[line]
        assert result["ok"] is True
        assert result["custom_id"] == custom_id
        assert result["outcome"]["custom_id"] == custom_id
        assert result["outcome"]["error"] is None
        assert result["outcome"]["response"]["status_code"] == 200
        body = result["outcome"]["response"]["body"]
        assert body["choices"][0]["message"]["content"] == f"echo: {text}"
        assert result["outcome"]["response"]["request_id"] == body["id"]
    batch = store.get(batch_id)
    assert (batch["done"], batch["failed"]) == (3, 0)
    assert batch["status"] == batches.FINALIZING, "the last result hands the batch to the finalizer"


def test_a_message_delivered_twice_is_recorded_once_and_sent_to_xai_once(sim, store, start_batch):
    batch_id, messages = start_batch(request("a"), request("b"))
    batch_worker.handle(sqs_event(messages[:1]), LambdaContext())
    first = outcomes(store, batch_id)[1]
    assert len(chat_calls(sim)) == 1

    # SQS delivers the first message again, beside the second
    response = batch_worker.handle(sqs_event(messages), LambdaContext())

    assert response == {"batchItemFailures": []}
    assert len(chat_calls(sim)) == 2, "only the second message went to xAI"
    assert chat_calls(sim)[1].body["messages"][0]["content"] == "hello"
    results = outcomes(store, batch_id)
    assert results[1]["outcome"] == first["outcome"], "the first result stays as it was"
    batch = store.get(batch_id)
    assert (batch["done"], batch["failed"]) == (2, 0), "counted once each"


def test_two_copies_of_a_message_in_one_invocation_run_once_and_the_copy_comes_back(sim, store, start_batch):
    batch_id, messages = start_batch(request("a"), request("b"))
    copy = {**messages[0], "MessageId": "copy-of-" + messages[0]["MessageId"]}

    response = batch_worker.handle(sqs_event([messages[0], copy, messages[1]]), LambdaContext())

    assert returned(response) == {copy["MessageId"]}, "the copy comes back to find the first's result"
    assert len(chat_calls(sim)) == 2, "xAI is asked once per request"
    batch = store.get(batch_id)
    assert (batch["done"], batch["failed"]) == (2, 0)


def test_results_of_one_request_in_one_record_call_count_once(store, start_batch):
    batch_id, _ = start_batch(request("a"), request("b"))
    result = {"batch_id": batch_id, "line": 1, "custom_id": "a", "ok": True, "expires_at": 0}

    assert store.record([{**result, "outcome": '"first"'}, {**result, "outcome": '"second"'}]) == set()

    assert outcomes(store, batch_id)[1]["outcome"] == "first"
    assert store.get(batch_id)["done"] == 1


def test_concurrent_records_of_one_request_store_one_result_and_count_it_once(store, start_batch):
    batch_id, _ = start_batch(request("a"), request("b"))
    go = threading.Barrier(8)
    recorded: list[set] = []

    def record(n: int) -> None:
        own = batches.BatchStore(store.batches_table, store.items_table)
        result = {"batch_id": batch_id, "line": 1, "custom_id": "a", "ok": True, "outcome": f"result {n}"}
        go.wait()
        recorded.append(own.record([{**result, "expires_at": 0}]))

    threads = [threading.Thread(target=record, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)

    assert recorded == [set()] * 8, "nothing left uncounted"
    batch = store.get(batch_id)
    assert (batch["done"], batch["failed"]) == (1, 0)
    (result,) = store.results(batch_id)
    assert result["outcome"].startswith("result ")


def test_a_body_stored_in_s3_reaches_xai_whole(sim, store, start_batch):
    big = request("big", "z" * (INLINE_BODY_BYTES + 100))
    batch_id, messages = start_batch(big)
    assert "body_key" in json.loads(messages[0]["Body"]), "precondition: the body travels by reference"

    assert batch_worker.handle(sqs_event(messages), LambdaContext()) == {"batchItemFailures": []}

    (call,) = chat_calls(sim)
    assert call.body == big["body"]
    assert outcomes(store, batch_id)[1]["ok"] is True


# -- refusals and faults ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        pytest.param({"model": "gpt-4o"}, 404, "not_found", id="unknown-model"),
        pytest.param(
            {"deferred": "yes"}, 422, "http_422", id="bad-field", marks=pytest.mark.sends_invalid_requests
        ),  # xAI: plain-text 422
        pytest.param({"presence_penalty": 0.5}, 400, "invalid_argument", id="unsupported-parameter"),
    ],
)
def test_a_request_xai_refuses_becomes_an_error_line_without_a_retry(
    sim, store, start_batch, body, status, code
):
    line = request("refused")
    line["body"].update(body)
    batch_id, messages = start_batch(line)

    response = batch_worker.handle(sqs_event(messages), LambdaContext())

    assert response == {"batchItemFailures": []}, "a 4xx is final: the message is not returned"
    assert [call.status for call in chat_calls(sim)] == [status]
    result = outcomes(store, batch_id)[1]
    assert result["ok"] is False
    assert result["outcome"]["custom_id"] == "refused"
    assert result["outcome"]["response"]["status_code"] == status
    assert result["outcome"]["response"]["body"]["error"]["code"] == code
    batch = store.get(batch_id)
    assert (batch["done"], batch["failed"]) == (1, 1)


def sent_again(queue_url: str, count: int, within: float) -> list[dict]:
    """The `count` messages the worker sent back to the queue, once their delay is over."""
    deadline = time.time() + within
    found: list[dict] = []
    while len(found) < count and time.time() < deadline:
        time.sleep(0.2)
        found += deliveries(queue_url)
    return sorted(found, key=lambda m: json.loads(m["Body"])["line"])


def shared_rate(batch_settings) -> dict | None:
    table = boto3.resource("dynamodb").Table(batch_settings.limits_table)
    return table.get_item(Key={"id": f"{upstream.CHAT_SCOPE}#rate"}, ConsistentRead=True).get("Item")


def test_a_429_without_a_stated_wait_cuts_the_shared_rate_and_sends_the_request_again_later(
    sim, store, start_batch, work_queue, batch_settings
):
    # GIVEN xAI answers 429 as it does: no Retry-After, no x-ratelimit-* headers
    batch_id, messages = start_batch(request("a"))
    sim.inject(CHAT_PATH, 429)

    response = batch_worker.handle(sqs_event(messages), LambdaContext())
    handled_at = time.time()

    # THEN the delivered message is done with (deleted, so it uses up no receive) and a new one waits
    assert returned(response) == set()
    assert deliveries(work_queue) == [], "not visible before the backoff"
    left = item(batch_settings, batch_id, 1)
    assert not {"attempts", "outcome", "lease_until"} & set(left), (
        "a 429: no failed attempt, no result, no lease"
    )
    # AND every worker's rate is cut from the configured 6,000 a minute
    rate = shared_rate(batch_settings)
    assert (rate["rpm"], rate["epoch"], rate["ceiling"]) == (6000 * limiter.CUT_FAR, 1, 6000)
    # AND the request comes back after a backoff of about a second, as a fresh message
    (again,) = sent_again(work_queue, 1, within=3)
    assert time.time() - handled_at >= 0.9
    assert again["MessageId"] != messages[0]["MessageId"]
    assert again["Attributes"]["ApproximateReceiveCount"] == "1"
    body = json.loads(again["Body"])
    assert body | {"rate_limited": 0, "waits": 0} == json.loads(messages[0]["Body"]) | {
        "rate_limited": 0,
        "waits": 0,
    }
    assert (body["rate_limited"], body["waits"]) == (1, 1)

    # WHEN it runs again and xAI answers, its result is recorded once
    assert batch_worker.handle(sqs_event([again]), LambdaContext()) == {"batchItemFailures": []}
    assert outcomes(store, batch_id)[1]["ok"] is True
    assert [call.status for call in chat_calls(sim)] == [429, 200]


def test_the_backoff_of_a_request_429d_again_and_again_grows_to_about_30_seconds():
    waits = [[rate_limit_backoff(n) for n in range(1, 9)] for _ in range(200)]
    firsts = [w[0] for w in waits]
    assert min(firsts) >= 0.7 and max(firsts) <= 1.3, "from about a second"
    assert len({round(f, 3) for f in firsts}) > 100, "with jitter"
    assert all(w[3] > w[1] for w in waits), "growing"
    assert max(max(w) for w in waits) <= 30.0 and min(w[-1] for w in waits) >= 22.5, "up to 30 s"


def test_a_429_with_a_stated_wait_holds_every_worker_back_without_cutting_the_rate(
    sim, store, start_batch, batch_settings
):
    sim.update(retry_after=True)  # the simulator's extension: xAI itself states no wait
    batch_id, messages = start_batch(request("a"))
    sim.inject(CHAT_PATH, 429)  # Retry-After: 1

    response = batch_worker.handle(sqs_event(messages), LambdaContext())

    assert returned(response) == set()
    assert shared_rate(batch_settings) is None, "the configured rate stands"
    rate_limiter = upstream.chat_limiter()
    window = math.floor(chat_calls(sim)[0].time / rate_limiter.window_seconds) + 1
    table = boto3.resource("dynamodb").Table(batch_settings.limits_table)
    blocked = table.get_item(Key={"id": f"{upstream.CHAT_SCOPE}#{window}"}, ConsistentRead=True)["Item"]
    assert blocked["used"] == rate_limiter.capacity


def test_limits_stated_in_headers_become_every_workers_rate(sim, store, start_batch, batch_settings):
    sim.update(rate_limit_headers=True, requests_per_minute=600, tokens_per_minute=90_000)
    batch_id, messages = start_batch(request("a"))

    batch_worker.handle(sqs_event(messages), LambdaContext())

    rate = shared_rate(batch_settings)
    assert (rate["rpm"], rate["tpm"], rate["stated"]) == (600, 90_000, 600)
    rate_limiter = upstream.chat_limiter()  # a quarter second's share of 10 a second, 1,500 tokens a second
    assert (rate_limiter.per_second, rate_limiter.token_capacity) == (10, 375)


def test_a_request_the_shared_limiter_holds_back_waits_as_a_new_message_and_the_rate_climbs(
    sim, store, start_batch, work_queue, monkeypatch, batch_settings
):
    monkeypatch.setenv("CHAT_REQUESTS_PER_MINUTE", "60")  # one request per one-second window
    from xjobs.settings import get_settings

    get_settings.cache_clear()
    batch_id, messages = start_batch(request("a"), request("b"))
    upstream.chat_limiter().try_acquire()  # this second's request is taken

    response = batch_worker.handle(sqs_event(messages), LambdaContext())

    # At most one of the two fits the next window (if it opened meanwhile); a worker that slept
    # through the waits would have sent both.
    assert returned(response) == set(), "no message comes back: the waiting ones are sent again"
    sent = len(chat_calls(sim))
    assert sent <= 1 and store.get(batch_id)["done"] == sent
    waiting = sent_again(work_queue, 2 - sent, within=3)
    assert len(waiting) == 2 - sent
    assert all(json.loads(m["Body"])["waits"] == 1 for m in waiting)
    assert all(m["Attributes"]["ApproximateReceiveCount"] == "1" for m in waiting)
    # Held back without a 429: the demand is above the rate, so the shared rate climbs
    assert shared_rate(batch_settings)["rpm"] == 60 * (1 + limiter.GROW_FAST)


def test_5xx_answers_are_retried_later_until_the_attempts_run_out(
    sim, store, start_batch, batch_settings, work_queue
):
    sim.update(error_500_rate=1.0)
    batch_id, messages = start_batch(request("a"))
    event = sqs_event(messages)
    max_attempts = batch_settings.batch_max_attempts

    for attempt in range(1, max_attempts):
        response = batch_worker.handle(event, LambdaContext())
        assert returned(response) == set()
        assert item(batch_settings, batch_id, 1)["attempts"] == attempt
        assert "outcome" not in item(batch_settings, batch_id, 1)
    response = batch_worker.handle(event, LambdaContext())

    assert response == {"batchItemFailures": []}
    assert [call.status for call in chat_calls(sim)] == [500] * max_attempts
    result = outcomes(store, batch_id)[1]
    assert result["ok"] is False
    assert result["outcome"]["error"]["code"] == "upstream_unavailable"
    assert f"{max_attempts} attempts" in result["outcome"]["error"]["message"]
    assert result["attempts"] == max_attempts
    assert (store.get(batch_id)["done"], store.get(batch_id)["failed"]) == (1, 1)


def test_a_5xx_comes_back_after_a_backoff_and_its_success_is_recorded(
    sim, store, start_batch, work_queue, batch_settings
):
    batch_id, messages = start_batch(request("a"))
    sim.inject(CHAT_PATH, 503)

    first = batch_worker.handle(sqs_event(messages), LambdaContext())
    handled_at = time.time()

    assert returned(first) == set()
    assert deliveries(work_queue) == [], "not before the backoff"
    again = sent_again(work_queue, 1, within=3)  # the first backoff is 1 to 2 s
    assert len(again) == 1 and time.time() - handled_at >= 0.9
    assert item(batch_settings, batch_id, 1)["attempts"] == 1
    second = batch_worker.handle(sqs_event(again), LambdaContext())
    assert second == {"batchItemFailures": []}
    result = outcomes(store, batch_id)[1]
    assert result["ok"] is True
    assert [call.status for call in chat_calls(sim)] == [503, 200]


# -- an account out of credits ----------------------------------------------------------------------


@pytest.mark.parametrize("status", [429, 403])
def test_an_account_out_of_credits_pauses_the_work_probes_it_and_resumes_by_itself(
    sim, store, start_batch, work_queue, batch_settings, notifications, monkeypatch, status
):
    monkeypatch.setenv("ACCOUNT_PROBE_SECONDS", "1")
    from xjobs.settings import get_settings

    get_settings.cache_clear()
    notifications.read()
    batch_id, messages = start_batch(request("a"), request("b"), request("c"))
    sim.update(credits_exhausted=True, credits_exhausted_status=status)

    # WHEN xAI answers the billing error, no request fails: all wait, and the block is announced once
    assert batch_worker.handle(sqs_event(messages), LambdaContext()) == {"batchItemFailures": []}
    assert store.get(batch_id)["done"] == 0
    waiting = sent_again(work_queue, 3, within=4)
    assert len(waiting) == 3
    notices = notifications.read()
    assert [n["attributes"]["event"] for n in notices] == ["account.blocked"]
    assert notices[0]["message"]["account"]["status_code"] == status
    assert "credits" in notices[0]["message"]["account"]["message"]

    # WHILE it lasts, one request per probe interval tries; the others wait without calling xAI
    calls_before = len(chat_calls(sim))
    time.sleep(1.0)  # the probe interval has passed
    assert batch_worker.handle(sqs_event(waiting), LambdaContext()) == {"batchItemFailures": []}
    assert len(chat_calls(sim)) == calls_before + 1, "one probe"
    waiting = sent_again(work_queue, 3, within=4)
    assert len(waiting) == 3 and store.get(batch_id)["done"] == 0

    # WHEN credits return, the next probe goes through and lifts the block for everyone
    sim.update(credits_exhausted=False)
    time.sleep(1.0)
    batch_worker.handle(sqs_event(waiting), LambdaContext())
    assert upstream.account().blocked(fresh=True) is None
    assert [n["attributes"]["event"] for n in notifications.read()] == ["account.resumed"]
    rest = sent_again(work_queue, 2, within=5)
    batch_worker.handle(sqs_event(rest), LambdaContext())
    batch = store.get(batch_id)
    assert (batch["done"], batch["failed"]) == (3, 0), "every request answered, none failed"


def test_requests_of_a_cancelled_batch_become_error_lines_without_calling_xai(sim, store, start_batch):
    batch_id, messages = start_batch(request("a"), request("b"))
    store.cancel(batch_id, batch_ingest.DIRECT_UPLOAD_TENANT)

    response = batch_worker.handle(sqs_event(messages), LambdaContext())

    assert response == {"batchItemFailures": []}
    assert chat_calls(sim) == []
    results = outcomes(store, batch_id)
    assert {line: r["outcome"]["error"]["code"] for line, r in results.items()} == {
        1: "batch_cancelled",
        2: "batch_cancelled",
    }
    assert [r["outcome"]["custom_id"] for r in results.values()] == ["a", "b"]
    batch = store.get(batch_id)
    assert (batch["done"], batch["failed"]) == (2, 2)
    assert batch["status"] == batches.FINALIZING


def test_requests_of_an_expired_batch_become_error_lines_without_calling_xai(
    sim, store, start_batch, batch_settings
):
    batch_id, messages = start_batch(request("a"))
    store.table.update_item(
        Key={"id": batch_id},
        UpdateExpression="SET expires_at = :past",
        ExpressionAttributeValues={":past": 1},
    )

    assert batch_worker.handle(sqs_event(messages), LambdaContext()) == {"batchItemFailures": []}

    assert chat_calls(sim) == []
    assert outcomes(store, batch_id)[1]["outcome"]["error"]["code"] == "batch_expired"


def test_a_dead_letter_becomes_an_error_line_so_the_batch_ends(sim, store, start_batch):
    batch_id, messages = start_batch(request("a"), request("b"))
    batch_worker.handle(sqs_event(messages[:1]), LambdaContext())
    dead = dict(messages[1], Attributes={**messages[1]["Attributes"], "ApproximateReceiveCount": "30"})

    response = batch_worker.handle_dead_letters(sqs_event([dead]), LambdaContext())

    assert response == {"batchItemFailures": []}
    assert len(chat_calls(sim)) == 1
    result = outcomes(store, batch_id)[2]
    assert result["outcome"]["error"]["code"] == "delivery_failed"
    assert "30 times" in result["outcome"]["error"]["message"]
    batch = store.get(batch_id)
    assert (batch["done"], batch["failed"], batch["status"]) == (2, 1, batches.FINALIZING)


def test_a_dead_letter_of_a_request_that_has_its_result_changes_nothing(sim, store, start_batch):
    batch_id, messages = start_batch(request("a"), request("b"))
    batch_worker.handle(sqs_event(messages[:1]), LambdaContext())

    batch_worker.handle_dead_letters(sqs_event(messages[:1]), LambdaContext())

    assert outcomes(store, batch_id)[1]["ok"] is True
    assert (store.get(batch_id)["done"], store.get(batch_id)["failed"]) == (1, 0)


# -- claim_finalize --------------------------------------------------------------------------------


def finished_batch(store: batches.BatchStore, **fields) -> str:
    batch = batches.new_batch(
        f"batch_{uuid.uuid4().hex.upper()[:26]}",
        tenant="t",
        input_key="batches/incoming/x.jsonl",
        input_file_id=None,
        window_seconds=3600,
        metadata={},
    )
    store.create(
        {
            **batch,
            "status": batches.IN_PROGRESS,
            "ingested": True,
            "lines": 5,
            "enqueued": 5,
            "done": 5,
            **fields,
        }
    )
    return batch["id"]


def test_claim_finalize_wins_exactly_once_among_concurrent_callers(store):
    batch_id = finished_batch(store)
    go = threading.Barrier(12)
    wins: list[bool] = []

    def claim() -> None:
        own = batches.BatchStore(store.batches_table, store.items_table)
        go.wait()
        wins.append(own.claim_finalize(batch_id))

    threads = [threading.Thread(target=claim) for _ in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)

    assert sorted(wins) == [False] * 11 + [True]
    assert store.get(batch_id)["status"] == batches.FINALIZING


@pytest.mark.parametrize(
    "fields",
    [
        pytest.param({"done": 4}, id="a-request-outstanding"),
        pytest.param({"ingested": False}, id="ingest-not-finished"),
        pytest.param({"status": batches.COMPLETED}, id="already-ended"),
    ],
)
def test_claim_finalize_refuses_a_batch_that_is_not_done(store, fields):
    batch_id = finished_batch(store, **fields)

    assert store.claim_finalize(batch_id) is False
    assert store.get(batch_id)["status"] == fields.get("status", batches.IN_PROGRESS)


# -- unreadable messages ---------------------------------------------------------------------------


UNREADABLE = [
    "not json",
    "[" * 100_000,
    "[1, 2]",
    "{}",
    '{"batch_id": 7, "line": 1, "custom_id": "x", "tokens": 1, "expires_at": 1, "body": {}}',
    '{"batch_id": "b", "line": true, "custom_id": "x", "tokens": 1, "expires_at": 1, "body": {}}',
    '{"batch_id": "b", "line": 1, "custom_id": "x", "tokens": 1, "expires_at": 1}',
]


def with_unreadable(messages: list[dict]) -> list[dict]:
    """The messages, with an unreadable one before each (as if put on the queue by someone else)."""
    mixed = []
    for n, message in enumerate(messages):
        body = UNREADABLE[n % len(UNREADABLE)]
        mixed.append({**message, "MessageId": f"unreadable-{n}", "Body": body})
        mixed.append(message)
    return mixed


def test_unreadable_messages_are_set_aside_and_the_others_of_their_batch_run(sim, store, start_batch, caplog):
    batch_id, messages = start_batch(*[request(f"r{n}", f"q{n}") for n in range(len(UNREADABLE))])
    mixed = with_unreadable(messages)

    response = batch_worker.handle(sqs_event(mixed), LambdaContext())

    assert response == {"batchItemFailures": []}, "set aside: deleted with the successes, never retried"
    assert sorted(outcomes(store, batch_id)) == list(range(1, len(UNREADABLE) + 1))
    assert all(r["ok"] for r in outcomes(store, batch_id).values())
    assert len(chat_calls(sim)) == len(UNREADABLE)
    set_aside = [r for r in caplog.records if r.getMessage() == "unreadable message set aside"]
    assert len(set_aside) == len(UNREADABLE)


def test_dead_letters_become_error_lines_beside_unreadable_ones(sim, store, start_batch):
    batch_id, messages = start_batch(request("a"), request("b"), request("c"))

    response = batch_worker.handle_dead_letters(sqs_event(with_unreadable(messages)), LambdaContext())

    assert response == {"batchItemFailures": []}
    results = outcomes(store, batch_id)
    assert {line: r["outcome"]["error"]["code"] for line, r in results.items()} == {
        1: "delivery_failed",
        2: "delivery_failed",
        3: "delivery_failed",
    }
    assert store.get(batch_id)["status"] == batches.FINALIZING
    assert chat_calls(sim) == []


# -- leases: one copy of a request calls xAI at a time ----------------------------------------------


def test_two_copies_running_at_once_call_xai_once(sim, store, start_batch, work_queue):
    sim.update(chat_latency_median=0.8, chat_latency_sigma=0.01)
    batch_id, messages = start_batch(request("a"))
    copy = {**messages[0], "MessageId": "second-copy"}
    go = threading.Barrier(2)
    responses = {}

    def deliver(message: dict) -> None:
        go.wait()
        responses[message["MessageId"]] = batch_worker.handle(sqs_event([message]), LambdaContext())

    threads = [threading.Thread(target=deliver, args=(m,)) for m in (messages[0], copy)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)

    assert len(chat_calls(sim)) == 1, "the lease kept the second copy from calling xAI"
    back = [m for m, r in responses.items() if returned(r)]
    assert len(back) == 1, responses
    assert outcomes(store, batch_id)[1]["ok"] is True
    assert store.get(batch_id)["done"] == 1
    # The copy that came back finds the result and calls nobody
    again = {**messages[0], "MessageId": back[0]}
    assert batch_worker.handle(sqs_event([again]), LambdaContext()) == {"batchItemFailures": []}
    assert len(chat_calls(sim)) == 1


def test_the_lease_of_a_crashed_worker_is_taken_again_once_it_ends(sim, store, start_batch):
    batch_id, messages = start_batch(request("a"))
    token, _ = store.lease(batch_id, 1, 1.0, 0)  # a worker took it, then crashed
    assert token is not None

    held = batch_worker.handle(sqs_event(messages), LambdaContext())
    assert returned(held) == {messages[0]["MessageId"]}
    assert chat_calls(sim) == []
    time.sleep(1.1)
    assert batch_worker.handle(sqs_event(messages), LambdaContext()) == {"batchItemFailures": []}

    assert len(chat_calls(sim)) == 1
    assert outcomes(store, batch_id)[1]["ok"] is True


# -- counter contention: no answer is ever thrown away ---------------------------------------------


@pytest.fixture
def contended(aws_emulator):
    """DynamoDB as under heavy load: a transaction holds its items 80 ms, so transactions on one
    batch's counter item conflict (TransactionConflict) as they do when many workers record at once."""
    aws_emulator.transaction_conflict_seconds = 0.08
    yield aws_emulator
    aws_emulator.transaction_conflict_seconds = 0.0


def test_under_counter_contention_every_result_is_stored_at_once_and_counted_exactly_once(
    store, start_batch, contended
):
    recorders = 60
    batch_id, _ = start_batch(*[request(f"r{n}") for n in range(recorders)])
    go = threading.Barrier(recorders)
    left: dict[int, set] = {}
    failures: list[BaseException] = []

    def record(line: int) -> None:
        own = batches.BatchStore(store.batches_table, store.items_table)
        result = {"batch_id": batch_id, "line": line, "custom_id": f"r{line - 1}", "ok": line % 2 == 0}
        go.wait()
        try:
            left[line] = own.record(
                [{**result, "outcome": f"answer {line}", "expires_at": 0}], count_seconds=2
            )
        except BaseException as exc:  # an answer lost to contention fails the test below
            failures.append(exc)

    threads = [threading.Thread(target=record, args=(n,)) for n in range(1, recorders + 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)

    assert failures == []
    stored = {r["line"]: r["outcome"] for r in store.results(batch_id)}
    assert stored == {n: f"answer {n}" for n in range(1, recorders + 1)}, "every answer is kept at once"
    uncounted = set().union(*left.values())
    assert uncounted, "precondition: the contention left some results to count later"
    batch = store.get(batch_id)
    assert batch["done"] == recorders - len(uncounted)
    # The messages of the uncounted results come back; their next delivery counts them, once
    contended.transaction_conflict_seconds = 0.0
    prefetched, _ = store.prefetch(sorted(uncounted))
    recount = [{"batch_id": b, "line": n, "ok": prefetched[(b, n)]["ok"]} for b, n in sorted(uncounted)]
    assert all(prefetched[key]["uncounted"] for key in uncounted)
    assert store.record([], recount) == set()
    assert store.record([], recount) == set(), "a second recount changes nothing"
    batch = store.get(batch_id)
    assert (batch["done"], batch["failed"]) == (recorders, recorders // 2)
