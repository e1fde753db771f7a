"""One local stack for the session, on the small template in fixtures/: moto's server, the template's
resources, its functions run in-process, their SQS pollers and S3 notifications. The fixture functions
record what they get in a DynamoDB table of the emulator, which the tests read over its API."""

import json
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from local.stack import STACK_NAME, LocalStack

TEMPLATE = Path(__file__).parent / "fixtures" / "template.yaml"


@pytest.fixture(scope="session")
def stack():
    local = LocalStack(template=TEMPLATE).start()
    yield local
    local.stop()


def wait_until(condition, timeout: float = 20.0, what: str = "the condition"):
    """The condition's first truthy value, checked every 50 ms until the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


@dataclass
class Invocation:
    """One invocation of a fixture function, as the function recorded it."""

    function: str  # logical id
    request_id: str
    environment: str
    started: float
    ended: float
    event: dict


def invocations(stack: LocalStack, function: str | None = None) -> list[Invocation]:
    table = stack.resources.physical["RecordsTable"]
    found = []
    for page in stack.client("dynamodb").get_paginator("scan").paginate(TableName=table):
        for item in page["Items"]:
            invocation = Invocation(
                function=item["function"]["S"].removeprefix(f"{STACK_NAME}-"),
                request_id=item["request_id"]["S"],
                environment=item["environment"]["S"],
                started=float(item["started"]["S"]),
                ended=float(item["ended"]["S"]),
                event=json.loads(item["event"]["S"]),
            )
            if function is None or invocation.function == function:
                found.append(invocation)
    return sorted(found, key=lambda i: i.started)


def max_overlap(intervals: list[tuple[float, float]]) -> int:
    """The most intervals open at one instant."""
    edges = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    open_now = peak = 0
    for _, step in edges:
        open_now += step
        peak = max(peak, open_now)
    return peak
