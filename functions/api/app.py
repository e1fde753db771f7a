from aws_lambda_powertools import Logger
from aws_lambda_powertools.event_handler import APIGatewayRestResolver
from aws_lambda_powertools.logging import correlation_paths

from xjobs import batch_api, file_api
from xjobs.api import register_error_handlers, router

logger = Logger()
app = APIGatewayRestResolver()
app.include_router(router)
app.include_router(batch_api.router)
app.include_router(file_api.router)
register_error_handlers(app)


@logger.inject_lambda_context(correlation_id_path=correlation_paths.API_GATEWAY_REST)
def lambda_handler(event, context):
    return app.resolve(event, context)
