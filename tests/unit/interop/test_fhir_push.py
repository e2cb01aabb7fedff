"""``export fhir --to``: the export's files as transaction Bundles (PUT by id) to a local FHIR endpoint."""

from __future__ import annotations

import pytest

from medbatch.errors import FhirServerRefused, FhirServerUnavailable
from medbatch.interop.fhir import resources as r
from medbatch.interop.fhir.bulk import NdjsonWriter
from medbatch.interop.fhir.push import send
from tests.fakes.fhir_server import FakeFhirServer
from tests.helpers import FHIR_AT as AT
from tests.helpers import fhir_context
from tests.helpers import fhir_rows as rows

CTX = fhir_context()


def _export(tmp_path, n: int):
    writer = NdjsonWriter(tmp_path)
    dev = r.device("risk", "v1")
    writer.write(dev)
    for i in range(n):
        ra = r.risk(CTX, {**rows()["risk"], "item_id": i}, dev)[0]
        writer.write(ra)
        writer.write(r.provenance(CTX, i, ra, dev, r.instant(AT)))
    writer.commit()
    return tmp_path


def test_every_resource_is_put_once_in_type_order_and_a_resend_creates_nothing(tmp_path):
    out = _export(tmp_path, 7)
    with FakeFhirServer() as fhir:
        sent = send(out, fhir.url, token="s3cret", timeout_s=10, per_bundle=4)
        assert sent == {"bundles": 4, "entries": 15} and len(fhir.stored) == 15
        order = [e["resource"]["resourceType"] for b in fhir.bundles for e in b["entry"]]
        assert order == ["Device"] + ["RiskAssessment"] * 7 + ["Provenance"] * 7  # referenced before referring
        assert all(b["type"] == "transaction" for b in fhir.bundles)
        assert fhir.headers[0]["Authorization"] == "Bearer s3cret"
        assert fhir.headers[0]["Content-Type"] == "application/fhir+json"
        before = dict(fhir.stored)
        send(out, fhir.url, token=None, timeout_s=10, per_bundle=500)
        assert fhir.stored == before and "Authorization" not in fhir.headers[-1]


def test_a_refusal_carries_the_servers_reason_and_an_outage_is_retryable(tmp_path):
    out = _export(tmp_path, 1)
    with FakeFhirServer() as fhir:
        fhir.refuse = (422, "Resource   Device/x: unknown\nprofile")
        with pytest.raises(FhirServerRefused, match=r"\(422\): Resource Device/x: unknown profile"):
            send(out, fhir.url, token=None, timeout_s=10)
        fhir.refuse = (503, "maintenance")
        with pytest.raises(FhirServerUnavailable, match="503: maintenance"):
            send(out, fhir.url, token=None, timeout_s=10)
        url = fhir.url
    with pytest.raises(FhirServerUnavailable, match="unreachable"):
        send(out, url, token=None, timeout_s=5)
