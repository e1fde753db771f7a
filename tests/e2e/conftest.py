"""One local stack for the whole session: moto's server, the template's resources and functions, the
API on loopback and the xAI simulator. Tests drive it over HTTP exactly as a user would."""

import dataclasses
import time

import httpx
import pytest

from local.stack import LocalStack
from local.xai_simulator import SimulatorConfig

from .helpers import Inbox

# Short waits keep the suite fast; the schedule's shape is the template's.
PARAMETERS = {
    "PollMinWaitSeconds": "1",
    "PollMaxWaitSeconds": "2",
    "JobTimeoutDefaultSeconds": "120",
    "JobTimeoutMaxSeconds": "600",
    # The sweeper looks for jobs whose loop ended every 2 s (rate in seconds: the local stack only).
    "SweeperSchedule": "rate(2 seconds)",
}
SIMULATOR = SimulatorConfig(
    api_key="sim-test-key", video_duration_median=1.0, video_duration_sigma=0.2, deferred_chat_duration=0.5
)


@pytest.fixture(scope="session")
def stack():
    local = LocalStack(parameters=PARAMETERS, simulator=SIMULATOR).start()
    yield local
    local.stop()


@pytest.fixture
def sim(stack):
    """The simulator, put back to the session's configuration after each test."""
    yield stack.simulator
    stack.simulator.update(**dataclasses.asdict(SIMULATOR))


@pytest.fixture
def api(stack):
    with httpx.Client(base_url=stack.api_url, headers={"x-api-key": stack.api_key}, timeout=30) as client:
        yield client


@pytest.fixture
def new_tenant(stack):
    """A fresh API key (a new tenant) created in the emulator, as `aws apigateway create-api-key` would."""

    def make() -> httpx.Client:
        key = stack.client("apigateway").create_api_key(name=f"tenant-{time.time_ns()}", enabled=True)
        return httpx.Client(base_url=stack.api_url, headers={"x-api-key": key["value"]}, timeout=30)

    return make


@pytest.fixture(scope="session")
def inbox(stack):
    return Inbox(stack)
