"""FHIR Bulk Data NDJSON: one file per resource type, one resource a line, and the manifest that lists them.

Lines are written as they are made (nothing is held per resource), into ``<Type>.ndjson.part`` files that
become ``<Type>.ndjson`` only when the export finished: a crash leaves no half file under a final name.
A re-export into the same folder replaces the files, and removes those of types it no longer writes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import IO, Any

from medbatch.interop.fhir import codes

#: The files an export may write (those of an earlier export of these types are replaced or removed).
TYPES = (
    "Device",
    "Observation",
    "DiagnosticReport",
    "RiskAssessment",
    "CarePlan",
    "DocumentReference",
    "Task",
    "Provenance",
    "OperationOutcome",
)


def dumps(resource: dict[str, Any]) -> str:
    """One NDJSON line: compact, keys in the order built, UTF-8 as is (deterministic)."""
    return json.dumps(resource, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


class NdjsonWriter:
    """Appends resources to their type's file; :meth:`commit` makes the files final."""

    def __init__(self, out_dir: Path):
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.counts: dict[str, int] = {}
        self._files: dict[str, IO[str]] = {}

    def _part(self, rtype: str) -> Path:
        return self.out_dir / f"{rtype}.ndjson.part"

    def write(self, resource: dict[str, Any]) -> None:
        self.write_line(resource["resourceType"], dumps(resource))

    def write_line(self, rtype: str, line: str) -> None:
        """Append one resource already serialised by :func:`dumps`."""
        fh = self._files.get(rtype)
        if fh is None:
            fh = self._files[rtype] = self._part(rtype).open("w", encoding="utf-8", newline="\n")
            self.counts[rtype] = 0
        fh.write(line + "\n")
        self.counts[rtype] += 1

    def commit(self) -> dict[str, Path]:
        """Close every file and move it into place; returns the final path of each type written."""
        self._close()
        final = {}
        for rtype in TYPES:
            path = self.out_dir / f"{rtype}.ndjson"
            if rtype in self.counts:
                self._part(rtype).replace(path)
                final[rtype] = path
            else:
                path.unlink(missing_ok=True)
        return final

    def abort(self) -> None:
        self._close()
        for rtype in self.counts:
            self._part(rtype).unlink(missing_ok=True)

    def _close(self) -> None:
        for fh in self._files.values():
            fh.close()
        self._files.clear()


def manifest(
    *, transaction_time: str, request: str, files: dict[str, Path], counts: dict[str, int], extra: dict[str, Any]
) -> dict[str, Any]:
    """The Bulk Data export manifest for the files written (errors as OperationOutcome in ``error``)."""

    def entry(rtype: str) -> dict[str, Any]:
        return {"type": rtype, "url": files[rtype].resolve().as_uri(), "count": counts[rtype]}

    return {
        "transactionTime": transaction_time,
        "request": request,
        "requiresAccessToken": False,
        "output": [entry(t) for t in TYPES if t in files and t != "OperationOutcome"],
        "error": [entry("OperationOutcome")] if "OperationOutcome" in files else [],
        "extension": {"fhirVersion": codes.FHIR_VERSION, "medbatch": extra},
    }
