"""The sample events in events/ (also for `sam local invoke`) drive the real handlers as documented."""

import json
from pathlib import Path

import pytest

from local.runtime import FunctionError

EVENTS = Path(__file__).resolve().parents[2] / "events"


def load(name: str) -> dict:
    return json.loads((EVENTS / name).read_text())


@pytest.mark.parametrize(
    ("event", "status"),
    [
        ("api_create_video.json", 202),
        ("api_edit_video.json", 202),
        ("api_create_deferred_chat.json", 202),
        ("api_create_video_bad_body.json", 400),
        ("api_list_jobs.json", 200),
        ("api_get_job.json", 404),
        ("api_cancel_job.json", 404),
        ("api_get_webhook_secret.json", 404),  # the example tenant has no record
    ],
)
def test_api_events(stack, event, status):
    reply = stack.runtime.invoke("ApiFunction", load(event))
    assert reply["statusCode"] == status, reply["body"]


def test_created_job_belongs_to_the_events_api_key(stack):
    created = json.loads(stack.runtime.invoke("ApiFunction", load("api_create_video.json"))["body"])
    get = load("api_get_job.json")
    get["path"] = f"/v1/jobs/{created['id']}"
    get["pathParameters"] = {"id": created["id"]}
    assert json.loads(stack.runtime.invoke("ApiFunction", get)["body"])["id"] == created["id"]


def test_the_webhook_secret_event_reads_its_tenants_secret(stack, api):
    event = load("api_get_webhook_secret.json")
    event["requestContext"]["authorizer"] = {"tenant": stack.tenant, "principalId": stack.tenant}
    reply = stack.runtime.invoke("ApiFunction", event)
    assert reply["statusCode"] == 200
    assert json.loads(reply["body"])["secret"] == api.get("/v1/webhook_secret").json()["secret"]


@pytest.mark.parametrize("event", ["poll.json", "finish.json"])
def test_loop_events_name_the_missing_job(stack, event):
    with pytest.raises(FunctionError) as failure:
        stack.runtime.invoke(event.split(".")[0].capitalize() + "Function", load(event))
    assert failure.value.error_type == "JobNotFound"
    assert "job_01JXAMPLE0000000000000000" in failure.value.message


def test_the_authorizer_event_is_refused_until_it_carries_a_live_key(stack):
    event = load("authorizer.json")
    with pytest.raises(FunctionError) as refused:
        stack.runtime.invoke("AuthorizerFunction", event)
    assert refused.value.message == "Unauthorized"
    event["headers"]["Authorization"] = f"Bearer {stack.api_key}"
    answer = stack.runtime.invoke("AuthorizerFunction", event)
    assert answer["context"] == {"tenant": stack.tenant}
    assert answer["policyDocument"]["Statement"][0]["Effect"] == "Allow"
