"""An OpenAI-compatible HTTP server on 127.0.0.1 for tests: chat completions, files and batches.

The real ``openai`` client talks to it over a socket, so tests exercise the SDK's own request
building, error classes and parsing. Every request that reaches the server is captured in
``.requests`` (method, path, headers, raw body, parsed JSON) so a test can prove what left the
process. Chat completions follow a script of behaviours, one per request, then ``"ok"``::

    with FakeOpenAIServer() as server:
        server.script("429", "500", "ok")
        client = OpenAI(api_key="sk-test", base_url=server.base_url, max_retries=0)

Behaviours: ``ok``, ``429`` (Retry-After: 1), ``500``, ``slow:SECONDS``, ``timeout`` (sleeps
``timeout_sleep_s``, longer than the client's timeout), ``malformed`` (200 with invalid JSON),
``refusal`` (``message.refusal`` set), ``refusal_text`` (content that refuses), ``empty``
(content ``""``), ``length`` (``finish_reason="length"``, truncated content).

Batch lines consume the same script, so ``server.script("ok", "500")`` before a batch of two
makes the second line fail: non-200 lines and ``timeout`` go to the error file.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from email.parser import BytesParser
from email.policy import HTTP
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

OK_CONTENT = (
    "## Condition\nElevated cardiovascular risk given the recorded blood pressure and smoking history.\n\n"
    "## Recommended treatment\nDiscuss smoking cessation and antihypertensive therapy; review lipids.\n\n"
    "## Follow-up\nReview in 4 weeks with repeat blood pressure and lipid panel."
)
REFUSAL = "I'm sorry, but I can't help with that request."


@dataclass
class CapturedRequest:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    json: Any = None

    def as_text(self) -> str:
        """Everything the request carried, as one string (for 'does X appear anywhere' checks)."""
        headers = "\n".join(f"{k}: {v}" for k, v in self.headers.items())
        return f"{self.method} {self.path}\n{headers}\n\n{self.body.decode('utf-8', 'replace')}"


@dataclass
class _Batch:
    id: str
    input_file_id: str
    endpoint: str
    completion_window: str
    created_at: int
    polls: int = 0
    status: str = "validating"
    output_file_id: str | None = None
    error_file_id: str | None = None
    counts: dict[str, int] = field(default_factory=lambda: {"total": 0, "completed": 0, "failed": 0})


def _tokens(text: str) -> int:
    """A rough token count (four characters a token), good enough for accounting tests."""
    return max(1, len(text) // 4)


def _error_body(status: int, message: str, code: str) -> dict[str, Any]:
    return {"error": {"message": message, "type": "fake_error", "param": None, "code": code, "status": status}}


class FakeOpenAIServer:
    """A threaded OpenAI-compatible server bound to 127.0.0.1 on a free port.

    Args:
        latency_s: fixed delay added to every chat completion (benchmarks).
        timeout_sleep_s: how long a ``timeout`` behaviour sleeps before answering.
        batch_polls_to_complete: ``GET /v1/batches/{id}`` calls before a batch is ``completed``
            (0 = completed at once; 2 = validating, in_progress, then completed).
        model: the model name echoed when a request names none.
    """

    def __init__(
        self,
        *,
        latency_s: float = 0.0,
        timeout_sleep_s: float = 3.0,
        batch_polls_to_complete: int = 2,
        model: str = "gpt-4o-mini",
    ) -> None:
        self.latency_s = latency_s
        self.timeout_sleep_s = timeout_sleep_s
        self.batch_polls_to_complete = batch_polls_to_complete
        self.model = model
        self.requests: list[CapturedRequest] = []
        self.files: dict[str, dict[str, Any]] = {}
        self.batches: dict[str, _Batch] = {}
        self._script: deque[str] = deque()
        self._lock = threading.RLock()
        self._ids = itertools.count(1)
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ lifecycle
    @property
    def base_url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}/v1"

    def start(self) -> FakeOpenAIServer:
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, name="fake-openai", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> FakeOpenAIServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ scripting
    def script(self, *behaviours: str) -> None:
        """Queue behaviours, consumed one per chat completion (or batch line); then ``ok``."""
        with self._lock:
            self._script.extend(behaviours)

    def _next_behaviour(self) -> str:
        with self._lock:
            return self._script.popleft() if self._script else "ok"

    def _new_id(self, prefix: str) -> str:
        with self._lock:
            return f"{prefix}-{next(self._ids)}"

    @property
    def chat_requests(self) -> list[CapturedRequest]:
        return [r for r in self.requests if r.path.endswith("/chat/completions")]

    # ------------------------------------------------------------------ chat completions
    def completion(self, behaviour: str, request: dict[str, Any]) -> tuple[int, dict[str, Any] | bytes, dict]:
        """The (status, body, extra headers) that ``behaviour`` answers to one chat request."""
        if behaviour == "429":
            return 429, _error_body(429, "Rate limit reached", "rate_limit_exceeded"), {"Retry-After": "1"}
        if behaviour == "500":
            return 500, _error_body(500, "The server had an error", "server_error"), {}
        if behaviour == "malformed":
            return 200, b'{"id": "chatcmpl-broken", "choices": [{"message": ', {}
        content: str | None = OK_CONTENT
        refusal, finish = None, "stop"
        if behaviour == "refusal":
            content, refusal = None, REFUSAL
        elif behaviour == "refusal_text":
            content = REFUSAL
        elif behaviour == "empty":
            content = ""
        elif behaviour == "length":
            content, finish = OK_CONTENT[: len(OK_CONTENT) // 3], "length"
        elif behaviour not in ("ok", "timeout") and not behaviour.startswith("slow:"):
            raise ValueError(f"unknown behaviour {behaviour!r}")
        prompt = json.dumps(request.get("messages", []))
        out = _tokens(content or refusal or "")
        body = {
            "id": self._new_id("chatcmpl"),
            "object": "chat.completion",
            "created": int(time.time()),
            "model": request.get("model") or self.model,
            "choices": [
                {
                    "index": 0,
                    "finish_reason": finish,
                    "message": {"role": "assistant", "content": content, "refusal": refusal},
                    "logprobs": None,
                }
            ],
            "usage": {
                "prompt_tokens": _tokens(prompt),
                "completion_tokens": out,
                "total_tokens": _tokens(prompt) + out,
            },
        }
        return 200, body, {}

    # ------------------------------------------------------------------ files and batches
    def _store_file(self, content: bytes, filename: str, purpose: str) -> dict[str, Any]:
        meta = {
            "id": self._new_id("file"),
            "object": "file",
            "bytes": len(content),
            "created_at": int(time.time()),
            "filename": filename,
            "purpose": purpose,
            "status": "processed",
        }
        self.files[meta["id"]] = {"meta": meta, "content": content}
        return meta

    def _batch_json(self, batch: _Batch) -> dict[str, Any]:
        return {
            "id": batch.id,
            "object": "batch",
            "endpoint": batch.endpoint,
            "input_file_id": batch.input_file_id,
            "completion_window": batch.completion_window,
            "created_at": batch.created_at,
            "status": batch.status,
            "output_file_id": batch.output_file_id,
            "error_file_id": batch.error_file_id,
            "request_counts": batch.counts,
        }

    def _advance(self, batch: _Batch) -> None:
        """One poll: ``in_progress`` until ``batch_polls_to_complete`` polls, then ``completed`` (lines run)."""
        if batch.status == "completed":
            return
        batch.polls += 1
        batch.status = "completed" if batch.polls >= self.batch_polls_to_complete else "in_progress"
        if batch.status == "completed":
            self._run_batch(batch)

    def _run_batch(self, batch: _Batch) -> None:
        outputs, errors = [], []
        for raw in self.files[batch.input_file_id]["content"].decode().splitlines():
            if not raw.strip():
                continue
            line = json.loads(raw)
            behaviour = self._next_behaviour()
            result: dict[str, Any] = {"id": self._new_id("batch_req"), "custom_id": line["custom_id"], "error": None}
            if behaviour == "timeout":
                result["response"] = None
                result["error"] = {"code": "request_timeout", "message": "The request timed out."}
                errors.append(result)
                continue
            status, body, _ = self.completion("ok" if behaviour.startswith("slow:") else behaviour, line["body"])
            if isinstance(body, bytes):  # malformed: the body of the line is not a completion object
                body = body.decode()
            result["response"] = {"status_code": status, "request_id": self._new_id("req"), "body": body}
            (outputs if status == 200 else errors).append(result)
        batch.counts = {"total": len(outputs) + len(errors), "completed": len(outputs), "failed": len(errors)}
        if outputs:
            content = "".join(json.dumps(r) + "\n" for r in outputs).encode()
            batch.output_file_id = self._store_file(content, f"{batch.id}_output.jsonl", "batch_output")["id"]
        if errors:
            content = "".join(json.dumps(r) + "\n" for r in errors).encode()
            batch.error_file_id = self._store_file(content, f"{batch.id}_error.jsonl", "batch_output")["id"]

    # ------------------------------------------------------------------ routing
    def handle(self, method: str, path: str, headers: dict[str, str], body: bytes):
        """Route one request; returns (status, body, extra headers, sleep before answering)."""
        parsed = None
        if headers.get("content-type", "").startswith("application/json") and body:
            try:
                parsed = json.loads(body)
            except ValueError:
                parsed = None
        elif headers.get("content-type", "").startswith("multipart/form-data"):
            parsed = _parse_multipart(headers["content-type"], body)
        with self._lock:
            self.requests.append(CapturedRequest(method, path, headers, body, parsed))
        path = path.split("?", 1)[0].rstrip("/")
        parts = path.split("/")
        if method == "POST" and path == "/v1/chat/completions":
            behaviour = self._next_behaviour()
            delay = self.latency_s
            if behaviour.startswith("slow:"):
                delay += float(behaviour.split(":", 1)[1])
            elif behaviour == "timeout":
                delay += self.timeout_sleep_s
            status, out, extra = self.completion(behaviour, parsed or {})
            return status, out, extra, delay
        if method == "POST" and path == "/v1/files":
            upload = (parsed or {}).get("file") or {}
            meta = self._store_file(upload.get("content", b""), upload.get("filename") or "upload", parsed["purpose"])
            return 200, meta, {}, 0.0
        if method == "POST" and path == "/v1/batches":
            if parsed.get("input_file_id") not in self.files:
                return 404, _error_body(404, "No such file", "file_not_found"), {}, 0.0
            batch = _Batch(
                id=self._new_id("batch"),
                input_file_id=parsed["input_file_id"],
                endpoint=parsed["endpoint"],
                completion_window=parsed["completion_window"],
                created_at=int(time.time()),
            )
            lines = self.files[batch.input_file_id]["content"].decode().splitlines()
            batch.counts["total"] = sum(1 for line in lines if line.strip())
            with self._lock:
                self.batches[batch.id] = batch
                if self.batch_polls_to_complete <= 0:
                    self._advance(batch)
            return 200, self._batch_json(batch), {}, 0.0
        if method == "GET" and len(parts) == 4 and parts[2] == "batches" and parts[3] in self.batches:
            batch = self.batches[parts[3]]
            with self._lock:
                self._advance(batch)
            return 200, self._batch_json(batch), {}, 0.0
        if method == "GET" and len(parts) == 5 and parts[2] == "files" and parts[4] == "content":
            if parts[3] in self.files:
                return 200, self.files[parts[3]]["content"], {"Content-Type": "application/octet-stream"}, 0.0
        return 404, _error_body(404, f"No route for {method} {path}", "not_found"), {}, 0.0


def _parse_multipart(content_type: str, body: bytes) -> dict[str, Any]:
    """Form fields of a multipart body: plain fields as str, file fields as {filename, content}."""
    message = BytesParser(policy=HTTP).parsebytes(f"Content-Type: {content_type}\r\n\r\n".encode() + body)
    fields: dict[str, Any] = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        data = part.get_payload(decode=True) or b""
        filename = part.get_filename()
        fields[name] = {"filename": filename, "content": data} if filename else data.decode()
    return fields


def _handler_for(server: FakeOpenAIServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _serve(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            headers = {k.lower(): v for k, v in self.headers.items()}
            status, out, extra, delay = server.handle(self.command, self.path, headers, body)
            if delay:
                time.sleep(delay)
            payload = out if isinstance(out, bytes) else json.dumps(out).encode()
            try:
                self.send_response(status)
                self.send_header("Content-Type", extra.pop("Content-Type", "application/json"))
                for key, value in extra.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)
            except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout behaviour)
                self.close_connection = True

        do_GET = do_POST = _serve

        def log_message(self, format: str, *args: Any) -> None:  # keep test output quiet
            pass

    return Handler
