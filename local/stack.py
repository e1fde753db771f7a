"""The local stack: template.yaml running on one machine, with no Docker and no AWS account.

    python -m local.stack          # what `make up` runs: start everything, print how to reach it

Starts moto's server (the AWS emulator), creates the template's resources in it, runs the template's
functions in this process (local/runtime.py), polls their SQS event sources and delivers their S3
notifications (local/event_sources.py), serves the API on loopback and, unless XAI_BASE_URL and
XAI_API_KEY name a real endpoint, the xAI simulator. Everything it started is described in
.local-stack.json.

    stack = LocalStack(template=Path("tests/local/fixtures/template.yaml")).start()
    stack.runtime.stats["WorkerFunction"]   # count, errors, throttles, max_concurrency, ...
    stack.metrics.sum("JobsFinished", Status="completed")   # counted from the functions' EMF lines
    stack.stop()                            # pollers, API, emulator, simulator
"""

import dataclasses
import functools
import json
import logging
import os
import secrets
import signal
import socket
import threading
from pathlib import Path

import boto3
import httpx
from botocore.config import Config
from botocore.credentials import ReadOnlyCredentials

from . import event_sources
from .apigateway import ApiGateway
from .cloudformation import ACCOUNT, REGION, ROOT, TEMPLATE, Provisioner, parameter_names, translate
from .event_sources import EventSources
from .iam import Authorizer, Principal
from .runtime import LambdaRuntime
from .xai_simulator import SimulatorConfig, XaiSimulator

STATE_FILE = ROOT / ".local-stack.json"
STACK_NAME = "xjobs-local"
EVENT_SOURCE_CONNECTIONS = 64


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _port(env: str, default: int) -> int:
    value = os.environ.get(env)
    return int(value) if value else default


