"""template.yaml -> resources in the AWS emulator.

The SAM template is translated by the real SAM translator (the same code `sam deploy` runs through
CloudFormation), then each resource the local stack needs is created in moto through its AWS API,
with the intrinsic functions (Ref, GetAtt, Sub, Join) resolved against the names given here.
Resources that mean nothing locally (IAM roles, log groups, layers, API Gateway deployments) are
skipped; the API itself is served by local/apigateway.py from the translated OpenAPI body. Event source
mappings are recorded, not created: local/event_sources.py polls their queues (moto's own mapping runs
inside SendMessage, one message per invocation).
"""

import io
import json
import os
import re
import secrets
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from samtranslator.parser.parser import Parser
from samtranslator.translator.translator import Translator
from samtranslator.yaml_helper import yaml_parse

ROOT = Path(__file__).resolve().parent.parent
TEMPLATE = ROOT / "template.yaml"
REGION = "us-east-1"
ACCOUNT = "123456789012"

SKIPPED_TYPES = {
    "AWS::Lambda::Permission",
    "AWS::Lambda::LayerVersion",
    "AWS::Logs::LogGroup",
    "AWS::ApiGateway::Deployment",
    "AWS::ApiGateway::Stage",
    # The bucket's TLS-only policy: the emulator is plain HTTP on loopback, so it would refuse everything.
    "AWS::S3::BucketPolicy",
    # Alarms and the dashboard read CloudWatch, which the local stack does not feed: the metrics they watch
    # are counted from the functions' EMF lines instead (LambdaRuntime.metrics). Nothing e-mails locally.
    "AWS::CloudWatch::Alarm",
    "AWS::CloudWatch::Dashboard",
    "AWS::SNS::Subscription",
    "AWS::ApiGateway::Account",
}


class TemplateError(RuntimeError):
    pass


_NO_VALUE = object()  # what {"Ref": "AWS::NoValue"} stands for until it is dropped


def parameter_names(template: Path = TEMPLATE) -> set[str]:
    """The parameters a template declares (the local stack sets only those it has)."""
    return set(yaml_parse(template.read_text()).get("Parameters") or {})


def _code_key(template: Path, uri: str) -> str:
    """A CodeUri as the local runtime reads it: relative to the repository, as SAM reads it relative to
    the template's folder."""
    key = os.path.relpath(template.parent.resolve() / uri, ROOT)
    return key + "/" if uri.endswith("/") else key


def translate(
    parameter_overrides: dict[str, str] | None = None, template: Path = TEMPLATE
) -> tuple[dict, dict]:
    """SAM -> CloudFormation. Returns the CloudFormation template and the parameter values in force."""
    os.environ.setdefault("AWS_DEFAULT_REGION", REGION)
    sam = yaml_parse(template.read_text())
    globals_function = sam.get("Globals", {}).get("Function", {})
    for props in [
        globals_function,
        *(resource.get("Properties", {}) for resource in sam["Resources"].values()),
    ]:
        # `sam build` would upload these folders; the local runtime reads them in place instead.
        for uri in ("CodeUri", "ContentUri"):
            if isinstance(props.get(uri), str):
                props[uri] = {"Bucket": "local", "Key": _code_key(template, props[uri])}
        if isinstance(props.get("DefinitionUri"), str):
            props["Definition"] = json.loads((template.parent / props.pop("DefinitionUri")).read_text())
    parameters = {name: str(spec.get("Default", "")) for name, spec in sam.get("Parameters", {}).items()}
    unknown = set(parameter_overrides or {}) - set(parameters)
    if unknown:
        raise TemplateError(f"{template.name} has no parameter(s) {', '.join(sorted(unknown))}")
    parameters.update({k: str(v) for k, v in (parameter_overrides or {}).items()})
    cfn = Translator(managed_policy_map={}, sam_parser=Parser()).translate(
        sam, parameter_values=dict(parameters)
    )
    return cfn, parameters


