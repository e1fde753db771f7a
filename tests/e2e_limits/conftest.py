"""A local stack whose xAI account misbehaves as real ones do: a chat limit far below the configured
one, 429s that state nothing, and credits that run out mid-work. Driven over HTTP and S3 as a user
would; the account's state is reset before each test."""

import dataclasses

import httpx
import pytest

from local.stack import LocalStack
from local.xai_simulator import SimulatorConfig
from tests.e2e.helpers import Inbox
from tests.e2e_batches.helpers import Batches

# Few receives per message (waits must not use them up), short probes and polls keep the suite fast.
PARAMETERS = {
    "ChatRequestsPerMinute": "1800",
    "AccountProbeSeconds": "1",
    "BatchWorkerTimeoutSeconds": "15",
    "BatchWorkVisibilitySeconds": "90",
    "BatchWorkerConcurrency": "4",
    "BatchMaxReceives": "3",
    "PollMinWaitSeconds": "1",
    "PollMaxWaitSeconds": "2",
    "JobTimeoutDefaultSeconds": "120",
}
SIMULATOR = SimulatorConfig(
    api_key="sim-limits-key", chat_latency_median=0.05, chat_latency_sigma=0.3, deferred_chat_duration=3.0
)


@pytest.fixture(scope="session")
def stack():
    local = LocalStack(parameters=PARAMETERS, simulator=SIMULATOR).start()
    yield local
    denied = local.iam.report()
    local.stop()
    # Every AWS call of every function in the session was checked against its role (local/iam.py).
    assert not denied, "calls the functions' roles do not allow:\n" + "\n".join(denied)


@pytest.fixture
def sim(stack):
    """The simulator and the account as a new deployment finds them: nothing learned, nothing blocked."""
    limits = stack.client("dynamodb")
    table = stack.resources.physical["LimitsTable"]
    for item_id in ("xai-chat#rate", "xai-account#blocked"):
        limits.delete_item(TableName=table, Key={"id": {"S": item_id}})
    stack.simulator.reset()
    yield stack.simulator
    stack.simulator.update(**dataclasses.asdict(SIMULATOR))


@pytest.fixture
def api(stack):
    with httpx.Client(base_url=stack.api_url, headers={"x-api-key": stack.api_key}, timeout=30) as client:
        yield client


@pytest.fixture
def batches(stack, api):
    return Batches(stack, api)


@pytest.fixture
def inbox(stack):
    found = Inbox(stack)
    found.drain()
    found.messages.clear()
    return found
