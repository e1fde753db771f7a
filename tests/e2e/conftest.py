"""One local stack for the whole session: moto's server, the template's resources and functions, the
API on loopback and the xAI simulator. Tests drive it over HTTP exactly as a user would."""

import dataclasses

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
    "AuthCacheSeconds": "1",  # a revoked key is refused within a second
    "WebhookSecretGraceSeconds": "10",  # a rotated webhook secret signs beside the new one this long
}
SIMULATOR = SimulatorConfig(
    api_key="sim-test-key", video_duration_median=1.0, video_duration_sigma=0.2, deferred_chat_duration=0.5
)


@pytest.fixture(scope="session")
def stack():
    local = LocalStack(parameters=PARAMETERS, simulator=SIMULATOR).start()
    yield local
    denied = local.iam.report()
    local.stop()
    # Every AWS call of every function in the session was checked against its role (local/iam.py).
    assert not denied, "calls the functions' roles do not allow:\n" + "\n".join(denied)


@pytest.fixture(autouse=True)
def xai_contract_kept(stack, request):
    """Fails the test if a request the stack sent to xAI, or an answer of the simulator, broke xAI's
    contract (local/xai_contract) while it ran."""
    since = len(stack.simulator.calls)
    yield
    deliberate = request.node.get_closest_marker("sends_invalid_requests") is not None
    problems = stack.simulator.violations(since, requests=not deliberate)
    assert not problems, "xAI contract violations:\n" + "\n".join(problems)


@pytest.fixture
def sim(stack):
    """The simulator, put back to the session's configuration after each test."""
    yield stack.simulator
    # The stack turned the callbacks extension on if it calls back (tests/e2e_callbacks): keep it.
    stack.simulator.update(**(dataclasses.asdict(SIMULATOR) | {"callbacks": stack.upstream_callbacks}))


@pytest.fixture
def api(stack):
    with httpx.Client(
        base_url=stack.api_url, headers={"Authorization": f"Bearer {stack.api_key}"}, timeout=30
    ) as client:
        yield client


@pytest.fixture
def new_tenant(stack):
    """A new tenant and a client with its first key, as `python -m xjobs.admin tenants create` makes them."""

    def make() -> httpx.Client:
        _, key = stack.create_tenant(name="test")
        return httpx.Client(base_url=stack.api_url, headers={"Authorization": f"Bearer {key}"}, timeout=30)

    return make


@pytest.fixture(scope="session")
def inbox(stack):
    return Inbox(stack)