@dataclass
class FunctionSpec:
    logical_id: str
    name: str
    arn: str
    code_dir: Path
    handler: str
    timeout: int
    memory: int
    environment: dict[str, str]
    reserved_concurrency: int | None = None  # ReservedConcurrentExecutions: the most environments at once


@dataclass
class Route:
    method: str
    path: str  # with {placeholders}
    function: str  # logical id
    api_key_required: bool
    authorizer: str | None = None  # name in the API's authorizers
    throttle: tuple[float, int] | None = None  # the stage's MethodSettings for this route: rate, burst


@dataclass
class Authorizer:
    """A Lambda authorizer as the OpenAPI body declares it (x-amazon-apigateway-authorizer)."""

    function: str  # logical id
    kind: str  # "request" or "token"
    identity_sources: list[str]  # e.g. ["method.request.header.Authorization"]
    ttl: int


@dataclass
class GatewayResponse:
    status: int | None
    templates: dict[str, str]
    headers: dict[str, str]


@dataclass
class ApiSpec:
    logical_id: str
    stage: str
    routes: list[Route]
    authorizers: dict[str, Authorizer] = field(default_factory=dict)
    gateway_responses: dict[str, GatewayResponse] = field(default_factory=dict)
    binary_media_types: list[str] = field(default_factory=list)
    api_key_source: str = "HEADER"  # or AUTHORIZER: the usage key is the authorizer's usageIdentifierKey


@dataclass
class Provisioned:
    """What the stack created, by logical id."""

    physical: dict[str, str] = field(default_factory=dict)  # what Ref returns
    attributes: dict[str, dict[str, str]] = field(default_factory=dict)  # GetAtt
    functions: dict[str, FunctionSpec] = field(default_factory=dict)
    apis: dict[str, ApiSpec] = field(default_factory=dict)
    api_keys: dict[str, dict[str, str]] = field(default_factory=dict)  # logical id -> {id, value}
    types: dict[str, str] = field(default_factory=dict)
    event_source_mappings: list[dict[str, Any]] = field(default_factory=list)  # resolved properties
    bucket_notifications: dict[str, dict] = field(default_factory=dict)  # bucket -> NotificationConfiguration
    roles: dict[str, list[dict]] = field(default_factory=dict)  # role logical id -> its policy statements
    principal_roles: dict[str, str] = field(default_factory=dict)  # function/state machine -> its role
    secret_arns: dict[str, str] = field(default_factory=dict)  # secret name -> ARN
    schedules: list[dict[str, Any]] = field(
        default_factory=list
    )  # {LogicalId, Arn, ScheduleExpression, Functions}
    # function logical id -> its EventInvokeConfig: {MaximumRetryAttempts, OnFailure (a destination ARN)}
    invoke_configs: dict[str, dict[str, Any]] = field(default_factory=dict)

    def of_type(self, cfn_type: str) -> dict[str, str]:
        return {lid: self.physical[lid] for lid, t in self.types.items() if t == cfn_type}


