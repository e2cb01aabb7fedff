"""DICOMweb: QIDO-RS search, WADO-RS retrieve and STOW-RS store against a PACS, credentials from settings.

A :class:`PacsAccess` holds the plain values the settings give (basic auth or a bearer token, a
timeout); nothing here reads the environment. Credentials travel in a ``requests.Session``'s auth or
headers only: never in a URL, a message, a log line or an error (errors name the PACS host and the HTTP
status, nothing else).

Failures are split the project's way: the PACS unreachable, timing out or answering 5xx/429 is a
:class:`PacsUnavailable` (retryable); a refusal (4xx) is a :class:`PacsRefused` with the PACS's reason.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import requests

from medbatch.errors import InvalidInput, PacsRefused, PacsUnavailable

#: DICOM attributes asked for in every instance search (tag keywords, resolved by dicomweb-client).
INSTANCE_FIELDS = (
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "SOPInstanceUID",
    "SOPClassUID",
    "Modality",
    "PatientID",
    "Rows",
    "Columns",
    "NumberOfFrames",
    "StudyDate",
)
_DATE = re.compile(r"^\d{8}(-\d{8})?$")


@dataclass(frozen=True)
class PacsAccess:
    """How to talk to a PACS over HTTP: plain values from the settings (secrets already unwrapped)."""

    username: str = ""
    password: str = field(default="", repr=False)  # never in a repr, a log line or an error
    token: str = field(default="", repr=False)
    timeout_s: float = 60.0

    def session(self) -> requests.Session:
        s = requests.Session()
        if self.token:
            s.headers["Authorization"] = f"Bearer {self.token}"
        elif self.username:
            s.auth = (self.username, self.password)
        return s


def check_url(url: str) -> str:
    """A DICOMweb root URL, without a trailing slash; user info in the URL is refused (credentials
    come from settings only, so they never reach a job's source, a log or a terminal)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidInput(f"not a DICOMweb URL (http(s)://host/...): {url!r}")
    if parts.username or parts.password:
        raise InvalidInput(
            "put PACS credentials in MEDBATCH_PACS_USERNAME/MEDBATCH_PACS_PASSWORD or MEDBATCH_PACS_TOKEN, "
            "not in the URL"
        )
    return url.rstrip("/")


def check_study_date(value: str | None) -> str | None:
    """``YYYYMMDD`` or ``YYYYMMDD-YYYYMMDD`` (a QIDO-RS date range), or None."""
    if value is None or not value.strip():
        return None
    value = value.strip()
    if not _DATE.match(value):
        raise InvalidInput(f"--study-date must be YYYYMMDD or YYYYMMDD-YYYYMMDD, not {value!r}")
    return value


def _host(url: str) -> str:
    return urlsplit(url).hostname or "?"


def _raise_for(response: requests.Response, what: str, url: str) -> None:
    if response.ok:
        return
    code = response.status_code
    reason = (response.reason or "").strip()
    if code in (408, 429) or code >= 500:
        raise PacsUnavailable(f"PACS at {_host(url)} answered {code} {reason} to {what}")
    raise PacsRefused(f"PACS at {_host(url)} refused {what}: {code} {reason}")


class DicomWeb:
    """A DICOMweb endpoint: the root URL plus a session carrying the credentials."""

    def __init__(self, url: str, access: PacsAccess | None = None):
        self.url = check_url(url)
        self.access = access or PacsAccess()
        self.session = self.access.session()

    def close(self) -> None:
        self.session.close()

    def _get(self, path: str, *, params: dict | None = None, headers: dict | None = None, stream: bool = False):
        try:
            r = self.session.get(
                self.url + path, params=params, headers=headers, timeout=self.access.timeout_s, stream=stream
            )
        except requests.RequestException as exc:
            raise PacsUnavailable(f"PACS at {_host(self.url)} unreachable: {type(exc).__name__}") from None
        return r

    def _qido(self, path: str, params: dict[str, Any], what: str) -> list[dict]:
        r = self._get(path, params=params, headers={"Accept": "application/dicom+json"})
        _raise_for(r, what, self.url)
        if r.status_code == 204 or not r.content:
            return []
        try:
            return r.json()
        except ValueError:
            raise PacsRefused(f"PACS at {_host(self.url)} sent no JSON to {what}") from None

    # ------------------------------------------------------------------ QIDO-RS

    def search_studies(self, *, study_date: str | None = None, modalities: Sequence[str] = (), page: int = 500):
        """Every study matching, as DICOM JSON (paged with limit/offset)."""
        params: dict[str, Any] = {"includefield": "StudyInstanceUID"}
        if study_date:
            params["StudyDate"] = study_date
        if modalities:
            params["ModalitiesInStudy"] = ",".join(modalities)
        yield from self._paged("/studies", params, "a study search", page)

    def search_instances(self, study_uid: str, page: int = 1000) -> Iterator[dict]:
        params = {"includefield": ",".join(INSTANCE_FIELDS)}
        yield from self._paged(f"/studies/{study_uid}/instances", params, "an instance search", page)

    def _paged(self, path: str, params: dict[str, Any], what: str, page: int) -> Iterator[dict]:
        offset = 0
        while True:
            got = self._qido(path, {**params, "limit": page, "offset": offset}, what)
            yield from got
            if len(got) < page:
                return
            offset += len(got)

    # ------------------------------------------------------------------ WADO-RS

    def retrieve_instance(self, study: str, series: str, sop: str, *, max_bytes: int) -> bytes:
        """The instance as a DICOM Part 10 file, in the transfer syntax the PACS holds (no transcoding).

        Raises:
            PacsRefused: the PACS no longer holds it (404) or refuses; ``InvalidInput`` if over ``max_bytes``.
            PacsUnavailable: the PACS is down or timed out.
        """
        path = f"/studies/{study}/series/{series}/instances/{sop}"
        accept = 'multipart/related; type="application/dicom"; transfer-syntax=*'
        # identity: pixel data hardly compresses, and a PACS gzipping megabytes per instance (Orthanc does
        # when asked) made a retrieve 5x slower.
        r = self._get(path, headers={"Accept": accept, "Accept-Encoding": "identity"}, stream=True)
        with r:
            _raise_for(r, "an instance retrieve", self.url)
            declared = r.headers.get("Content-Length")
            if declared and declared.isdigit() and int(declared) > max_bytes + 4096:
                raise InvalidInput(
                    f"file is {int(declared) / 2**20:.0f} MiB, over the {max_bytes / 2**20:.0f} MiB limit"
                )
            body = bytearray()
            try:
                for block in r.iter_content(1 << 20):
                    body += block
                    if len(body) > max_bytes + 4096:
                        raise InvalidInput(f"file is over the {max_bytes / 2**20:.0f} MiB limit")
            except requests.RequestException as exc:
                raise PacsUnavailable(f"PACS at {_host(self.url)} broke off a retrieve: {type(exc).__name__}") from None
            content_type = r.headers.get("Content-Type", "")
        return first_part(bytes(body), content_type)

    def instance_metadata(self, study: str, series: str, sop: str) -> dict:
        path = f"/studies/{study}/series/{series}/instances/{sop}/metadata"
        r = self._get(path, headers={"Accept": "application/dicom+json"})
        _raise_for(r, "a metadata retrieve", self.url)
        data = r.json()
        return data[0] if isinstance(data, list) and data else data

    # ------------------------------------------------------------------ STOW-RS

    def store(self, datasets: Sequence[Any]) -> dict[str, str | None]:
        """STOW-RS ``datasets``; returns ``{sop_uid: None}`` for each stored one, ``{sop_uid: reason}`` for each
        the PACS refused (its FailureReason, and any text it gave)."""
        from dicomweb_client.api import DICOMwebClient

        client = DICOMwebClient(self.url, session=self.session, timeout=self.access.timeout_s)
        uids = [str(ds.SOPInstanceUID) for ds in datasets]
        try:
            response = client.store_instances(list(datasets))
        except requests.HTTPError as exc:
            resp = exc.response
            if resp is None:
                raise PacsUnavailable(f"PACS at {_host(self.url)} failed a store") from None
            failed = _stow_failures(resp)
            if failed is not None and resp.status_code in (200, 202, 409):
                return {u: failed.get(u) for u in uids}
            _raise_for(resp, "a store", self.url)
            raise PacsRefused(f"PACS at {_host(self.url)} refused a store: {resp.status_code}") from None
        except requests.RequestException as exc:
            raise PacsUnavailable(f"PACS at {_host(self.url)} unreachable: {type(exc).__name__}") from None
        failed = {}
        for item in getattr(response, "FailedSOPSequence", []) or []:
            failed[str(item.ReferencedSOPInstanceUID)] = _failure_reason(item)
        return {u: failed.get(u) for u in uids}


def _failure_reason(item: Any) -> str:
    code = getattr(item, "FailureReason", None)
    known = {0x0110: "processing failure", 0x0112: "no such object instance", 0x0122: "SOP class not supported",
             0x0124: "not authorized", 0x0212: "duplicate/mismatch of SOP class", 0xA700: "out of resources",
             0xA900: "data set does not match SOP class", 0xC000: "cannot understand"}
    text = known.get(int(code), "refused") if code is not None else "refused"
    return f"PACS refused the object: FailureReason 0x{int(code or 0):04X} ({text})"


def _stow_failures(resp: requests.Response) -> dict[str, str] | None:
    try:
        from pydicom import Dataset

        data = resp.json()
        ds = Dataset.from_json(data if isinstance(data, dict) else data[0])
    except Exception:  # noqa: BLE001 - the body of an error answer is not always DICOM JSON
        return None
    return {str(i.ReferencedSOPInstanceUID): _failure_reason(i) for i in getattr(ds, "FailedSOPSequence", []) or []}


def first_part(body: bytes, content_type: str) -> bytes:
    """The first body part of a ``multipart/related`` answer (the DICOM file), or ``body`` if not multipart."""
    m = re.search(r'boundary="?([^";]+)"?', content_type, re.I)
    if not content_type.lower().startswith("multipart/") or not m:
        return body
    delim = b"--" + m.group(1).encode()
    start = body.find(delim)
    if start < 0:
        raise PacsRefused("PACS answer is not a valid multipart message")
    header_end = body.find(b"\r\n\r\n", start)
    if header_end < 0:
        raise PacsRefused("PACS answer is not a valid multipart message")
    part_start = header_end + 4
    end = body.find(b"\r\n" + delim, part_start)
    return body[part_start : end if end >= 0 else len(body)]


def json_value(ds: dict, keyword: str) -> Any:
    """The first value of a DICOM JSON attribute (by keyword), or None."""
    from pydicom.datadict import tag_for_keyword

    tag = f"{tag_for_keyword(keyword):08X}"
    values = (ds.get(tag) or {}).get("Value") or []
    if not values:
        return None
    value = values[0]
    if isinstance(value, dict) and "Alphabetic" in value:  # a person name
        return value["Alphabetic"]
    return value


_local = threading.local()


def _endpoint(url: str, access: PacsAccess | None) -> DicomWeb:
    """One :class:`DicomWeb` per thread and PACS (a worker decodes in a thread pool)."""
    cache = _local.__dict__.setdefault("endpoints", {})
    key = (url, access)
    if key not in cache:
        cache[key] = DicomWeb(url, access)
    return cache[key]


def retrieve_checked(payload: dict, access: PacsAccess | None, *, max_bytes: int) -> bytes:
    """The DICOM file of a PACS-staged item, checked to be the instance that was staged.

    Raises:
        ImageRejected: the PACS no longer holds it, refuses it, sends something else or too much.
        PacsUnavailable: the PACS is down (the batch is retried).
    """
    import io

    import pydicom

    from medbatch.ml.images import ImageRejected

    web = _endpoint(payload["pacs"], access)
    try:
        data = web.retrieve_instance(payload["study"], payload["series"], payload["sop"], max_bytes=max_bytes)
    except PacsRefused as exc:
        raise ImageRejected(f"instance could not be retrieved: {exc}") from None
    except InvalidInput as exc:
        raise ImageRejected(str(exc)) from None
    if not data:
        raise ImageRejected("the PACS sent an empty instance")
    try:
        head = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True, force=True, specific_tags=["SOPInstanceUID"])
        sop = str(head.get("SOPInstanceUID", ""))
    except Exception:  # noqa: BLE001 - decode() gives the reason for an unreadable file
        sop = payload["sop"]
    if sop != payload["sop"]:
        raise ImageRejected("the PACS sent a different instance than the one staged")
    return data
