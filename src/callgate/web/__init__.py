"""The ``api`` listener: REST API for approvals and access windows, ``/healthz``."""

from callgate.web.app import ApiContext, create_api_app
from callgate.web.server import ApiServer, serve_api

__all__ = ["ApiContext", "ApiServer", "create_api_app", "serve_api"]
