"""The local Lambda runtime: concurrent execution environments with module state of their own, reserved
concurrency, timeouts, injected crashes, and invocations through the emulator's Lambda API."""

import json
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from local.runtime import FunctionError

from .conftest import wait_until


def echo_event(name: str, sleep: float = 0) -> dict:
    """The proxy event API Gateway sends for GET /echo/<name>?sleep=<sleep>."""
    return {
        "resource": "/echo/{name}",
        "path": f"/echo/{name}",
        "httpMethod": "GET",
        "headers": {},
        "multiValueHeaders": {},
        "queryStringParameters": {"sleep": str(sleep)},
        "multiValueQueryStringParameters": {"sleep": [str(sleep)]},
        "pathParameters": {"name": name},
        "stageVariables": None,
        "requestContext": {
            "resourcePath": "/echo/{name}",
            "httpMethod": "GET",
            "path": f"/test/echo/{name}",
            "stage": "test",
            "requestId": str(uuid.uuid4()),
            "identity": {"sourceIp": "127.0.0.1"},
        },
        "body": None,
        "isBase64Encoded": False,
    }


def echo(stack, function: str, name: str, sleep: float = 0) -> dict:
    reply = stack.runtime.invoke(function, echo_event(name, sleep))
    assert reply["statusCode"] == 200, reply
    return json.loads(reply["body"])


def test_concurrent_invocations_run_in_environments_of_their_own(stack):
    names = [f"caller-{i}" for i in range(6)]
    with ThreadPoolExecutor(len(names)) as pool:
        replies = list(pool.map(lambda name: echo(stack, "StateFunction", name, sleep=0.5), names))

    # Each request was served with its own event, though they overlapped in one process ...
    assert [(r["name"], r["path"]) for r in replies] == [(n, f"/echo/{n}") for n in names]
    assert stack.runtime.stats["StateFunction"].max_concurrency > 1
    # ... by environments that each counted only their own invocations.
    served: dict[str, list[int]] = {}
    for reply in replies:
        served.setdefault(reply["environment"], []).append(reply["served"])
    assert len(served) > 1
    for counts in served.values():
        assert sorted(counts) == list(range(1, len(counts) + 1))


def test_an_idle_environment_is_reused(stack):
    first = echo(stack, "StateFunction", "again")
    started = stack.runtime.stats["StateFunction"].environments

    second = echo(stack, "StateFunction", "again")

    assert second["environment"] == first["environment"]
    assert second["served"] == first["served"] + 1
    assert stack.runtime.stats["StateFunction"].environments == started


def test_invocations_beyond_the_reserved_concurrency_are_throttled(stack):
    stats = stack.runtime.stats["OneAtATimeFunction"]
    slow = threading.Thread(target=echo, args=(stack, "OneAtATimeFunction", "slow", 1.0))
    slow.start()
    wait_until(lambda: stats.running == 1, what="the slow invocation to start")

    with pytest.raises(FunctionError) as throttled:
        stack.runtime.invoke("OneAtATimeFunction", echo_event("throttled"))
    slow.join()

    assert throttled.value.error_type == "TooManyRequestsException"
    assert stats.throttles == 1
    assert stats.max_concurrency == 1
    assert echo(stack, "OneAtATimeFunction", "after")["name"] == "after"


def test_a_throttled_invoke_through_the_lambda_api_is_a_429(stack):
    stats = stack.runtime.stats["OneAtATimeFunction"]
    client = stack.session.client(
        "lambda", endpoint_url=stack.aws_endpoint, config=Config(retries={"total_max_attempts": 1})
    )
    name = stack.runtime.functions["OneAtATimeFunction"].name
    slow = threading.Thread(target=echo, args=(stack, "OneAtATimeFunction", "slow", 1.0))
    slow.start()
    wait_until(lambda: stats.running == 1, what="the slow invocation to start")

    with pytest.raises(ClientError) as throttled:
        client.invoke(FunctionName=name, Payload=json.dumps(echo_event("throttled")))
    slow.join()

    assert throttled.value.response["Error"]["Code"] == "TooManyRequestsException"
    assert throttled.value.response["ResponseMetadata"]["HTTPStatusCode"] == 429


def test_the_lambda_api_invokes_synchronously_or_as_an_event(stack):
    client = stack.client("lambda")
    name = stack.runtime.functions["StateFunction"].name
    reply = client.invoke(FunctionName=name, Payload=json.dumps(echo_event("sync")))
    assert json.loads(json.loads(reply["Payload"].read())["body"])["name"] == "sync"

    count = stack.runtime.stats["StateFunction"].count
    reply = client.invoke(
        FunctionName=name, InvocationType="Event", Payload=json.dumps(echo_event("event", 1))
    )
    assert reply["StatusCode"] == 202
    assert stack.runtime.stats["StateFunction"].count == count  # accepted; its second of work not done
    wait_until(lambda: stack.runtime.stats["StateFunction"].count == count + 1, what="the event's invocation")


def test_a_timed_out_environment_is_replaced(stack):
    before = echo(stack, "ShortTimeoutFunction", "before")

    with pytest.raises(FunctionError) as timed_out:
        stack.runtime.invoke("ShortTimeoutFunction", echo_event("too-slow", sleep=2))
    after = echo(stack, "ShortTimeoutFunction", "after")

    assert timed_out.value.error_type == "Sandbox.Timedout"
    assert after["environment"] != before["environment"]


def test_an_injected_crash_fails_only_the_next_invocation(stack):
    stack.runtime.fail_next["StateFunction"] = ["simulated crash"]

    with pytest.raises(FunctionError) as crashed:
        stack.runtime.invoke("StateFunction", echo_event("crash"))

    assert (crashed.value.error_type, crashed.value.message) == ("RuntimeError", "simulated crash")
    assert echo(stack, "StateFunction", "fine")["name"] == "fine"


def test_an_event_over_six_megabytes_is_refused(stack):
    event = echo_event("big")
    event["body"] = "x" * (6 * 1024 * 1024)

    with pytest.raises(FunctionError) as refused:
        stack.runtime.invoke("StateFunction", event)

    assert refused.value.error_type == "RequestEntityTooLargeException"
