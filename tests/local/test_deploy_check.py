"""The deploy check (`make lint`) lints what CloudFormation would receive: the SAM-translated template."""

from local import deploy_check
from local.cloudformation import TEMPLATE


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
