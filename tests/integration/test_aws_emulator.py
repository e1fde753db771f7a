"""The AWS emulator's request counts and DynamoDB request units (what bench/cost.py prices), over real
HTTP with boto3, as the stack's functions call it."""

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from local.aws_emulator import OBSERVER, AwsEmulator

REGION = "us-east-1"


@pytest.fixture(scope="module")
def emulator():
    server = AwsEmulator(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    yield server
    server.stop()


def client(emulator: AwsEmulator, service: str, config: Config | None = None):
    host, port = emulator.get_host_and_port()
    session = boto3.session.Session(aws_access_key_id="testing", aws_secret_access_key="testing")
    return session.client(service, region_name=REGION, endpoint_url=f"http://{host}:{port}", config=config)


def counted(emulator: AwsEmulator, action):
    """The change in the emulator's counts while `action` runs."""
    before = emulator.counts()
    action()
    after = emulator.counts()
    return {key: n - before.get(key, 0) for key, n in after.items() if n != before.get(key, 0)}


@pytest.fixture(scope="module")
def table(emulator):
    dynamodb = client(emulator, "dynamodb")
    dynamodb.create_table(
        TableName="jobs",
        BillingMode="PAY_PER_REQUEST",
        AttributeDefinitions=[
            {"AttributeName": "id", "AttributeType": "S"},
            {"AttributeName": "tenant", "AttributeType": "S"},
        ],
        KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
        GlobalSecondaryIndexes=[
            {
                "IndexName": "by-tenant",
                "KeySchema": [{"AttributeName": "tenant", "KeyType": "HASH"}],
                "Projection": {"ProjectionType": "ALL"},
            }
        ],
    )
    return dynamodb


def test_a_write_costs_one_unit_per_kilobyte_and_as_much_again_for_an_index_it_is_in(emulator, table):
    big = {"id": {"S": "a"}, "tenant": {"S": "t"}, "body": {"S": "x" * 1500}}  # 1.5 KB: 2 units
    assert counted(emulator, lambda: table.put_item(TableName="jobs", Item=big)) == {
        "dynamodb:PutItem": 1,
        "dynamodb:WriteRequestUnits": 4,  # 2 for the table, 2 for the by-tenant index
    }
    small = {"id": {"S": "b"}, "body": {"S": "y"}}  # no tenant: not in the index
    assert (
        counted(emulator, lambda: table.put_item(TableName="jobs", Item=small))["dynamodb:WriteRequestUnits"]
        == 1
    )


def test_a_failed_conditional_write_costs_the_item_size_but_no_index_write(emulator, table):
    def update():
        with pytest.raises(ClientError):
            table.update_item(
                TableName="jobs",
                Key={"id": {"S": "a"}},
                UpdateExpression="SET body = :b",
                ConditionExpression="attribute_not_exists(id)",
                ExpressionAttributeValues={":b": {"S": "z"}},
            )

    assert counted(emulator, update) == {"dynamodb:UpdateItem": 1, "dynamodb:WriteRequestUnits": 2}


def test_reads_cost_one_unit_per_4_kilobytes_halved_unless_consistent(emulator, table):
    def reads():
        table.get_item(TableName="jobs", Key={"id": {"S": "a"}}, ConsistentRead=True)
        table.get_item(TableName="jobs", Key={"id": {"S": "a"}})
        table.get_item(TableName="jobs", Key={"id": {"S": "missing"}}, ConsistentRead=True)

    assert counted(emulator, reads) == {"dynamodb:GetItem": 3, "dynamodb:ReadRequestUnits": 2.5}


def test_requests_of_every_protocol_are_counted_by_service_and_action(emulator):
    sns, s3, sqs = client(emulator, "sns"), client(emulator, "s3"), client(emulator, "sqs")
    topic = sns.create_topic(Name="notices")["TopicArn"]
    s3.create_bucket(Bucket="data")
    queue = sqs.create_queue(QueueName="work")["QueueUrl"]

    def work():
        sns.publish(TopicArn=topic, Message="done")
        s3.put_object(Bucket="data", Key="videos/a.mp4", Body=b"0" * 100)
        s3.get_object(Bucket="data", Key="videos/a.mp4")["Body"].read()
        sqs.send_message(QueueUrl=queue, MessageBody="job")

    assert counted(emulator, work) == {
        "sns:Publish": 1,
        "s3:PutObject": 1,
        "s3:GetObject": 1,
        "sqs:SendMessage": 1,
    }


def test_an_observers_requests_are_counted_apart(emulator, table):
    watcher = client(emulator, "dynamodb", Config(user_agent_extra=OBSERVER))
    before = emulator.observer_counts().get("dynamodb:GetItem", 0)
    assert counted(emulator, lambda: watcher.get_item(TableName="jobs", Key={"id": {"S": "a"}})) == {}
    assert emulator.observer_counts()["dynamodb:GetItem"] == before + 1


def test_a_cancelled_transaction_leaves_every_item_as_it_was(emulator, table):
    table.put_item(TableName="jobs", Item={"id": {"S": "kept"}, "tenant": {"S": "t"}, "n": {"N": "1"}})
    with pytest.raises(ClientError) as cancelled:
        table.transact_write_items(
            TransactItems=[
                {"Put": {"TableName": "jobs", "Item": {"id": {"S": "new"}, "tenant": {"S": "t"}}}},
                {
                    "Update": {
                        "TableName": "jobs",
                        "Key": {"id": {"S": "kept"}},
                        "UpdateExpression": "SET n = :two",
                        "ExpressionAttributeValues": {":two": {"N": "2"}},
                    }
                },
                {"Delete": {"TableName": "jobs", "Key": {"id": {"S": "kept-too"}}}},
                {
                    "ConditionCheck": {
                        "TableName": "jobs",
                        "Key": {"id": {"S": "missing"}},
                        "ConditionExpression": "attribute_exists(id)",
                    }
                },
            ]
        )
    assert cancelled.value.response["Error"]["Code"] == "TransactionCanceledException"
    assert "Item" not in table.get_item(TableName="jobs", Key={"id": {"S": "new"}})
    assert table.get_item(TableName="jobs", Key={"id": {"S": "kept"}})["Item"]["n"] == {"N": "1"}

    table.transact_write_items(
        TransactItems=[
            {"Put": {"TableName": "jobs", "Item": {"id": {"S": "new"}, "tenant": {"S": "t"}}}},
            {"Delete": {"TableName": "jobs", "Key": {"id": {"S": "kept"}}}},
        ]
    )
    assert "Item" in table.get_item(TableName="jobs", Key={"id": {"S": "new"}})
    assert "Item" not in table.get_item(TableName="jobs", Key={"id": {"S": "kept"}})
    by_tenant = table.query(
        TableName="jobs",
        IndexName="by-tenant",
        KeyConditionExpression="tenant = :t",
        ExpressionAttributeValues={":t": {"S": "t"}},
    )["Items"]
    assert {item["id"]["S"] for item in by_tenant} >= {"new"} and "kept" not in {
        item["id"]["S"] for item in by_tenant
    }