class Provisioner:
    def __init__(
        self, cfn: dict, parameters: dict[str, str], session, *, stack_name: str, secret_values: dict
    ):
        self.cfn = cfn
        self.parameters = parameters
        self.session = session
        self.stack_name = stack_name
        self.secret_values = secret_values
        self.out = Provisioned()
        self._conditions: dict[str, bool] = {}
        # A resource whose Condition is false does not exist, as in CloudFormation.
        self.resources: dict[str, dict] = {
            lid: res for lid, res in cfn["Resources"].items() if self.condition(res.get("Condition"))
        }

    # ---- names -------------------------------------------------------------------------------
    def _name(self, logical_id: str, *, lower: bool = False, max_len: int = 64) -> str:
        name = f"{self.stack_name}-{logical_id}"
        return (name.lower() if lower else name)[:max_len]

    def _plan_names(self) -> None:
        """Names and ARNs are fixed before anything is created, so references may point either way."""
        for lid, res in self.resources.items():
            kind = res["Type"]
            self.out.types[lid] = kind
            arn = f"arn:aws:{{}}:{REGION}:{ACCOUNT}:{{}}"
            given = self._given_name(res)
            if kind == "AWS::DynamoDB::Table":
                name = given or self._name(lid)
                self._set(lid, name, Arn=arn.format("dynamodb", f"table/{name}"))
            elif kind == "AWS::S3::Bucket":
                name = given or self._name(lid, lower=True, max_len=63)
                self._set(lid, name, Arn=f"arn:aws:s3:::{name}", DomainName=f"{name}.s3.amazonaws.com")
            elif kind == "AWS::SNS::Topic":
                name = given or self._name(lid)
                self._set(lid, arn.format("sns", name), TopicName=name, TopicArn=arn.format("sns", name))
            elif kind == "AWS::SQS::Queue":
                name = given or self._name(lid, max_len=75)
                if str(res.get("Properties", {}).get("FifoQueue", "")).lower() == "true" and not given:
                    name += ".fifo"
                self._set(lid, "", Arn=arn.format("sqs", name), QueueName=name)
            elif kind == "AWS::Lambda::Function":
                name = given or self._name(lid)
                self._set(lid, name, Arn=arn.format("lambda", f"function:{name}"))
            elif kind == "AWS::StepFunctions::StateMachine":
                name = given or self._name(lid, max_len=80)
                self._set(lid, arn.format("states", f"stateMachine:{name}"), Name=name)
            elif kind == "AWS::IAM::Role":
                name = self._name(lid)
                self._set(lid, name, Arn=f"arn:aws:iam::{ACCOUNT}:role/{name}")
            elif kind == "AWS::Logs::LogGroup":
                name = f"/xjobs/{self._name(lid)}"
                self._set(lid, name, Arn=arn.format("logs", f"log-group:{name}:*"))
            else:
                self._set(lid, f"{self._name(lid)}")

    NAME_PROPERTIES = (
        "TableName",
        "BucketName",
        "TopicName",
        "QueueName",
        "FunctionName",
        "StateMachineName",
    )

    def _given_name(self, resource: dict) -> str | None:
        """The name a template gives a resource (BucketName, QueueName, ...), used as it is, as
        CloudFormation uses it; it may refer only to parameters and pseudo parameters."""
        props = resource.get("Properties", {})
        given = next((props[key] for key in self.NAME_PROPERTIES if key in props), None)
        return None if given is None else str(self.resolve(given))

    def _set(self, lid: str, ref: str, **attributes: str) -> None:
        self.out.physical[lid] = ref
        self.out.attributes[lid] = attributes

    # ---- conditions ----------------------------------------------------------------------------
    def condition(self, name: str | None) -> bool:
        if name is None:
            return True
        if name not in self._conditions:
            try:
                definition = self.cfn.get("Conditions", {})[name]
            except KeyError:
                raise TemplateError(f"no condition {name}") from None
            self._conditions[name] = bool(self._evaluate(definition))
        return self._conditions[name]

    def _evaluate(self, value: Any) -> Any:
        if isinstance(value, dict) and len(value) == 1:
            ((key, arg),) = value.items()
            if key == "Condition":
                return self.condition(arg)
            if key == "Fn::Equals":
                left, right = (self._evaluate(v) for v in arg)
                return str(left) == str(right)
            if key == "Fn::Not":
                return not self._evaluate(arg[0])
            if key == "Fn::And":
                return all(self._evaluate(v) for v in arg)
            if key == "Fn::Or":
                return any(self._evaluate(v) for v in arg)
        return self.resolve(value)

    def select(self, value: Any) -> Any:
        """The value with every Fn::If decided and AWS::NoValue dropped, other intrinsics left as they are."""
        if isinstance(value, list):
            return [v for v in (self.select(v) for v in value) if v is not _NO_VALUE]
        if not isinstance(value, dict):
            return value
        if value == {"Ref": "AWS::NoValue"}:
            return _NO_VALUE
        if len(value) == 1 and "Fn::If" in value:
            name, when_true, when_false = value["Fn::If"]
            return self.select(when_true if self.condition(name) else when_false)
        return {k: v for k, v in ((k, self.select(v)) for k, v in value.items()) if v is not _NO_VALUE}

    # ---- intrinsic functions -----------------------------------------------------------------
    def resolve(self, value: Any) -> Any:
        value = self.select(value)
        if value is _NO_VALUE:
            return None
        if isinstance(value, list):
            return [self.resolve(v) for v in value]
        if not isinstance(value, dict):
            return value
        if len(value) == 1:
            ((key, arg),) = value.items()
            if key == "Ref":
                return self._ref(arg)
            if key == "Fn::GetAtt":
                lid, attr = arg if isinstance(arg, list) else arg.split(".", 1)
                return self._get_att(lid, attr)
            if key == "Fn::Sub":
                text, variables = (arg, {}) if isinstance(arg, str) else (arg[0], self.resolve(arg[1]))
                return re.sub(r"\$\{([^}]+)\}", lambda m: str(self._sub_var(m.group(1), variables)), text)
            if key == "Fn::Join":
                separator, items = arg
                return separator.join(str(v) for v in self.resolve(items))
            if key.startswith("Fn::"):
                raise TemplateError(f"the local stack does not resolve {key}")
        return {k: self.resolve(v) for k, v in value.items()}

    def _ref(self, name: str) -> str:
        pseudo = {
            "AWS::Region": REGION,
            "AWS::AccountId": ACCOUNT,
            "AWS::StackName": self.stack_name,
            "AWS::Partition": "aws",
            "AWS::URLSuffix": "amazonaws.com",
        }
        if name in pseudo:
            return pseudo[name]
        if name in self.parameters:
            return self.parameters[name]
        if name in self.out.physical:
            return self.out.physical[name]
        raise TemplateError(f"Ref to unknown name {name}")

    def _get_att(self, lid: str, attr: str) -> str:
        try:
            return self.out.attributes[lid][attr]
        except KeyError:
            raise TemplateError(f"the local stack has no value for GetAtt {lid}.{attr}") from None

    def _sub_var(self, name: str, variables: dict) -> str:
        if name in variables:
            return variables[name]
        if "." in name:
            return self._get_att(*name.split(".", 1))
        return self._ref(name)

    # ---- creation ----------------------------------------------------------------------------
    def provision(self) -> Provisioned:
        self._plan_names()
        order = [
            ("AWS::DynamoDB::Table", self._table),
            ("AWS::S3::Bucket", self._bucket),
            ("AWS::SNS::Topic", self._topic),
            ("AWS::SQS::Queue", self._queue),
            ("AWS::SecretsManager::Secret", self._secret),
            ("AWS::IAM::Role", self._role),
            ("AWS::ApiGateway::ApiKey", self._api_key),
            ("AWS::Lambda::Function", self._function),
            ("AWS::S3::Bucket", self._bucket_notification),
            ("AWS::StepFunctions::StateMachine", self._state_machine),
            ("AWS::ApiGateway::RestApi", self._rest_api),
            ("AWS::ApiGateway::UsagePlan", self._usage_plan),
            ("AWS::ApiGateway::UsagePlanKey", self._usage_plan_key),
            ("AWS::Lambda::EventSourceMapping", self._event_source_mapping),
            ("AWS::Lambda::EventInvokeConfig", self._event_invoke_config),
            ("AWS::Events::Rule", self._schedule),
        ]
        handled = {kind for kind, _ in order}
        # A queue with a dead-letter queue is created after it (its RedrivePolicy names it).
        resources = sorted(
            self.resources.items(), key=lambda item: "RedrivePolicy" in item[1].get("Properties", {})
        )
        for kind, create in order:
            for lid, res in resources:
                if res["Type"] == kind:
                    create(lid, res.get("Properties", {}))
        unknown = {r["Type"] for r in self.resources.values()} - handled - SKIPPED_TYPES
        if unknown:
            raise TemplateError(f"the local stack cannot create {', '.join(sorted(unknown))}")
        return self.out

    def _table(self, lid: str, props: dict) -> None:
        props = self.resolve(props)
        ddb = self.session.client("dynamodb")
        args = {
            "TableName": self.out.physical[lid],
            "KeySchema": props["KeySchema"],
            "AttributeDefinitions": props["AttributeDefinitions"],
            "BillingMode": props.get("BillingMode", "PAY_PER_REQUEST"),
        }
        if props.get("GlobalSecondaryIndexes"):
            args["GlobalSecondaryIndexes"] = props["GlobalSecondaryIndexes"]
        ddb.create_table(**args)
        ttl = props.get("TimeToLiveSpecification")
        if ttl:
            ddb.update_time_to_live(TableName=args["TableName"], TimeToLiveSpecification=ttl)

    def _bucket(self, lid: str, props: dict) -> None:
        s3 = self.session.client("s3")
        s3.create_bucket(Bucket=self.out.physical[lid])
        rules = self.resolve(props.get("LifecycleConfiguration", {}).get("Rules"))
        if rules:  # kept by the emulator (to be read back), not acted on: nothing expires locally
            s3.put_bucket_lifecycle_configuration(
                Bucket=self.out.physical[lid],
                LifecycleConfiguration={"Rules": [_lifecycle_rule(r) for r in rules]},
            )

    def _bucket_notification(self, lid: str, props: dict) -> None:
        """The bucket's NotificationConfiguration, set once its target functions exist. moto decides which
        notifications an object event matches; local/event_sources.py shapes the events as S3 does and
        the local runtime invokes the functions asynchronously, as S3 invokes them."""
        if not props.get("NotificationConfiguration"):
            return
        config = self.resolve(props["NotificationConfiguration"])
        self.out.bucket_notifications[lid] = config
        self.session.client("s3").put_bucket_notification_configuration(
            Bucket=self.out.physical[lid], NotificationConfiguration=_notification_api_shape(config)
        )

    def _topic(self, lid: str, props: dict) -> None:
        props = self.resolve(props)
        attributes = {"KmsMasterKeyId": props["KmsMasterKeyId"]} if "KmsMasterKeyId" in props else {}
        self.session.client("sns").create_topic(
            Name=self.out.attributes[lid]["TopicName"], Attributes=attributes
        )

    def _queue(self, lid: str, props: dict) -> None:
        props = self.resolve(props)
        attributes = {
            k: json.dumps(v) if isinstance(v, dict) else str(v)
            for k, v in props.items()
            if k not in ("Tags", "QueueName")
        }
        url = self.session.client("sqs").create_queue(
            QueueName=self.out.attributes[lid]["QueueName"], Attributes=attributes
        )["QueueUrl"]
        self.out.physical[lid] = url

    def _secret(self, lid: str, props: dict) -> None:
        if lid in self.secret_values:
            value = self.secret_values[lid]
        elif "SecretString" in props:
            value = self.resolve(props["SecretString"])
        else:
            value = secrets.token_urlsafe(36)
        arn = self.session.client("secretsmanager").create_secret(Name=self._name(lid), SecretString=value)[
            "ARN"
        ]
        self._set(lid, arn, Id=arn)
        self.out.secret_arns[self._name(lid)] = arn

    def _role(self, lid: str, props: dict) -> None:
        """The role in moto's IAM (inline policies put, managed ones named); its statements are what
        local/iam.py evaluates each of its requests against."""
        from .iam import aws_managed_documents, statements_of

        props = self.resolve(props)
        name = self.out.physical[lid]
        iam = self.session.client("iam")
        iam.create_role(
            RoleName=name, AssumeRolePolicyDocument=json.dumps(props.get("AssumeRolePolicyDocument", {}))
        )
        for policy in props.get("Policies", []):
            iam.put_role_policy(
                RoleName=name,
                PolicyName=policy["PolicyName"],
                # IAM takes a document without Version as 2008-10-17; moto takes only 2012-10-17.
                PolicyDocument=json.dumps({"Version": "2012-10-17", **policy["PolicyDocument"]}),
            )
        self.out.roles[lid] = statements_of(props, aws_managed_documents())

    def _api_key(self, lid: str, props: dict) -> None:
        key = self.session.client("apigateway").create_api_key(
            name=self._name(lid), enabled=True, value=secrets.token_urlsafe(30)
        )
        self.out.physical[lid] = key["id"]
        self.out.api_keys[lid] = {"id": key["id"], "value": key["value"]}

    def _function(self, lid: str, props: dict) -> None:
        props = self.resolve(props)
        name = self.out.physical[lid]
        code = props.get("Code", {})
        code_dir = ROOT / code.get("S3Key", "")
        if (
            code.get("S3Bucket") != "local"
            or not (code_dir / props["Handler"].split(".")[0]).with_suffix(".py").exists()
        ):
            raise TemplateError(f"{lid}: CodeUri {code_dir} holds no module for handler {props['Handler']}")
        archive = io.BytesIO()
        with zipfile.ZipFile(archive, "w") as zf:
            zf.writestr("README", "code runs in-process in the local stack")
        # The function exists in the emulator so Step Functions, S3 and SNS can invoke it by ARN.
        self.session.client("lambda").create_function(
            FunctionName=name,
            Runtime=props.get("Runtime", "python3.12"),
            Role=props["Role"],
            Handler=props["Handler"],
            Code={"ZipFile": archive.getvalue()},
            Timeout=int(props.get("Timeout", 3)),
            MemorySize=int(props.get("MemorySize", 128)),
        )
        reserved = props.get("ReservedConcurrentExecutions")
        self._note_role(lid, props["Role"])
        self.out.functions[lid] = FunctionSpec(
            logical_id=lid,
            name=name,
            arn=self.out.attributes[lid]["Arn"],
            code_dir=code_dir,
            handler=props["Handler"],
            timeout=int(props.get("Timeout", 3)),
            memory=int(props.get("MemorySize", 128)),
            environment={k: str(v) for k, v in props.get("Environment", {}).get("Variables", {}).items()},
            reserved_concurrency=None if reserved is None else int(reserved),
        )

    def _note_role(self, lid: str, role_arn: str) -> None:
        """Which of the template's roles a function or state machine runs as (none: a role from elsewhere)."""
        roles = {self.out.attributes[role]["Arn"]: role for role in self.out.roles}
        if role_arn in roles:
            self.out.principal_roles[lid] = roles[role_arn]

    def _state_machine(self, lid: str, props: dict) -> None:
        definition = self.resolve(props["DefinitionString"])
        role_arn = self.resolve(props["RoleArn"])
        self._note_role(lid, role_arn)
        substitutions = self.resolve(props.get("DefinitionSubstitutions", {}))
        for key, value in substitutions.items():
            definition = definition.replace("${" + key + "}", str(value))
        left = re.findall(r"\$\{(\w+)\}", definition)
        if left:
            raise TemplateError(f"{lid}: no substitution for {', '.join(sorted(set(left)))}")
        self.session.client("stepfunctions").create_state_machine(
            name=self.out.attributes[lid]["Name"],
            definition=definition,
            roleArn=role_arn,
            type=props.get("StateMachineType", "STANDARD"),
        )

    def _rest_api(self, lid: str, props: dict) -> None:
        body = self.select(props["Body"])
        stage_props = next(
            (
                r["Properties"]
                for r in self.resources.values()
                if r["Type"] == "AWS::ApiGateway::Stage" and r["Properties"].get("RestApiId") == {"Ref": lid}
            ),
            {},
        )
        throttles = {}
        for setting in self.resolve(stage_props.get("MethodSettings")) or []:
            if "ThrottlingRateLimit" in setting:
                # "/" + the resource path with each "/" written "~1"
                path = setting["ResourcePath"][1:].replace("~1", "/")
                throttles[(setting["HttpMethod"].upper(), path)] = (
                    float(setting["ThrottlingRateLimit"]),
                    int(setting.get("ThrottlingBurstLimit", setting["ThrottlingRateLimit"])),
                )
        definitions = body.get("securityDefinitions", {})
        authorizers = {}
        for name, definition in definitions.items():
            spec = definition.get("x-amazon-apigateway-authorizer")
            if not spec:
                continue
            target = re.search(
                r"\$\{(\w+)\.Arn\}|GetAtt.{0,6}\[\s*\"(\w+)\"", json.dumps(spec["authorizerUri"])
            )
            if not target:
                raise TemplateError(f"{lid}: authorizer {name} is not a Lambda function of the template")
            sources = spec.get("identitySource") or (
                f"method.request.header.{definition['name']}" if spec.get("type") == "token" else ""
            )
            authorizers[name] = Authorizer(
                function=target.group(1) or target.group(2),
                kind=spec.get("type", "token"),
                identity_sources=[s.strip() for s in sources.split(",") if s.strip()],
                ttl=int(spec.get("authorizerResultTtlInSeconds", 300)),
            )
        routes = []
        for path, methods in body.get("paths", {}).items():
            for method, spec in methods.items():
                uri = json.dumps(spec.get("x-amazon-apigateway-integration", {}).get("uri", ""))
                target = re.search(r"\$\{(\w+)\.Arn\}", uri)
                if not target:
                    raise TemplateError(f"{lid}: {method.upper()} {path} has no Lambda integration")
                required = any("api_key" in s for s in spec.get("security", []))
                authorizer = next((n for s in spec.get("security", []) for n in s if n in authorizers), None)
                routes.append(
                    Route(
                        method.upper(),
                        path,
                        target.group(1),
                        required,
                        authorizer,
                        throttles.get((method.upper(), path)),
                    )
                )
        responses = {
            kind: GatewayResponse(
                status=int(r["statusCode"]) if "statusCode" in r else None,
                templates=dict(r.get("responseTemplates", {})),
                headers={
                    k.split(".")[-1]: v.strip("'")
                    for k, v in r.get("responseParameters", {}).items()
                    if k.startswith("gatewayresponse.header.")
                },
            )
            for kind, r in body.get("x-amazon-apigateway-gateway-responses", {}).items()
        }
        stage = next(
            (
                r["Properties"]["StageName"]
                for r in self.resources.values()
                if r["Type"] == "AWS::ApiGateway::Stage" and r["Properties"].get("RestApiId") == {"Ref": lid}
            ),
            "prod",
        )
        self.out.apis[lid] = ApiSpec(
            lid,
            stage,
            routes,
            authorizers=authorizers,
            gateway_responses=responses,
            binary_media_types=list(body.get("x-amazon-apigateway-binary-media-types", [])),
            api_key_source=str(self.resolve(props.get("ApiKeySourceType", "HEADER"))),
        )

    def _usage_plan(self, lid: str, props: dict) -> None:
        """Created in the emulator, where local/apigateway.py reads plans and their keys as API Gateway
        meters them (so keys and plans made later with boto3 or the admin command apply at once)."""
        props = self.resolve(props)
        args: dict[str, Any] = {"name": self._name(lid)}
        throttle, quota = props.get("Throttle", {}), props.get("Quota", {})
        if throttle:
            args["throttle"] = {
                **({"rateLimit": float(throttle["RateLimit"])} if "RateLimit" in throttle else {}),
                **({"burstLimit": int(throttle["BurstLimit"])} if "BurstLimit" in throttle else {}),
            }
        if quota:
            args["quota"] = {"limit": int(quota["Limit"]), "period": quota.get("Period", "DAY")}
        args["apiStages"] = [
            {"apiId": str(s["ApiId"]), "stage": str(s["Stage"])} for s in props.get("ApiStages", [])
        ]
        plan = self.session.client("apigateway").create_usage_plan(**args)
        self.out.physical[lid] = plan["id"]

    def _usage_plan_key(self, lid: str, props: dict) -> None:
        props = self.resolve(props)
        self.session.client("apigateway").create_usage_plan_key(
            usagePlanId=props["UsagePlanId"], keyId=props["KeyId"], keyType=props.get("KeyType", "API_KEY")
        )

    def _event_source_mapping(self, lid: str, props: dict) -> None:
        # Not created in moto: its SQS mapping runs inside SendMessage. local/event_sources.py polls instead.
        self.out.event_source_mappings.append({"LogicalId": lid, **self.resolve(props)})

    def _event_invoke_config(self, lid: str, props: dict) -> None:
        """Recorded for the local runtime, which retries and delivers asynchronous invocations itself."""
        props = self.resolve(props)
        destination = props.get("DestinationConfig", {}).get("OnFailure", {}).get("Destination")
        self.out.invoke_configs[_function_of(self, props["FunctionName"])] = {
            "MaximumRetryAttempts": int(props.get("MaximumRetryAttempts", 2)),
            "OnFailure": destination,
        }

    def _schedule(self, lid: str, props: dict) -> None:
        """A scheduled EventBridge rule: local/event_sources.py fires its Lambda targets on its rate."""
        props = self.resolve(props)
        if "ScheduleExpression" not in props:
            raise TemplateError(f"{lid}: the local stack runs only scheduled EventBridge rules")
        if str(props.get("State", "ENABLED")).upper() != "ENABLED":
            return
        self.out.schedules.append(
            {
                "LogicalId": lid,
                "Arn": f"arn:aws:events:{REGION}:{ACCOUNT}:rule/{self.out.physical[lid]}",
                "ScheduleExpression": props["ScheduleExpression"],
                "Functions": [_function_of(self, target["Arn"]) for target in props.get("Targets", [])],
            }
        )


