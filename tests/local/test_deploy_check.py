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
