"""Would CloudFormation accept the stack? `make lint` runs this.

    python -m local.deploy_check [template.yaml]

`cfn-lint template.yaml` lints the SAM source; CloudFormation receives what the SAM transform makes of
it. This does what `sam package` and `sam deploy` do to the template: the code folders become S3
locations, the SAM translator (the code CloudFormation's AWS::Serverless transform runs) turns it into
plain CloudFormation, and cfn-lint lints that. Errors in the translated template (such as E3004, a
circular dependency, which CloudFormation refuses at create time) fail the check.
"""

import json
import os
import sys
from pathlib import Path

from cfnlint.api import lint
from samtranslator.metrics.metrics import DummyMetricsPublisher, Metrics
from samtranslator.parser.parser import Parser
from samtranslator.translator.translator import Translator
from samtranslator.yaml_helper import yaml_parse

from .cloudformation import REGION, TEMPLATE

ARTIFACTS_BUCKET = "xjobs-artifacts"  # where `sam package` would upload the code; any name does


def packaged(template: Path) -> dict:
    """The SAM template as `sam package` leaves it: every local code path replaced by its S3 location
    (CodeUri and ContentUri as s3:// URIs, DefinitionUri as {Bucket, Key})."""
    sam = yaml_parse(template.read_text())
    sections = [sam.get("Globals", {}).get("Function", {})]
    sections += [resource.get("Properties", {}) for resource in sam.get("Resources", {}).values()]
    for props in sections:
        for uri in ("CodeUri", "ContentUri"):
            if isinstance(props.get(uri), str):
                props[uri] = f"s3://{ARTIFACTS_BUCKET}/{props[uri].strip('/')}.zip"
        if isinstance(props.get("DefinitionUri"), str):
            props["DefinitionUri"] = {"Bucket": ARTIFACTS_BUCKET, "Key": props["DefinitionUri"]}
    return sam


def translated(template: Path = TEMPLATE) -> dict:
    """The CloudFormation template `sam deploy` would hand to CloudFormation (parameters at defaults)."""
    os.environ.setdefault("AWS_DEFAULT_REGION", REGION)
    sam = packaged(template)
    defaults = {name: str(spec.get("Default", "")) for name, spec in sam.get("Parameters", {}).items()}
    metrics = Metrics("ServerlessTransform", DummyMetricsPublisher())
    cfn = Translator(managed_policy_map={}, sam_parser=Parser(), metrics=metrics).translate(
        sam, parameter_values=defaults
    )
    metrics.publish()
    return cfn


def errors(template: Path = TEMPLATE) -> list[str]:
    """cfn-lint's errors (rules E*) on the translated template, as `RULE resource-path: message`."""
    cfn = translated(template)
    matches = lint(json.dumps(cfn), regions=[REGION])
    return [
        f"{match.rule.id} {'/'.join(str(part) for part in match.path)}: {match.message}"
        for match in matches
        if match.rule.id.startswith("E")
    ]


def main() -> int:
    template = Path(sys.argv[1]) if len(sys.argv) > 1 else TEMPLATE
    resources = len(translated(template)["Resources"])
    found = errors(template)
    for line in found:
        print(line)
    print(
        f"{template.name}: SAM-translated to {resources} CloudFormation resources; "
        f"cfn-lint on the result: {len(found)} error(s)"
    )
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
