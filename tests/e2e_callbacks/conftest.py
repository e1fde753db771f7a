"""The end-to-end fixtures, on a stack whose upstream calls back when a job finishes."""

import pytest

from local.stack import LocalStack
from tests.e2e.conftest import PARAMETERS, SIMULATOR, api, inbox, sim, xai_contract_kept  # noqa: F401  (fixtures)

FALLBACK_SECONDS = 30


@pytest.fixture(scope="session")
def stack():
    local = LocalStack(
        parameters={
            **PARAMETERS,
            "CallbackFallbackSeconds": str(FALLBACK_SECONDS),
            # A tight route throttle, so a test can flood it in a moment.
            "CallbackThrottleRateLimit": "2",
            "CallbackThrottleBurstLimit": "5",
        },
        simulator=SIMULATOR,
        upstream_callbacks=True,
    ).start()
    yield local
    denied = local.iam.report()
    local.stop()
    # Every AWS call of every function in the session was checked against its role (local/iam.py).
    assert not denied, "calls the functions' roles do not allow:\n" + "\n".join(denied)