class LocalStack:
    def __init__(
        self,
        *,
        api_port: int = 0,
        aws_port: int = 0,
        xai_port: int = 0,
        parameters: dict[str, str] | None = None,
        simulator: SimulatorConfig | None = None,
        state_file: Path | None = None,
        upstream_callbacks: bool = False,
        template: Path = TEMPLATE,
    ):
        self.template = template
        self.api_port, self.aws_port, self.xai_port = api_port, aws_port, xai_port
        self.parameters = dict(parameters or {})
        self.simulator_config = simulator
        self.state_file = state_file
        self.upstream_callbacks = upstream_callbacks
        self.simulator: XaiSimulator | None = None
        self.gateways: dict[str, ApiGateway] = {}
        self.event_sources: EventSources | None = None
        self.tenant: str | None = None  # the tenant created at start, and its key
        self.api_key: str | None = None

    def start(self) -> "LocalStack":
        from .aws_emulator import AwsEmulator

        logging.getLogger("werkzeug").setLevel(logging.ERROR)
        # Never let a local run reach a real AWS account, whatever the shell has configured.
        for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN"):
            os.environ.pop(name, None)
        os.environ.update(
            AWS_ACCESS_KEY_ID="testing",
            AWS_SECRET_ACCESS_KEY="testing",
            AWS_DEFAULT_REGION=REGION,
            AWS_REGION=REGION,
        )

        declared = parameter_names(self.template)
        xai_url, xai_key = os.environ.get("XAI_BASE_URL"), os.environ.get("XAI_API_KEY")
        if "XaiBaseUrl" in declared and not (xai_url and xai_key):
            config = self.simulator_config or SimulatorConfig(api_key="sim-" + secrets.token_hex(8))
            config = dataclasses.replace(config, callbacks=self.upstream_callbacks)
            self.simulator = XaiSimulator(config, host="127.0.0.1", port=self.xai_port).start()
            xai_url, xai_key = self.simulator.base_url, config.api_key

        self.moto = AwsEmulator(ip_address="127.0.0.1", port=self.aws_port, verbose=False)
        self.moto.start()
        moto_port = self.moto.get_host_and_port()[1]
        os.environ["MOTO_PORT"] = str(moto_port)  # where moto's Step Functions interpreter calls Lambda
        self.aws_endpoint = f"http://127.0.0.1:{moto_port}"
        os.environ["AWS_ENDPOINT_URL"] = self.aws_endpoint
        httpx.post(
            f"{self.aws_endpoint}/moto-api/config",
            json={"lambda": {"use_docker": False}, "stepfunctions": {"execute_state_machine": True}},
        ).raise_for_status()
        self.session = boto3.session.Session(region_name=REGION)

        parameters = {
            "XaiBaseUrl": xai_url,
            "AllowHttpWebhooks": "true",
            "AllowLoopbackWebhooks": "true",
            "LogLevel": "WARNING",
        }
        if self.upstream_callbacks:
            # The callback URL goes into the template, so the API's port is chosen before it is served.
            self.api_port = self.api_port or _free_port()
            parameters["CallbackBaseUrl"] = f"http://127.0.0.1:{self.api_port}/prod"
        parameters = {name: value for name, value in parameters.items() if name in declared}
        parameters.update(self.parameters)
        cfn, self.parameter_values = translate(parameters, self.template)
        provisioner = Provisioner(
            cfn,
            self.parameter_values,
            self.session,
            stack_name=STACK_NAME,
            secret_values={"XaiApiKeySecret": xai_key},
        )
        self.resources = provisioner.provision()
        self.outputs = {
            name: provisioner.resolve(spec["Value"]) for name, spec in cfn.get("Outputs", {}).items()
        }

        self.runtime = LambdaRuntime(self.resources.functions)
        self.runtime.invoke_configs = self.resources.invoke_configs
        self.runtime.on_failure = functools.partial(
            event_sources.deliver_failure, self.session, self.aws_endpoint, self.runtime
        )
        self.runtime.install_environment({})
        self.iam = self._enforce_roles()
        self.runtime.patch_moto()
        event_sources.patch_moto()
        # One SQS client for every poller and batch in flight, so a pool as large as they may need.
        sqs = self.session.client(
            "sqs",
            endpoint_url=self.aws_endpoint,
            config=Config(max_pool_connections=EVENT_SOURCE_CONNECTIONS),
        )
        self.event_sources = EventSources(
            self.resources.event_source_mappings, self.runtime, sqs, self.resources.schedules
        ).start()
        for lid, api in self.resources.apis.items():
            port = self.api_port if len(self.resources.apis) == 1 else 0
            self.gateways[lid] = ApiGateway(
                api, self.runtime, self.client("apigateway"), "127.0.0.1", port
            ).start()

        if self.gateways:
            self.outputs["ApiUrl"] = self.api_url
        if "TenantsTableName" in self.outputs:
            self.tenant, self.api_key = self.create_tenant(name="local")
        self.inbox_url = self._subscribe_inbox()
        if self.state_file:
            self.state_file.write_text(json.dumps(self.info(), indent=2) + "\n")
        return self

    def _enforce_roles(self) -> Authorizer:
        """Each function, and each state machine's Lambda tasks, sign with credentials of their own role
        (STS AssumeRole in moto), and the emulator refuses what the role's policies do not allow
        (local/iam.py)."""
        sts = self.client("sts")
        authorizer = Authorizer(REGION, ACCOUNT, secret_arns=self.resources.secret_arns)
        credentials = {}
        for lid, role in self.resources.principal_roles.items():
            role_arn = self.resources.attributes[role]["Arn"]
            issued = sts.assume_role(RoleArn=role_arn, RoleSessionName=lid[:64])["Credentials"]
            credentials[lid] = ReadOnlyCredentials(
                issued["AccessKeyId"], issued["SecretAccessKey"], issued["SessionToken"]
            )
            authorizer.principals[issued["AccessKeyId"]] = Principal(lid, role, self.resources.roles[role])
        state_machines = self.resources.of_type("AWS::StepFunctions::StateMachine")
        self.runtime.use_role_credentials(credentials, {arn: lid for lid, arn in state_machines.items()})
        self.role_credentials = credentials  # function logical id -> its role's credentials
        self.moto.authorizer = authorizer
        return authorizer

    def _subscribe_inbox(self) -> str:
        """A queue subscribed to every topic, so a local user (and the tests) can read what SNS sent."""
        sqs, sns = self.client("sqs"), self.client("sns")
        url = sqs.create_queue(QueueName=f"{STACK_NAME}-inbox")["QueueUrl"]
        arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        for topic in self.resources.of_type("AWS::SNS::Topic").values():
            sns.subscribe(
                TopicArn=topic, Protocol="sqs", Endpoint=arn, Attributes={"RawMessageDelivery": "true"}
            )
        return url

    @property
    def metrics(self):
        """The CloudWatch metrics the functions emitted (EMF lines), counted: see local/runtime.py."""
        return self.runtime.metrics

    def client(self, service: str):
        return self.session.client(service, endpoint_url=self.aws_endpoint)

    @property
    def api_url(self) -> str | None:
        gateway = next(iter(self.gateways.values()), None)
        return f"{gateway.url}/{gateway.api.stage}" if gateway else None

    def admin(self):
        """The deployment as `python -m xjobs.admin` sees it (tenants, keys, limits)."""
        from xjobs import admin

        return admin.from_outputs(self.outputs, self.client("apigateway"))

    def create_tenant(self, name: str = "") -> tuple[str, str]:
        """A new tenant and its first API key, as `python -m xjobs.admin tenants create` makes them."""
        from xjobs import admin

        tenant, key = admin.create_tenant(self.admin(), name=name)
        return tenant["tenant"], key

    def info(self) -> dict:
        return {
            "api_url": self.api_url,
            "api_key": self.api_key,
            "tenant": self.tenant,
            "aws_endpoint": self.aws_endpoint,
            "region": REGION,
            "xai_base_url": self.parameter_values.get("XaiBaseUrl"),
            "xai_simulator": self.simulator is not None,
            "inbox_queue_url": self.inbox_url,
            "outputs": self.outputs,
            "tables": self.resources.of_type("AWS::DynamoDB::Table"),
            "buckets": self.resources.of_type("AWS::S3::Bucket"),
            "topics": self.resources.of_type("AWS::SNS::Topic"),
            "queues": self.resources.of_type("AWS::SQS::Queue"),
            "state_machines": self.resources.of_type("AWS::StepFunctions::StateMachine"),
            "functions": {lid: spec.name for lid, spec in self.resources.functions.items()},
        }

    def stop(self) -> None:
        if self.event_sources:
            self.event_sources.stop()
        for gateway in self.gateways.values():
            gateway.stop()
        self.runtime.stop()
        self.moto.stop()
        if self.simulator:
            self.simulator.stop()
        if self.state_file and self.state_file.exists():
            self.state_file.unlink()


