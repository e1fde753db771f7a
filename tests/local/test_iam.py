"""IAM on the local stack: a function calls AWS as its own role, and what the role does not allow fails
as on AWS (local/iam.py)."""

import httpx
import pytest


@pytest.fixture
def iam(stack):
    """The stack's authorizer, its refusals forgotten after the test (they are this test's doing), and
    the probe's item out of the table the other tests read their invocations from."""
    yield stack.iam
    stack.iam.denied.clear()
    table = stack.resources.physical["RecordsTable"]
    for key in ("probe-1", "probe-2"):
        stack.client("dynamodb").delete_item(TableName=table, Key={"id": {"S": key}})


def test_a_call_the_role_allows_succeeds_and_one_it_does_not_is_refused(stack, iam):
    outcomes = stack.runtime.invoke(
        "IamProbeFunction",
        {
            "calls": [
                ["put_object", "allowed/a.txt"],
                ["put_object", "elsewhere/a.txt"],  # outside the prefix its policy names
                ["put_item", "probe-1"],
                ["get_item", "probe-1"],  # DynamoDBWritePolicy has no read
            ]
        },
    )

    assert outcomes == ["ok", "AccessDenied", "ok", "AccessDeniedException"]
    refused = {(call.principal, call.action, call.resource.rsplit(":", 1)[-1]) for call in iam.denied}
    bucket = stack.resources.physical["UploadBucket"]
    table = stack.resources.physical["RecordsTable"]
    assert refused == {
        ("IamProbeFunction", "s3:PutObject", f"{bucket}/elsewhere/a.txt"),
        ("IamProbeFunction", "dynamodb:GetItem", f"table/{table}"),
    }
    assert any("IamProbeFunction: s3:PutObject on" in line for line in iam.report())
    # The objects: the allowed one was written, the refused one was not.
    s3 = stack.client("s3")
    assert s3.get_object(Bucket=bucket, Key="allowed/a.txt")["Body"].read() == b"probe"
    assert "Contents" not in s3.list_objects_v2(Bucket=bucket, Prefix="elsewhere/")


def test_a_presigned_url_carries_the_signing_role_s_permissions(stack, iam):
    bucket = stack.resources.physical["UploadBucket"]
    stack.client("s3").put_object(Bucket=bucket, Key="allowed/video.mp4", Body=b"frames")
    stack.client("s3").put_object(Bucket=bucket, Key="private/video.mp4", Body=b"secret frames")

    allowed, private = stack.runtime.invoke(
        "IamProbeFunction",
        {"calls": [["presign_get", "allowed/video.mp4"], ["presign_get", "private/video.mp4"]]},
    )

    assert "X-Amz-Security-Token=" in allowed  # signed with the role's session credentials
    assert httpx.get(allowed).content == b"frames"
    refused = httpx.get(private)
    assert refused.status_code == 403 and "AccessDenied" in refused.text
    assert [call.action for call in iam.denied] == ["s3:GetObject"]


def test_the_operator_s_own_credentials_are_not_restricted(stack, iam):
    # Tests, the aws CLI and the emulator's own services sign with the process's keys, not a role's.
    table = stack.resources.physical["RecordsTable"]
    stack.client("dynamodb").get_item(TableName=table, Key={"id": {"S": "nobody"}})
    assert not iam.denied


def test_batch_and_transaction_calls_are_authorized_as_aws_authorizes_them(stack, iam):
    outcomes = stack.runtime.invoke(
        "IamProbeFunction",
        {
            "calls": [
                ["transact_put", "probe-2"],  # dynamodb:PutItem on the table: its policy allows it
                ["send_message_batch", "{}"],  # sqs:SendMessage: not in its policy
                ["invoke", "{}"],  # lambda:InvokeFunction: not in its policy
            ]
        },
    )

    assert outcomes == ["ok", "AccessDenied", "AccessDeniedException"]
    allowed = {call.action for call in iam.calls if call.principal == "IamProbeFunction"}
    assert "dynamodb:PutItem" in allowed
    assert sorted(call.action for call in iam.denied) == ["lambda:InvokeFunction", "sqs:SendMessage"]
