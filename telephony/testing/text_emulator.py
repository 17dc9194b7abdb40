"""A loopback stand-in for Gemini's `generateContent` REST method, for the scenario judge.

The unmodified google-genai SDK reaches it with
``genai.Client(api_key=..., http_options=types.HttpOptions(base_url=emulator.url))``
over TLS, trusted through the same SSL_CERT_FILE as the `LiveEmulator` whose
certificate it shares. It answers ``POST /{version}/models/{model}:generateContent``
the way the service answers a request with ``responseMimeType: application/json``
and a ``responseSchema``: one candidate whose text is the JSON object `answer`
returns, and ``usageMetadata``.

`keyword_judge` is the default `answer`: it plays a judge that passes a criterion
when every phrase the criterion quotes ("...") appears in the conversation it was
shown, so a test can make one criterion pass and another fail on purpose.
"""

from __future__ import annotations

import json
import logging
import re
import ssl
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable

__all__ = ["TextModelEmulator", "keyword_judge"]

log = logging.getLogger(__name__)

_PATH = re.compile(r"/v1[a-z0-9]*/models/([^/:]+):generateContent$")


def keyword_judge(request: dict) -> dict:
    """Verdicts for the criteria listed in the prompt (see scenario_live.judge_prompt)."""
    text = "\n".join(
        part.get("text", "") for content in request.get("contents", []) for part in content.get("parts", [])
    )
    criteria_match = re.search(r"CRITERIA \(JSON\):\s*(\[.*?\])\s*\n", text, re.S)
    conversation = text.split("CONVERSATION:", 1)[-1].lower()
    criteria = json.loads(criteria_match.group(1)) if criteria_match else []
    verdicts = []
    for number, criterion in enumerate(criteria, 1):
        phrases = re.findall(r'"([^"]+)"', criterion)
        missing = [p for p in phrases if p.lower() not in conversation]
        verdicts.append({
            "number": number,
            "passed": not missing,
            "reason": f"the conversation never has {missing[0]!r}" if missing else "the conversation shows it",
        })
    return {"verdicts": verdicts}


class TextModelEmulator:
    """``generateContent`` on a loopback TLS port, in its own thread; see the module docstring."""

    def __init__(self, cert_path: str, key_path: str, *, answer: Callable[[dict], dict] = keyword_judge,
                 host: str = "127.0.0.1") -> None:
        self.cert_path, self.key_path, self.host = cert_path, key_path, host
        self.answer = answer
        self.requests: list[dict] = []
        """Every request body received, with its model under ``"_model"``."""
        self.port = 0
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"https://{self.host}:{self.port}"

    def start(self) -> "TextModelEmulator":
        emulator = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                log.debug("text model emulator: " + format, *args)

            def do_POST(self) -> None:
                match = _PATH.search(self.path.split("?", 1)[0])
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length)
                if match is None:
                    return self.reply(HTTPStatus.NOT_FOUND, {"error": {"code": 404, "message": f"no method at {self.path}"}})
                if not (self.headers.get("x-goog-api-key") or self.headers.get("authorization")):
                    return self.reply(HTTPStatus.UNAUTHORIZED, {"error": {"code": 401, "message": "no API key"}})
                try:
                    request = json.loads(body)
                except ValueError:
                    return self.reply(HTTPStatus.BAD_REQUEST, {"error": {"code": 400, "message": "invalid JSON"}})
                emulator.requests.append({**request, "_model": match.group(1)})
                try:
                    answer = emulator.answer(request)
                except Exception as exc:  # a broken answer must show in the test, not hang it
                    log.exception("text model emulator: answer failed")
                    return self.reply(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": {"code": 500, "message": repr(exc)}})
                text = json.dumps(answer)
                prompt_tokens = len(body) // 4
                response_tokens = len(text) // 4
                self.reply(HTTPStatus.OK, {
                    "candidates": [{"content": {"role": "model", "parts": [{"text": text}]}, "finishReason": "STOP",
                                    "index": 0}],
                    "usageMetadata": {"promptTokenCount": prompt_tokens, "candidatesTokenCount": response_tokens,
                                      "totalTokenCount": prompt_tokens + response_tokens},
                    "modelVersion": match.group(1),
                })

            def reply(self, status: HTTPStatus, payload: dict) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json; charset=UTF-8")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        server = ThreadingHTTPServer((self.host, 0), Handler)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.cert_path, self.key_path)
        server.socket = context.wrap_socket(server.socket, server_side=True)
        server.daemon_threads = True
        self.port = server.server_address[1]
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, name="text-model-emulator", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> "TextModelEmulator":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
