"""``export fhir --to URL``: send exported NDJSON files to a FHIR server as transaction Bundles.

Each entry is a ``PUT Type/id``: the ids are deterministic, so sending the same export twice (or after
a failure half way) updates the same resources and creates nothing twice. Files go in the order of
:data:`~medbatch.interop.fhir.bulk.TYPES` (Device first, Provenance last), so every literal reference
points at a resource already sent or in the same Bundle. Lines are read and sent in Bundles of
``per_bundle`` entries: memory stays flat. Plain ``urllib`` (no extra dependency); a bearer token, if
any, comes from settings, never from the command line.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from medbatch.errors import FhirServerRefused, FhirServerUnavailable
from medbatch.interop.fhir.bulk import TYPES

FHIR_JSON = "application/fhir+json"


def bundles(out_dir: Path, per_bundle: int) -> Iterator[list[dict[str, Any]]]:
    """Transaction entries from the export's NDJSON files, ``per_bundle`` at a time, in type order."""
    entries: list[dict[str, Any]] = []
    for rtype in TYPES:
        path = Path(out_dir) / f"{rtype}.ndjson"
        if rtype == "OperationOutcome" or not path.exists():
            continue
        with path.open(encoding="utf-8") as fh:
            for line in fh:
                resource = json.loads(line)
                url = f"{resource['resourceType']}/{resource['id']}"
                entries.append({"fullUrl": url, "resource": resource, "request": {"method": "PUT", "url": url}})
                if len(entries) >= per_bundle:
                    yield entries
                    entries = []
    if entries:
        yield entries


def send(out_dir: Path, url: str, *, token: str | None, timeout_s: float, per_bundle: int = 500) -> dict[str, int]:
    """POST every resource of the export to the FHIR server at ``url`` (its base). Returns the counts.

    Raises:
        FhirServerUnavailable: unreachable, timed out, or 5xx/429 (what was sent stays sent; send again).
        FhirServerRefused: any other non-2xx answer, with the server's status and reason.
    """
    headers = {"Content-Type": FHIR_JSON, "Accept": FHIR_JSON}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    sent = {"bundles": 0, "entries": 0}
    for entries in bundles(out_dir, per_bundle):
        body = json.dumps({"resourceType": "Bundle", "type": "transaction", "entry": entries}).encode("utf-8")
        request = urllib.request.Request(url.rstrip("/"), data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=timeout_s) as response:  # noqa: S310 - the operator's URL
                answer = json.loads(response.read() or b"{}")
        except urllib.error.HTTPError as exc:
            reason = _reason(exc)
            if exc.code >= 500 or exc.code == 429:
                raise FhirServerUnavailable(f"FHIR server answered {exc.code}: {reason}") from None
            raise FhirServerRefused(f"FHIR server refused the transaction ({exc.code}): {reason}") from None
        except (urllib.error.URLError, TimeoutError, OSError) as exc:
            why = getattr(exc, "reason", None) or exc
            raise FhirServerUnavailable(f"FHIR server unreachable: {why}") from None
        if answer.get("resourceType") != "Bundle" or len(answer.get("entry") or []) != len(entries):
            raise FhirServerRefused("FHIR server did not answer with a transaction-response for every entry")
        sent["bundles"] += 1
        sent["entries"] += len(entries)
    return sent


def _reason(exc: urllib.error.HTTPError) -> str:
    """The first OperationOutcome diagnostics of an error answer, else its HTTP reason (one line, 300 chars)."""
    try:
        outcome = json.loads(exc.read() or b"{}")
        issue = (outcome.get("issue") or [{}])[0]
        text = issue.get("diagnostics") or (issue.get("details") or {}).get("text") or exc.reason
    except (ValueError, AttributeError):
        text = exc.reason
    return " ".join(str(text).split())[:300]
