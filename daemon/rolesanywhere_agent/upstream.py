"""The HTTP client that carries CreateSession: TLS trust and proxy, per profile (§9).

Without options every profile shares one aiohttp session that reads HTTPS_PROXY and
NO_PROXY from the environment. A CA bundle, `insecure` or an explicit proxy need a
connection pool of their own, built here.
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from urllib.parse import urlsplit
from urllib.request import proxy_bypass_environment

import aiohttp

from .config import UpstreamConfig
from .errors import ConfigError

DEFAULT = UpstreamConfig()


def ssl_setting(options: UpstreamConfig) -> ssl.SSLContext | bool:
    """What aiohttp takes as `ssl=`: False skips verification, True is the system store."""
    if options.insecure:
        return False
    if options.ca_bundle is None:
        return True
    try:
        return ssl.create_default_context(cafile=str(options.ca_bundle))
    except FileNotFoundError:
        raise ConfigError(f"{options.ca_bundle}: ca_bundle file not found") from None
    except (OSError, ssl.SSLError) as exc:
        reason = getattr(exc, "strerror", None) or getattr(exc, "reason", None) or str(exc)
        raise ConfigError(
            f"{options.ca_bundle}: ca_bundle is not a PEM file of CA certificates ({reason})"
        ) from None


def explicit_proxy(
    options: UpstreamConfig, endpoint: str, environ: Mapping[str, str]
) -> str | None:
    """The configured proxy, unless NO_PROXY names the endpoint's host."""
    if options.proxy is None:
        return None
    host = urlsplit(endpoint).hostname or ""
    no_proxy = environ.get("NO_PROXY", environ.get("no_proxy"))
    if no_proxy is not None and proxy_bypass_environment(host, {"no": no_proxy}):
        return None
    return options.proxy


def client_session(
    options: UpstreamConfig,
    endpoint: str,
    environ: Mapping[str, str],
    *,
    trust_env: bool = True,
) -> aiohttp.ClientSession:
    """An aiohttp session for one profile's endpoint; call it inside the running loop.

    `trust_env` lets HTTPS_PROXY / NO_PROXY apply; `credential-process` turns it off
    unless `--with-proxy` is given, as aws_signing_helper does.
    """
    connector = aiohttp.TCPConnector(ssl=ssl_setting(options))
    proxy = explicit_proxy(options, endpoint, environ)
    return aiohttp.ClientSession(connector=connector, trust_env=trust_env, proxy=proxy)
