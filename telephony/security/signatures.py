"""Twilio's request signatures (`X-Twilio-Signature`): which URLs it may have signed, and the check.

Twilio signs the public URL it called (plus, for webhooks, the form fields)
with an HMAC keyed by the account's auth token. The server often sees another
URL than Twilio called (TLS ends at a proxy; a tunnel rewrites the Host), so
the URL forms that count are decided here; accepting a URL form cannot help a
forger, who still needs the key.
"""

from __future__ import annotations

from typing import Iterable, Sequence
from urllib.parse import urlsplit, urlunsplit

from twilio.request_validator import RequestValidator, get_signature_algorithm

__all__ = ["TwilioSignatures", "webhook_urls", "stream_urls"]


def webhook_urls(public_url: str | None, request_url: str) -> list[str]:
    """The URLs Twilio may have signed for this webhook request.

    With PUBLIC_URL only that origin counts (the Host a proxy or tunnel passes
    on is irrelevant). Without it, the URL the server saw, plus its https form:
    TLS usually ends at a proxy, so the server sees http:// while Twilio signed
    https://. Accepting a URL form cannot help a forger, who still needs the key.
    """
    parts = urlsplit(request_url)
    path = parts.path + (f"?{parts.query}" if parts.query else "")
    if public_url:
        return [public_url.rstrip("/") + path]
    urls = [request_url]
    if parts.scheme == "http":
        urls.append(urlunsplit(("https", parts.netloc, parts.path, parts.query, "")))
    return urls


def stream_urls(public_host: str | None, host_header: str | None, path: str) -> list[str]:
    """The `wss://` URLs Twilio may have signed the upgrade for, with and without a trailing slash."""
    base = f"wss://{public_host or host_header or ''}{path.rstrip('/')}"
    return [base, base + "/"]


class _Params(dict):
    """Form fields as RequestValidator wants them: every value of a repeated name."""

    @classmethod
    def of(cls, pairs: Iterable[tuple[str, str]]) -> "_Params":
        out = cls()
        for name, value in pairs:
            out.setdefault(name, []).append(value)
        return out

    def getall(self, name: str) -> list[str]:
        return self[name]


class TwilioSignatures:
    """Checks `X-Twilio-Signature` values with one account's auth token."""

    def __init__(self, auth_token: str) -> None:
        self._validator = RequestValidator(auth_token)

    def webhook_valid(self, urls: Sequence[str], form: Sequence[tuple[str, str]], signature: str,
                      signature_settings: str | None = None) -> bool:
        """True if `signature` signs one of `urls` with these form fields (every value of a repeated name)."""
        params = _Params.of(form)
        algorithm = get_signature_algorithm(signature_settings)
        return any(self._validator.validate(url, params, signature, algorithm) for url in urls)

    def stream_valid(self, urls: Sequence[str], signature: str) -> bool:
        """True if `signature` signs one of the WebSocket upgrade's `urls` (no params)."""
        return any(self._validator.validate(url, {}, signature) for url in urls)
