"""The upstream's completion callbacks: a route of its own, deployed only with callbacks on."""

from aws_lambda_powertools import Logger
from aws_lambda_powertools.event_handler import APIGatewayRestResolver

from xjobs.api import register_error_handlers
from xjobs.callbacks import router

logger = Logger()
app = APIGatewayRestResolver()
app.include_router(router)
register_error_handlers(app)


@logger.inject_lambda_context
def lambda_handler(event, context):
    return app.resolve(event, context)
