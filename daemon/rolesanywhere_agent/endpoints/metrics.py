"""`GET /metrics` in the Prometheus text format, and the middleware that counts requests."""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web

from ..metrics import CONTENT_TYPE, AgentMetrics
from .common import Handler, Middleware
from .fallback import Unserved

PATH = "/metrics"
UNMATCHED = "unmatched"  # one label value for every unknown path, so scanners add no series

RequestObserver = Callable[[str, int], None]


class MetricsEndpoint:
    def __init__(self, metrics: AgentMetrics) -> None:
        self._metrics = metrics

    def routes(self) -> list[web.RouteDef]:
        return [web.get(PATH, self.metrics, allow_head=False)]

    async def metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=self._metrics.render(), headers={"Content-Type": CONTENT_TYPE})


def counting(observe: RequestObserver) -> Middleware:
    """Middleware, outermost: report each request's route template and final status."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        status = 500
        try:
            response = await handler(request)
            status = response.status
            return response
        except web.HTTPException as exc:
            status = exc.status
            raise
        finally:
            observe(_endpoint(request), status)

    return middleware


def _endpoint(request: web.Request) -> str:
    # The route template (/v1/credentials/{profile}), never the path a client typed.
    resource = request.match_info.route.resource
    if resource is None or isinstance(resource, Unserved):
        return UNMATCHED
    return resource.canonical