def from_environment() -> LocalStack:
    """The stack as `make up` and `make demo` start it: fixed ports, overridable through the environment."""
    return LocalStack(
        api_port=_port("XJOBS_API_PORT", 3000),
        aws_port=_port("XJOBS_AWS_PORT", 5000),
        xai_port=_port("XJOBS_XAI_PORT", 8787),
        parameters=json.loads(os.environ.get("XJOBS_PARAMETERS", "{}")),
        state_file=STATE_FILE,
        upstream_callbacks=os.environ.get("XJOBS_UPSTREAM_CALLBACKS") == "1",
    )


def main() -> None:
    stack = from_environment().start()
    info = stack.info()
    print(
        f"""xjobs local stack is up.

  API:          {info["api_url"]}
  API key:      {info["api_key"]}   (tenant {info["tenant"]}; more: python -m xjobs.admin --help)
  AWS emulator: {info["aws_endpoint"]}   (region {info["region"]}, any access key)
  xAI:          {info["xai_base_url"]}{"  (simulator)" if info["xai_simulator"] else ""}
  SNS inbox:    {info["inbox_queue_url"]}

Try:
  curl -s -X POST {info["api_url"]}/v1/videos/generations -H 'Authorization: Bearer {info["api_key"]}' \\
       -H 'Content-Type: application/json' -d '{{"prompt": "a cat surfing a wave", "duration": 5}}'

Everything above is in {STATE_FILE.name}. Ctrl-C stops the stack.""",
        flush=True,
    )
    stopped = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopped.set())
    try:
        stopped.wait()
    except KeyboardInterrupt:
        pass
    finally:
        stack.stop()


if __name__ == "__main__":
    main()
