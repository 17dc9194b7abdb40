"""What the logs may say about callers: secrets replaced, phone numbers and emails masked.

A safety net under every `telephony.*` and `tools.*` logger, because a log line
travels further than the call (aggregators, support tickets): code should not
log secrets in the first place, and this catches the ones it does.
"""

from __future__ import annotations

import logging
import re
from urllib.parse import unquote, urlsplit

from ..settings import Settings

__all__ = ["mask_phone", "LogRedactor", "REDACTOR", "install_log_redaction"]


def mask_phone(number: str | None) -> str:
    """+15551230101 -> +1555***0101: enough to tell calls apart in a log, not to dial.

    Non-numbers (client:alice, sip:bob@example.com, anonymous) keep only their
    scheme or a hint of their length.
    """
    if not number:
        return "(none)"
    if re.fullmatch(r"\+?\d{7,}", number):
        return f"{number[:5]}***{number[-4:]}"
    if re.fullmatch(r"\+?\d{1,6}", number):
        return number[:2] + "***"
    scheme, sep, _rest = number.partition(":")
    if sep and scheme.isalpha():
        return f"{scheme}:***"
    return "***"


_E164_RE = re.compile(r"\+\d{7,15}(?!\d)")  # sids never contain '+'; numbers always do
_EMAIL_RE = re.compile(r"(?<![\w.%+-])([A-Za-z0-9])[A-Za-z0-9._%+-]*@([A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+)")
# name='value' / name="value" / "name": "value" for arguments that are secrets
# (`verification` is a postcode or email the caller proves ownership with).
_SENSITIVE_RE = re.compile(r"""(\b(?:verification|token|auth_token|api_key)\b['"]?\s*[=:]\s*)(['"])(?:(?!\2).)*\2""")


class LogRedactor(logging.Filter):
    """Rewrites a record's message before any handler sees it.

    Known secret values are replaced by `[redacted]` wherever they appear
    (messages and tracebacks); phone numbers and email addresses are masked
    when `mask_phones` is on. It is a safety net: code should not log secrets
    in the first place.
    """

    def __init__(self) -> None:
        super().__init__("telephony-redactor")
        self.secrets: set[str] = set()
        self.mask_phones = True

    def add_secret(self, value: str | None) -> None:
        if value and len(value) >= 8:  # shorter values would shred ordinary words
            self.secrets.add(value)

    def redact(self, text: str) -> str:
        for secret in self.secrets:
            if secret in text:
                text = text.replace(secret, "[redacted]")
        text = _SENSITIVE_RE.sub(lambda m: f"{m.group(1)}{m.group(2)}***{m.group(2)}", text)
        if self.mask_phones:
            text = _E164_RE.sub(lambda m: mask_phone(m.group(0)), text)
            text = _EMAIL_RE.sub(lambda m: f"{m.group(1)}***@{m.group(2)}", text)
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a bad format string: leave it to the handler to report
            return True
        clean = self.redact(message)
        if clean != message:
            record.msg, record.args = clean, ()
        if record.exc_info and not record.exc_text:
            text = logging.Formatter().formatException(record.exc_info)
            clean = self.redact(text)
            if clean != text:
                record.exc_text = clean
        return True


#: The process's one redactor, shared by every app instance (tests run several).
REDACTOR = LogRedactor()
_REDACTED_LOGGERS = ("telephony", "tools", "uvicorn.error")


def install_log_redaction(settings: Settings) -> LogRedactor:
    """Attach `REDACTOR` to our loggers and teach it this configuration's secrets.

    Logger filters only see records logged on that very logger, so it goes on
    every existing `telephony.*` and `tools.*` logger (all modules are imported
    by the time the app starts).
    """
    REDACTOR.add_secret(settings.gemini_api_key)
    REDACTOR.add_secret(settings.twilio_auth_token)
    REDACTOR.add_secret(settings.stream_token_secret)
    REDACTOR.add_secret(settings.calls_api_token)
    for url in (settings.redis_url, settings.database_url):  # the password, whole or alone, encoded or not
        if url:
            password = urlsplit(url).password
            for secret in (url, password, password and unquote(password)):
                REDACTOR.add_secret(secret)
    REDACTOR.mask_phones = settings.mask_phone_numbers
    names = [n for n in list(logging.root.manager.loggerDict)
             if any(n == p or n.startswith(p + ".") for p in _REDACTED_LOGGERS)]
    for name in {*names, *_REDACTED_LOGGERS}:
        logger = logging.getLogger(name)
        if REDACTOR not in logger.filters:
            logger.addFilter(REDACTOR)
    return REDACTOR
