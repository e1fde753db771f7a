"""moto's server, with DynamoDB writes made atomic as DynamoDB makes them.

moto checks a ConditionExpression and then applies the write without a lock, so two concurrent
conditional writes can both pass. Everything the project builds on a conditional write (forward-only
statuses, the one SNS notice per job, the shared rate limiter) depends on DynamoDB's atomicity, so
DynamoDB requests are applied one at a time. Other services stay concurrent: a Lambda invoke must not
hold a lock while its handler calls DynamoDB.
"""

import threading

from moto.moto_server.threaded_moto_server import ThreadedMotoServer
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
from werkzeug.serving import make_server


class AwsEmulator(ThreadedMotoServer):
    def _server_entry(self) -> None:
        app = DomainDispatcherApplication(create_backend_app)
        dynamodb = threading.Lock()

        def serve(environ, start_response):
            if environ.get("HTTP_X_AMZ_TARGET", "").startswith("DynamoDB_"):
                with dynamodb:
                    return list(app(environ, start_response))
            return app(environ, start_response)

        self._server = make_server(
            self._ip_address, self._port, serve, True, request_handler=MotoRequestHandler
        )
        self._server_ready_event.set()
        self._server.serve_forever()
