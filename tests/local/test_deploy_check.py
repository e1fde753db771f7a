"""The deploy check (`make lint`) lints what CloudFormation would receive: the SAM-translated template."""

from importlib.metadata import distribution
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from local import deploy_check
from local.cloudformation import ROOT, TEMPLATE


def test_translated_template_has_no_errors():
    assert deploy_check.errors(TEMPLATE) == []


def test_a_bucket_notification_cycle_fails_the_check(tmp_path):
    # The ingest function's environment referring back to the bucket whose notification invokes it: the
    # SAM source lints clean, CloudFormation refuses the translated stack.
    text = TEMPLATE.read_text()
    computed = 'DATA_BUCKET: !Sub "${AWS::StackName}-${AWS::AccountId}-data"'
    assert computed in text
    template = tmp_path / "template.yaml"
    template.write_text(text.replace(computed, "DATA_BUCKET: !Ref DataBucket"))

    found = deploy_check.errors(template)

    cycles = [line for line in found if line.startswith("E3004")]
    assert cycles, found
    assert any("DataBucket" in line for line in cycles)
    assert any("BatchIngestFunction" in line for line in cycles)


def _pins(path: Path) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, version = line.split("==")
            pins[canonicalize_name(name)] = version
    return pins


def test_the_layer_pins_every_package_it_ships_at_the_locked_version():
    # `sam build` installs layers/common/requirements.txt with pip: an unpinned transitive package
    # would ship whatever is newest that day. Lambda runs Python 3.12 (boto3 is in the runtime).
    lambda_python = {"python_version": "3.12", "python_full_version": "3.12.0", "extra": ""}
    layer = _pins(ROOT / "layers" / "common" / "requirements.txt")
    closure, todo = set(), ["httpx", "aws-lambda-powertools", "pydantic"]
    while todo:
        name = canonicalize_name(todo.pop())
        if name in closure:
            continue
        closure.add(name)
        for requirement in map(Requirement, distribution(name).requires or []):
            if requirement.marker is None or requirement.marker.evaluate(lambda_python):
                todo.append(requirement.name)
    assert set(layer) == closure
    assert {
        name: version for name, version in _pins(ROOT / "requirements.lock").items() if name in layer
    } == layer


def test_data_survives_the_stack_and_travels_encrypted():
    resources = deploy_check.translated(TEMPLATE)["Resources"]
    # Tenants hold their API keys' hashes and webhook secrets: a new stack must not lose them.
    for name in (
        "JobsTable",
        "BatchesTable",
        "BatchItemsTable",
        "TenantsTable",
        "FilesTable",
        "XaiApiKeySecret",
    ):
        assert resources[name]["DeletionPolicy"] == "Retain", name
        assert resources[name]["UpdateReplacePolicy"] == "Retain", name
    # A SecretString literal would be put back over the operator's key by any update of the secret.
    assert not any("SecretString" in r["Properties"] for r in resources.values() if "Secret" in r["Type"])
    bucket = resources["DataBucket"]["Properties"]
    expiring = {rule.get("Prefix"): rule for rule in bucket["LifecycleConfiguration"]["Rules"]}
    assert expiring["files/"]["ExpirationInDays"] == {"Ref": "IncomingFileRetentionDays"}
    assert expiring["batches/incoming/"]["ExpirationInDays"] == {"Ref": "IncomingFileRetentionDays"}
    assert expiring["jobs/"]["ExpirationInDays"] == {"Ref": "ResultRetentionDays"}
    [policy] = [r["Properties"] for r in resources.values() if r["Type"] == "AWS::S3::BucketPolicy"]
    [deny] = policy["PolicyDocument"]["Statement"]
    assert deny["Effect"] == "Deny" and deny["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
    assert resources["NotificationsTopic"]["Properties"]["KmsMasterKeyId"] == "alias/aws/sns"
    for queue in (r["Properties"] for r in resources.values() if r["Type"] == "AWS::SQS::Queue"):
        assert queue["SqsManagedSseEnabled"] is True


def test_webhook_secrets_are_the_tenants_and_only_the_api_and_finish_may_write_a_tenant():
    resources = deploy_check.translated(TEMPLATE)["Resources"]
    secrets = {name for name, r in resources.items() if r["Type"] == "AWS::SecretsManager::Secret"}
    assert secrets == {"XaiApiKeySecret", "CallbackSigningSecret"}  # no deployment-wide webhook key
    tenants_arn = {"Fn::GetAtt": ["TenantsTable", "Arn"]}
    access = {}
    for name, role in resources.items():
        if role["Type"] != "AWS::IAM::Role":
            continue
        policies = []
        for policy in role["Properties"].get("Policies", []):  # a conditional one: either branch
            policies += (
                [p for p in policy["Fn::If"][1:] if isinstance(p, dict)] if "Fn::If" in policy else [policy]
            )
        for policy in policies:
            for statement in policy.get("PolicyDocument", {}).get("Statement", []):
                targets = (
                    statement["Resource"]
                    if isinstance(statement["Resource"], list)
                    else [statement["Resource"]]
                )
                if tenants_arn in targets:
                    access[name] = sorted(access.get(name, []) + statement["Action"])
    assert access == {
        "AuthorizerFunctionRole": ["dynamodb:GetItem"],
        "ApiFunctionRole": ["dynamodb:GetItem", "dynamodb:UpdateItem"],  # GET and rotate
        "FinishFunctionRole": ["dynamodb:GetItem", "dynamodb:UpdateItem"],  # signs; makes a missing secret
    }
