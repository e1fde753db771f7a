from aws_lambda_powertools.event_handler import APIGatewayRestResolver
from aws_lambda_powertools.logging import correlation_paths

from xjobs import batch_api, file_api, webhook_api
from xjobs.api import register_error_handlers, router
from xjobs.observability import logger

app = APIGatewayRestResolver()
app.include_router(router)
app.include_router(batch_api.router)
app.include_router(file_api.router)
app.include_router(webhook_api.router)
register_error_handlers(app)


@logger.inject_lambda_context(correlation_id_path=correlation_paths.API_GATEWAY_REST, clear_state=True)
def lambda_handler(event, context):
    # The authorizer names the caller's tenant (see xjobs.api.tenant_of).
    logger.append_keys(tenant=((event.get("requestContext") or {}).get("authorizer") or {}).get("tenant"))
    return app.resolve(event, context)