def _function_of(provisioner: "Provisioner", arn_or_name: str) -> str:
    """The logical id of a function of the stack, from its ARN or name."""
    name = str(arn_or_name).split(":function:")[-1].split(":")[0]
    for lid, spec in provisioner.out.functions.items():
        if spec.name == name:
            return lid
    raise TemplateError(f"no function of the stack is named {arn_or_name}")


def _lifecycle_rule(rule: dict) -> dict:
    """A CloudFormation lifecycle rule -> the S3 API's (the rule properties this template uses)."""
    shaped = {"ID": rule["Id"], "Status": rule["Status"], "Filter": {"Prefix": rule.get("Prefix", "")}}
    if "ExpirationInDays" in rule:
        shaped["Expiration"] = {"Days": int(rule["ExpirationInDays"])}
    if "AbortIncompleteMultipartUpload" in rule:
        days = int(rule["AbortIncompleteMultipartUpload"]["DaysAfterInitiation"])
        shaped["AbortIncompleteMultipartUpload"] = {"DaysAfterInitiation": days}
    return shaped


def _notification_api_shape(config: dict) -> dict:
    """CloudFormation's NotificationConfiguration -> the S3 API's PutBucketNotificationConfiguration."""

    def target(entry: dict, arn_key: str, api_key: str) -> dict:
        shaped = {api_key: entry[arn_key], "Events": [entry["Event"]]}
        rules = entry.get("Filter", {}).get("S3Key", {}).get("Rules")
        if rules:
            shaped["Filter"] = {
                "Key": {"FilterRules": [{"Name": r["Name"], "Value": r["Value"]} for r in rules]}
            }
        return shaped

    shaped: dict = {}
    for cfn_key, api_key, arn_key, api_arn_key in (
        ("LambdaConfigurations", "LambdaFunctionConfigurations", "Function", "LambdaFunctionArn"),
        ("QueueConfigurations", "QueueConfigurations", "Queue", "QueueArn"),
        ("TopicConfigurations", "TopicConfigurations", "Topic", "TopicArn"),
    ):
        if config.get(cfn_key):
            shaped[api_key] = [target(entry, arn_key, api_arn_key) for entry in config[cfn_key]]
    if config.get("EventBridgeConfiguration", {}).get("EventBridgeEnabled"):
        shaped["EventBridgeConfiguration"] = {}
    return shaped
