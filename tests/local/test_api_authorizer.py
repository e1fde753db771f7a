"""The local API Gateway runs a template's Lambda authorizer as API Gateway does: identity sources
checked before the call, answers cached per identity for the authorizer's TTL, 401 for "Unauthorized",
403 for a Deny, 500 for a failing authorizer, and the context handed to the function."""

import time

import httpx
import pytest

from .conftest import invocations, wait_until


@pytest.fixture(scope="module")
def api(stack):
    return stack.api_url


def _authorizer_calls(stack) -> int:
    return len(invocations(stack, "AuthorizerFunction"))


def test_a_request_without_the_identity_source_is_a_401_without_calling_the_authorizer(stack, api):
    before = _authorizer_calls(stack)
    reply = httpx.get(f"{api}/echo", timeout=30)
    assert reply.status_code == 401
    assert reply.json() == {"message": "Unauthorized"}
    assert _authorizer_calls(stack) == before


def test_an_allow_reaches_the_function_with_the_context_and_is_cached_for_the_ttl(stack, api):
    token = f"allow-{time.time_ns()}"
    first = httpx.get(f"{api}/echo", headers={"Authorization": token}, timeout=30)
    assert first.status_code == 200, first.text
    assert first.json()["who"] == token.removeprefix("allow-")
    assert first.json()["principalId"] == token
    second = httpx.get(f"{api}/echo", headers={"Authorization": token}, timeout=30)
    assert second.json() == first.json()
    calls = [
        i for i in invocations(stack, "AuthorizerFunction") if i.event["headers"]["Authorization"] == token
    ]
    assert len(calls) == 1  # the second answer came from the cache
    time.sleep(2.2)  # ReauthorizeEvery: 2
    httpx.get(f"{api}/echo", headers={"Authorization": token}, timeout=30)
    wait_until(
        lambda: (
            len(
                [
                    i
                    for i in invocations(stack, "AuthorizerFunction")
                    if i.event["headers"]["Authorization"] == token
                ]
            )
            == 2
        ),
        what="a second authorizer call once the TTL passed",
    )


@pytest.mark.parametrize(
    ("token", "status", "message"),
    [
        ("deny", 403, "User is not authorized to access this resource with an explicit deny"),
        ("bad", 401, "Unauthorized"),
        ("boom", 500, None),
    ],
)
def test_deny_unauthorized_and_failure(api, token, status, message):
    reply = httpx.get(f"{api}/echo", headers={"Authorization": token}, timeout=30)
    assert reply.status_code == status, reply.text
    assert reply.json() == {"message": message}


def test_an_unknown_route_is_missing_authentication_token_without_gateway_responses(api):
    reply = httpx.get(f"{api}/nowhere", headers={"Authorization": "allow-x"}, timeout=30)
    assert reply.status_code == 403
    assert reply.json() == {"message": "Missing Authentication Token"}
