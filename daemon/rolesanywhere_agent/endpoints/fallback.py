"""What every route of the loopback listener shares below the handlers: the `Expect` header
and the answer for paths and methods that no endpoint serves.

aiohttp answers an `Expect` header before any middleware runs, and its default handler quotes
the header's value into the error body; a value that is not UTF-8 then fails to encode and
the client gets a 500 (aiohttp 3.14). No endpoint here reads a request body, so any `Expect`
other than `100-continue` is refused with a JSON 417 that quotes nothing, and a catch-all
resource makes sure that unknown paths (even `*`) get this handler too.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from aiohttp import web
from yarl import URL

from .common import json_error


async def refuse_expect(request: web.Request) -> web.StreamResponse | None:
    """None lets the handler answer; there is no body to wait for, so no `100 Continue`."""
    if request.headers.get("Expect", "").lower() == "100-continue":
        return None
    return json_error(417, "ExpectationFailed", "only Expect: 100-continue is understood")


def guarded(routes: Iterable[web.RouteDef]) -> list[web.RouteDef]:
    """`routes`, each with `refuse_expect` instead of aiohttp's default Expect handler."""
    return [
        web.RouteDef(
            route.method, route.path, route.handler,
            {**route.kwargs, "expect_handler": refuse_expect},
        )
        for route in routes
    ]


def add_fallback(router: web.UrlDispatcher) -> None:
    """Register, last, the resource that answers whatever no endpoint serves."""
    router.register_resource(Unserved())


class Unserved(web.AbstractResource):
    """Matches every request target, even `*` and other paths no route pattern can match.

    The router tries the resources of `/` last for every path, so registered last this one
    sees exactly the requests that nothing else took.
    """

    def __init__(self) -> None:
        super().__init__()
        self._route = web.ResourceRoute("*", self.answer, self, expect_handler=refuse_expect)

    @property
    def canonical(self) -> str:
        return "/"

    def url_for(self, **kwargs: str) -> URL:
        return URL("/")

    async def resolve(self, request: web.Request) -> tuple[web.UrlMappingMatchInfo, set[str]]:
        return web.UrlMappingMatchInfo({}, self._route), set()

    def add_prefix(self, prefix: str) -> None:
        raise NotImplementedError("the fallback belongs to the top-level application")

    def get_info(self) -> dict[str, str]:
        return {"path": "*"}

    def raw_match(self, path: str) -> bool:
        return False  # never merged with a resource added later for some path

    def __len__(self) -> int:
        return 1

    def __iter__(self) -> Iterator[web.AbstractRoute]:
        return iter([self._route])

    async def answer(self, request: web.Request) -> web.Response:
        """404 for an unknown path; 405 with `Allow` for a known path and another method."""
        allowed: set[str] = set()
        for resource in request.app.router.resources():
            if resource is not self:
                _, methods = await resource.resolve(request)
                allowed |= methods
        if allowed:
            allow = ", ".join(sorted(allowed))
            return json_error(405, "MethodNotAllowed", f"use {allow}", Allow=allow)
        return json_error(404, "NotFound", "no such path")
