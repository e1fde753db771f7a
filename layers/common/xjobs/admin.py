"""Tenants, API keys and per-tenant limits of a deployment.

    python -m xjobs.admin [--stack NAME | --state-file PATH] COMMAND ...

    tenants create [--name NAME] [--id ID]   a tenant and its first key (printed once)
    tenants list
    keys create TENANT [--name NAME]         another key (printed once): rotate by creating, then revoking
    keys list TENANT                         the tenant's keys, by prefix
    keys revoke TENANT PREFIX                the one key starting with PREFIX
    limits set TENANT [--rate R] [--burst B] [--quota N --period DAY|WEEK|MONTH]
    limits reset TENANT                      back to the stack's default usage plan
    limits show TENANT
    shares set TENANT WEIGHT                 its weight in the fair shares of the chat limit (default 1)

Where: `--stack` reads the CloudFormation stack's outputs (AWS credentials and region from the usual
environment); without it, the local stack's `.local-stack.json` (its emulator's endpoint too). Each
tenant has an API Gateway API key of its own, never handed out: the authorizer names it to API Gateway
so the tenant's usage plan applies. `limits set` moves the tenant to a usage plan of its own. `shares set`
weighs the tenant's share of the account's chat limit while other tenants have batch work waiting.
"""

import argparse
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import boto3

from .ids import new_id
from .tenants import TenantError, TenantStore

STATE_FILE = ".local-stack.json"


@dataclass
class Deployment:
    tenants_table: str
    usage_plan_id: str  # the stack's default plan: every tenant starts in it
    apigateway: object
    limits_table: str = ""  # the shared limits and the tenants' fair-share weights

    @property
    def tenants(self) -> TenantStore:
        return TenantStore(self.tenants_table)


def from_outputs(outputs: dict, apigateway) -> Deployment:
    try:
        return Deployment(
            outputs["TenantsTableName"],
            outputs["UsagePlanId"],
            apigateway,
            outputs.get("LimitsTableName", ""),
        )
    except KeyError as missing:
        raise TenantError(f"the stack has no output {missing}: is it an xjobs stack?") from None


def from_stack(name: str) -> Deployment:
    stack = boto3.client("cloudformation").describe_stacks(StackName=name)["Stacks"][0]
    outputs = {o["OutputKey"]: o["OutputValue"] for o in stack.get("Outputs", [])}
    return from_outputs(outputs, boto3.client("apigateway"))


def from_state_file(path: Path) -> Deployment:
    """The local stack: its emulator takes any credentials, and nothing here may reach real AWS."""
    state = json.loads(path.read_text())
    os.environ["AWS_ENDPOINT_URL"] = state["aws_endpoint"]
    os.environ.setdefault("AWS_DEFAULT_REGION", state["region"])
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        os.environ.setdefault(name, "testing")
    return from_outputs(state["outputs"], boto3.client("apigateway", endpoint_url=state["aws_endpoint"]))


def create_tenant(dep: Deployment, *, name: str = "", tenant_id: str | None = None) -> tuple[dict, str]:
    """A tenant in the default usage plan, with its first key. Returns the tenant and the key."""
    tenant_id = tenant_id or new_id("tenant")
    if dep.tenants.find_tenant(tenant_id):
        raise TenantError(f"tenant {tenant_id} exists already")
    usage_key = dep.apigateway.create_api_key(name=f"xjobs-tenant-{tenant_id}", enabled=True)
    dep.apigateway.create_usage_plan_key(
        usagePlanId=dep.usage_plan_id, keyId=usage_key["id"], keyType="API_KEY"
    )
    tenant = dep.tenants.create_tenant(
        name=name, tenant_id=tenant_id, usage_key_id=usage_key["id"], usage_key_value=usage_key["value"]
    )
    key, _ = dep.tenants.create_key(tenant["tenant"], name="first")
    return tenant, key


