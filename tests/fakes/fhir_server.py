"""A tiny FHIR transaction endpoint on 127.0.0.1 for ``export fhir --to`` tests: it keeps what it is sent
(by ``Type/id``, as a server does with PUT) and answers each Bundle with a transaction-response."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class FakeFhirServer:
    def __init__(self) -> None:
        self.stored: dict[str, dict] = {}
        self.bundles: list[dict] = []
        self.headers: list[dict[str, str]] = []
        self.refuse: tuple[int, str] | None = None  # (status, diagnostics) to answer instead
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                server.headers.append(dict(self.headers))
                if server.refuse is not None:
                    status, text = server.refuse
                    outcome = {"resourceType": "OperationOutcome",
                               "issue": [{"severity": "error", "code": "invalid", "diagnostics": text}]}  # fmt: skip
                    return self._answer(status, outcome)
                server.bundles.append(body)
                entries = []
                for entry in body["entry"]:
                    assert entry["request"]["method"] == "PUT"
                    created = entry["request"]["url"] not in server.stored
                    server.stored[entry["request"]["url"]] = entry["resource"]
                    entries.append({"response": {"status": "201 Created" if created else "200 OK"}})
                self._answer(200, {"resourceType": "Bundle", "type": "transaction-response", "entry": entries})

            def _answer(self, status: int, doc: dict) -> None:
                data = json.dumps(doc).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/fhir+json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args) -> None:
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}/fhir"
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    def __enter__(self) -> FakeFhirServer:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
