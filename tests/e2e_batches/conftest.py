"""The chat-batch end-to-end fixtures: one local stack with short timeouts, driven over HTTP and S3."""

import dataclasses

import httpx
import pytest

from local.stack import LocalStack
from local.xai_simulator import SimulatorConfig

from .helpers import Batches

# Short visibility and worker timeouts keep redeliveries (crashes, retries) within seconds.
PARAMETERS = {
    "BatchWorkerTimeoutSeconds": "15",
    "BatchWorkVisibilitySeconds": "8",
    "BatchWorkerConcurrency": "4",
    "BatchMaxAttempts": "3",
    "BatchMaxReceives": "30",
    "ChatRequestsPerMinute": "60000",
    # The sweeper every 2 s (rate in seconds: the local stack only); one restart before a batch fails.
    "SweeperSchedule": "rate(2 seconds)",
    "StalledAfterSeconds": "120",
    "StalledMaxRestarts": "1",
    "MaxUploadBytes": "300000",  # presigned uploads: small enough for a test to go over it
}
SIMULATOR = SimulatorConfig(api_key="sim-batch-key", chat_latency_median=0.02, chat_latency_sigma=0.3)


@pytest.fixture(scope="session")
def stack():
    local = LocalStack(parameters=PARAMETERS, simulator=SIMULATOR).start()
    yield local
    denied = local.iam.report()
    local.stop()
    # Every AWS call of every function in the session was checked against its role (local/iam.py).
    assert not denied, "calls the functions' roles do not allow:\n" + "\n".join(denied)


@pytest.fixture(autouse=True)
def xai_contract_kept(sim, request):
    """Fails the test if a request a worker sent to xAI, or an answer of the simulator, broke xAI's
    contract (local/xai_contract) while it ran (`sim` empties the log first)."""
    yield
    deliberate = request.node.get_closest_marker("sends_invalid_requests") is not None
    problems = sim.violations(requests=not deliberate)
    assert not problems, "xAI contract violations:\n" + "\n".join(problems)


@pytest.fixture
def sim(stack):
    """The simulator with an empty call log, put back to the session's configuration after each test."""
    stack.simulator.reset()
    yield stack.simulator
    stack.simulator.update(**dataclasses.asdict(SIMULATOR))


@pytest.fixture
def api(stack):
    with httpx.Client(
        base_url=stack.api_url, headers={"Authorization": f"Bearer {stack.api_key}"}, timeout=30
    ) as client:
        yield client


@pytest.fixture
def batches(stack, api):
    return Batches(stack, api)