def _plans_of(dep: Deployment, tenant: dict) -> list[dict]:
    return dep.apigateway.get_usage_plans(keyId=tenant["usage_key_id"])["items"]


def show_limits(dep: Deployment, tenant_id: str) -> dict:
    tenant = dep.tenants.get_tenant(tenant_id)
    plans = _plans_of(dep, tenant)
    if not plans:
        return {"tenant": tenant_id, "usage_plan": None}
    plan = plans[0]
    return {
        "tenant": tenant_id,
        "usage_plan": plan["id"],
        "own_plan": plan["id"] != dep.usage_plan_id,
        "throttle": plan.get("throttle"),
        "quota": plan.get("quota"),
    }


def set_limits(
    dep: Deployment,
    tenant_id: str,
    *,
    rate: float | None = None,
    burst: int | None = None,
    quota: int | None = None,
    period: str = "DAY",
) -> dict:
    """The tenant's own usage plan (created on first use, on the default plan's stages) with these limits."""
    tenant = dep.tenants.get_tenant(tenant_id)
    default = dep.apigateway.get_usage_plan(usagePlanId=dep.usage_plan_id)
    throttle = dict(default.get("throttle") or {})
    if rate is not None:
        throttle["rateLimit"] = float(rate)
    if burst is not None:
        throttle["burstLimit"] = int(burst)
    limits = {"throttle": throttle} if throttle else {}
    if quota is not None:
        limits["quota"] = {"limit": int(quota), "period": period}
    own = [p for p in _plans_of(dep, tenant) if p["id"] != dep.usage_plan_id]
    # A plan's limits are replaced by making a new plan: it works alike on AWS and in the emulator.
    plan = dep.apigateway.create_usage_plan(
        name=f"xjobs-tenant-{tenant_id}", apiStages=default.get("apiStages", []), **limits
    )
    for old in own or [default]:
        dep.apigateway.delete_usage_plan_key(usagePlanId=old["id"], keyId=tenant["usage_key_id"])
    dep.apigateway.create_usage_plan_key(
        usagePlanId=plan["id"], keyId=tenant["usage_key_id"], keyType="API_KEY"
    )
    for old in own:
        _delete_plan(dep, old)
    return show_limits(dep, tenant_id)


def reset_limits(dep: Deployment, tenant_id: str) -> dict:
    tenant = dep.tenants.get_tenant(tenant_id)
    own = [p for p in _plans_of(dep, tenant) if p["id"] != dep.usage_plan_id]
    for old in own:
        dep.apigateway.delete_usage_plan_key(usagePlanId=old["id"], keyId=tenant["usage_key_id"])
        _delete_plan(dep, old)
    if own:
        dep.apigateway.create_usage_plan_key(
            usagePlanId=dep.usage_plan_id, keyId=tenant["usage_key_id"], keyType="API_KEY"
        )
    return show_limits(dep, tenant_id)


def set_share_weight(dep: Deployment, tenant_id: str, weight: float) -> dict:
    """The tenant's weight in the fair shares of the chat limit (limiter.FairShare; 1 by default)."""
    from .limiter import FairShare
    from .upstream import CHAT_SCOPE

    dep.tenants.get_tenant(tenant_id)
    if not dep.limits_table:
        raise TenantError("the stack has no output LimitsTableName: update it to this version first")
    try:
        FairShare(dep.limits_table, CHAT_SCOPE).set_weight(tenant_id, weight)
    except ValueError as exc:
        raise TenantError(str(exc)) from None
    return {"tenant": tenant_id, "share_weight": weight}


def _delete_plan(dep: Deployment, plan: dict) -> None:
    # AWS refuses to delete a plan that still has API stages.
    stages = [f"{s['apiId']}:{s['stage']}" for s in plan.get("apiStages", [])]
    if stages:
        dep.apigateway.update_usage_plan(
            usagePlanId=plan["id"],
            patchOperations=[{"op": "remove", "path": "/apiStages", "value": stage} for stage in stages],
        )
    dep.apigateway.delete_usage_plan(usagePlanId=plan["id"])


