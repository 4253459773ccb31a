"""What every endpoint shares: JSON errors without secrets, and the Host allow-list."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable

from aiohttp import web

from ..sessions import ProfileSession

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

LOOPBACK_NAMES = ("127.0.0.1", "localhost", "[::1]", "[0:0:0:0:0:0:0:1]")


def json_error(status: int, code: str, message: str, **headers: str) -> web.Response:
    """An error body botocore can copy into its exception text: it never holds a secret."""
    return web.json_response({"Code": code, "Message": message}, status=status, headers=headers)


def unavailable(session: ProfileSession, subject: str) -> web.Response:
    """503: nothing may be served now; Retry-After says when the next attempt is due."""
    retry = session.retry_after()
    return json_error(
        503,
        "CredentialsUnavailable",
        f"no valid session for {subject} yet; retry in {retry} s",
        **{"Retry-After": str(retry)},
    )


def allowed_hosts(port: int, extra: Iterable[str]) -> frozenset[str]:
    """Host header values accepted on `port`; anything else may be a DNS-rebinding page."""
    names = [*LOOPBACK_NAMES, *extra]
    hosts = {f"{name}:{port}".lower() for name in names}
    hosts.update(name.lower() for name in extra if ":" in name and not name.startswith("["))
    if port == 80:
        hosts.update(name.lower() for name in names)
    return frozenset(hosts)


Middleware = Callable[[web.Request, Handler], Awaitable[web.StreamResponse]]


def guard(hosts: frozenset[str]) -> Middleware:
    """Middleware: Host allow-list, then the handler; unknown paths and methods as JSON."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.headers.get("Host", "").lower() not in hosts:
            return json_error(403, "InvalidHost", "Host header is not an allowed loopback name")
        if not request.raw_path.startswith("/"):
            # `http://other.host/...` (proxy form) or `*` would bypass the Host allow-list.
            return json_error(400, "InvalidRequestTarget", "expected a path such as /health")
        try:
            return await handler(request)
        except web.HTTPMethodNotAllowed as exc:
            allow = ", ".join(sorted(exc.allowed_methods))
            return json_error(405, "MethodNotAllowed", f"use {allow}", Allow=allow)
        except web.HTTPNotFound:
            return json_error(404, "NotFound", "no such path")

    return middleware
