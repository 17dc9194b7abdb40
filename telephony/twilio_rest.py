"""Twilio's REST API client, as the bridge and the CLI use it.

`make_rest_client(settings)`: twilio's own `Client` on its asyncio HTTP client, so the
bridge can `await client.calls(sid).update_async(...)` without blocking the loop. With
`TWILIO_API_BASE_URL` (tests and simulations only) every request goes to that origin
instead of https://api.twilio.com, e.g. to `telephony.testing.TwilioStandIn`; the
request itself (path, form, Basic auth) is byte for byte what Twilio would get.
"""

from __future__ import annotations

import base64
import logging
from urllib.parse import urlsplit, urlunsplit

from twilio.http.async_http_client import AsyncTwilioHttpClient
from twilio.http.response import Response as TwilioResponse
from twilio.rest import Client

from .settings import Settings

__all__ = ["TWILIO_API", "ALREADY_ENDED", "REST_TIMEOUT_S", "make_rest_client", "close_rest_client", "is_already_ended",
           "rebase_url", "describe_error"]

log = logging.getLogger(__name__)

TWILIO_API = "https://api.twilio.com"
#: Twilio's "The requested resource ... was not found": for a call, it is already over.
ALREADY_ENDED = 20404
#: twilio's asyncio client sends requests without any timeout (aiohttp's default is
#: none when None is passed); a hung REST call must not hold a hang-up forever.
REST_TIMEOUT_S = 10.0


def rebase_url(url: str, base_url: str | None) -> str:
    """`url` with its scheme and host (and a path prefix, if `base_url` has one) taken from `base_url`."""
    if not base_url:
        return url
    base, parts = urlsplit(base_url), urlsplit(url)
    return urlunsplit((base.scheme, base.netloc, base.path.rstrip("/") + parts.path, parts.query, ""))


class _RestHttpClient(AsyncTwilioHttpClient):
    """twilio's asyncio HTTP client with a default timeout and an optional other origin.

    `request()` is the one hook every API call goes through (after the client has
    chosen its hostname, region and edge), so rewriting the URL here catches them all.
    """

    def __init__(self, base_url: str | None, timeout: float):
        super().__init__(timeout=timeout)
        self.base_url = base_url

    async def request(self, method: str, url: str, params=None, data=None, headers=None, auth=None,
                      timeout: float | None = None, allow_redirects: bool = False) -> TwilioResponse:
        if auth is not None:  # the same Basic header, without aiohttp's deprecated BasicAuth
            credentials = base64.b64encode(f"{auth[0]}:{auth[1]}".encode("utf-8")).decode("ascii")
            headers, auth = {**(headers or {}), "Authorization": f"Basic {credentials}"}, None
        return await super().request(
            method, rebase_url(url, self.base_url), params=params, data=data, headers=headers, auth=auth,
            timeout=timeout if timeout is not None else self.timeout, allow_redirects=allow_redirects,
        )


def make_rest_client(settings: Settings, timeout: float = REST_TIMEOUT_S) -> Client | None:
    """twilio's REST client on asyncio, or None without TWILIO_ACCOUNT_SID/TWILIO_AUTH_TOKEN.

    Call it inside a running event loop (the app's lifespan, `asyncio.run`): the HTTP
    session belongs to that loop. Close it with `close_rest_client`.
    """
    if not settings.has_twilio_rest:
        return None
    if settings.twilio_api_base_url:
        log.warning("Twilio REST requests go to %s, not %s (TWILIO_API_BASE_URL: tests and simulations only)",
                    settings.twilio_api_base_url, TWILIO_API)
    http = _RestHttpClient(settings.twilio_api_base_url, timeout)
    return Client(settings.twilio_account_sid, settings.twilio_auth_token, http_client=http)


async def close_rest_client(client: Client | None) -> None:
    """Close the client's HTTP session (aiohttp warns about sessions left open)."""
    if client is not None and hasattr(client.http_client, "close"):
        try:
            await client.http_client.close()
        except Exception as exc:  # closing must never break a shutdown
            log.debug("closing the Twilio REST session failed: %r", exc)


def is_already_ended(exc: BaseException) -> bool:
    """True for Twilio's 20404 (for a call: it is already over, which a hang-up may count as done)."""
    return getattr(exc, "code", None) == ALREADY_ENDED


def describe_error(exc: BaseException) -> str:
    """A REST error as one log- and terminal-friendly line (twilio's own str() adds colours)."""
    code = getattr(exc, "code", None)
    status = getattr(exc, "status", None)
    msg = getattr(exc, "msg", None) or getattr(exc, "detail", None) or getattr(exc, "title", None) or str(exc)
    if code is not None or status is not None:
        return f"Twilio answered {status} (error {code}): {msg}"
    return f"{type(exc).__name__}: {exc}"