def _public(item: dict) -> dict:
    # The tenant's webhook secrets are its own, read through the API: never printed here.
    hidden = ("id", "kind", "usage_key_value")
    return {k: v for k, v in item.items() if k not in hidden and not k.startswith("webhook_secret")}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m xjobs.admin", description=__doc__.split("\n\n")[0])
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--stack", help="the CloudFormation stack (AWS)")
    where.add_argument("--state-file", type=Path, help=f"the local stack's state (default ./{STATE_FILE})")
    topics = parser.add_subparsers(dest="topic", required=True)

    tenants = topics.add_parser("tenants").add_subparsers(dest="command", required=True)
    create = tenants.add_parser("create", help="a tenant and its first key")
    create.add_argument("--name", default="")
    create.add_argument(
        "--id", dest="tenant_id", help="keep an existing tenant id (e.g. a former API key id)"
    )
    tenants.add_parser("list")

    keys = topics.add_parser("keys").add_subparsers(dest="command", required=True)
    key_create = keys.add_parser("create")
    key_create.add_argument("tenant")
    key_create.add_argument("--name", default="")
    keys.add_parser("list").add_argument("tenant")
    revoke = keys.add_parser("revoke")
    revoke.add_argument("tenant")
    revoke.add_argument("prefix", help="the key's prefix as listed (or the whole key)")

    limits = topics.add_parser("limits").add_subparsers(dest="command", required=True)
    limit_set = limits.add_parser("set")
    limit_set.add_argument("tenant")
    limit_set.add_argument("--rate", type=float, help="steady requests per second")
    limit_set.add_argument("--burst", type=int, help="burst of requests")
    limit_set.add_argument("--quota", type=int, help="requests per period")
    limit_set.add_argument("--period", choices=["DAY", "WEEK", "MONTH"], default="DAY")
    limits.add_parser("reset").add_argument("tenant")
    limits.add_parser("show").add_argument("tenant")

    shares = topics.add_parser("shares").add_subparsers(dest="command", required=True)
    share_set = shares.add_parser("set")
    share_set.add_argument("tenant")
    share_set.add_argument("weight", type=float, help="the tenant's weight (default 1; 2: twice the share)")
    return parser


def run(args: argparse.Namespace, dep: Deployment) -> dict | list:
    match args.topic, args.command:
        case "tenants", "create":
            tenant, key = create_tenant(dep, name=args.name, tenant_id=args.tenant_id)
            return {"tenant": tenant["tenant"], "name": tenant["name"], "api_key": key}
        case "tenants", "list":
            return [_public(t) | {"usage_key_id": t["usage_key_id"]} for t in dep.tenants.list_tenants()]
        case "keys", "create":
            key, item = dep.tenants.create_key(args.tenant, name=args.name)
            return {"tenant": args.tenant, "api_key": key, "prefix": item["prefix"]}
        case "keys", "list":
            return [_public(k) for k in dep.tenants.list_keys(args.tenant)]
        case "keys", "revoke":
            return _public(dep.tenants.revoke_key(args.tenant, args.prefix))
        case "limits", "set":
            return set_limits(
                dep, args.tenant, rate=args.rate, burst=args.burst, quota=args.quota, period=args.period
            )
        case "limits", "reset":
            return reset_limits(dep, args.tenant)
        case "limits", "show":
            return show_limits(dep, args.tenant)
        case "shares", "set":
            return set_share_weight(dep, args.tenant, args.weight)
    raise TenantError(f"unknown command {args.topic} {args.command}")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.stack:
            dep = from_stack(args.stack)
        else:
            path = args.state_file or Path(STATE_FILE)
            if not path.exists():
                raise TenantError(
                    f"no {path}: start the local stack (make up) or name an AWS stack with --stack"
                )
            dep = from_state_file(path)
        print(json.dumps(run(args, dep), indent=2, default=str))
    except TenantError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
