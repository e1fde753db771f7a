"""Each function's role allows the DynamoDB actions its code uses on each table, and nothing else: a call
it never makes is refused by the local stack's IAM (local/iam.py) as AWS refuses it."""

import boto3
import pytest
from botocore.exceptions import ClientError

from local.iam import Call


def as_function(stack, function: str):
    """A DynamoDB client that signs with the function's role credentials, as the function itself does."""
    credentials = stack.role_credentials[function]
    return boto3.client(
        "dynamodb",
        endpoint_url=stack.aws_endpoint,
        region_name=stack.session.region_name,
        aws_access_key_id=credentials.access_key,
        aws_secret_access_key=credentials.secret_key,
        aws_session_token=credentials.token,
    )


@pytest.fixture
def refused(stack):
    """The calls the test expects refused; taken out of the session's record of refusals after it."""
    expected: list[Call] = []
    yield expected
    for call in expected:
        assert stack.iam.denied.pop(call, 0) > 0, f"not refused: {call}"


def table_arn(stack, logical_id: str) -> str:
    return stack.iam.table_arn(stack.resources.physical[logical_id])


def request(action: str, table: str) -> tuple[str, dict]:
    """The client method and arguments of a call of ``action`` on ``table``."""
    key = {"id": {"S": "job_x"}}
    return {
        "Scan": ("scan", {"TableName": table}),
        "GetItem": ("get_item", {"TableName": table, "Key": key}),
        "DeleteItem": ("delete_item", {"TableName": table, "Key": key}),
        "PutItem": ("put_item", {"TableName": table, "Item": {"batch_id": {"S": "b"}, "line": {"N": "0"}}}),
        "BatchWriteItem": ("batch_write_item", {"RequestItems": {table: [{"DeleteRequest": {"Key": key}}]}}),
    }[action]


@pytest.mark.parametrize(
    ("function", "table", "action"),
    [
        # The API reads, writes and queries jobs through its index; it never scans or batch-writes them.
        ("ApiFunction", "JobsTable", "Scan"),
        ("ApiFunction", "JobsTable", "BatchWriteItem"),
        # Poll reads and updates its job: no scan, no delete.
        ("PollFunction", "JobsTable", "Scan"),
        ("PollFunction", "JobsTable", "DeleteItem"),
        # Park only stores the wake token.
        ("ParkFunction", "JobsTable", "GetItem"),
        # The finalizer only queries a batch's results.
        ("BatchFinalizeFunction", "BatchItemsTable", "PutItem"),
    ],
)
def test_a_function_s_role_refuses_a_table_action_its_code_does_not_use(
    stack, refused, function, table, action
):
    method, arguments = request(action, stack.resources.physical[table])
    refused.append(Call(function, f"dynamodb:{action}", table_arn(stack, table)))

    with pytest.raises(ClientError) as denied:
        getattr(as_function(stack, function), method)(**arguments)

    assert denied.value.response["Error"]["Code"] == "AccessDeniedException"
    assert f"{function} is not authorized to perform: dynamodb:{action}" in str(denied.value)


def test_the_same_roles_allow_what_their_functions_do(stack):
    jobs = stack.resources.physical["JobsTable"]
    key = {"id": {"S": "job_nobody"}}
    assert "Item" not in as_function(stack, "PollFunction").get_item(TableName=jobs, Key=key)
    assert "Items" in as_function(stack, "ApiFunction").query(
        TableName=jobs,
        IndexName="by-tenant",
        KeyConditionExpression="tenant = :t",
        ExpressionAttributeValues={":t": {"S": "nobody"}},
    )
