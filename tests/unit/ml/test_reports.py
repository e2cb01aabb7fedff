"""Report providers: minimum necessary, the offline template, and the real openai SDK against a fake server.

The OpenAI-compatible server (tests/fakes/openai_server.py) listens on 127.0.0.1 and captures every
request, so "no identifier leaves the process" is checked on the bytes the SDK actually sent.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from datetime import date

import pytest

from medbatch.errors import ModelMisconfigured, PermanentError, RateLimited, RetryableError
from medbatch.ml.reports import (
    ALLOWED_FIELDS,
    BATCH_DISCOUNT,
    OFFLINE_LABEL,
    PRICES_PER_MTOK,
    PROMPT_VERSION,
    InvalidModelOutput,
    OfflineProvider,
    OpenAIProvider,
    PatientFacts,
    ProviderRejected,
    ProviderUnavailable,
    ReportDraft,
    build_messages,
    estimate_cost,
    make_provider,
    minimum_necessary,
    parse_sections,
)
from tests.fakes.openai_server import FakeOpenAIServer

TODAY = date(2025, 1, 1)
MODEL = "gpt-4o-mini"

RECORD_WITH_IDENTIFIERS = {
    "Patient Name": "Jonathan Quixote",
    "MRN": "MRN-48213977",
    "address": "742 Evergreen Terrace, Springfield",
    "zip": "49007",
    "phone": "(555) 867-5309",
    "email": "jq.patient@example.org",
    "SSN": "123-45-6789",
    "date_of_birth": "1948-07-14",
    "admission_date": "2024-03-05",
    "insurance_id": "INS99887766",
    "device_ip": "10.1.2.3",
    "portal_url": "https://portal.example.org/p/4821",
    "sex": "F",
    "bmi": 31.2,
    "blood_pressure": 152,
    "cholesterol": 251,
    "smoking_history": 10,
    "diabetes": 1,
    "conditions": "Type 2 diabetes since 03/05/2019; MRN 48213977; call (555) 867-5309 or jq.patient@example.org",
    "symptoms": "Jonathan reports chest tightness on exertion, see https://portal.example.org/p/4821",
    "medications": ["metformin 500 mg", "lisinopril 10 mg"],
    "findings": {"risk_label": "high", "risk_score": 0.81, "treatment_plan": "antihypertensive_medication",
                 "clinician_name": "Dr Hibbert"},
}  # fmt: skip
IDENTIFIERS = [
    "Jonathan", "Quixote", "48213977", "Evergreen", "Springfield", "49007", "867-5309", "jq.patient",
    "example.org", "123-45-6789", "1948", "07-14", "2024-03-05", "03/05/2019", "INS99887766", "10.1.2.3",
    "portal", "Hibbert",
]  # fmt: skip


@pytest.fixture
def server():
    with FakeOpenAIServer(timeout_sleep_s=2.0) as fake:
        yield fake


@pytest.fixture
def provider(server):
    return OpenAIProvider(api_key="sk-test", base_url=server.base_url, model=MODEL, timeout_s=0.5)


@pytest.fixture
def facts():
    return minimum_necessary(RECORD_WITH_IDENTIFIERS, today=TODAY)


# --------------------------------------------------------------------------- minimum necessary


def test_minimum_necessary_keeps_clinical_fields_and_drops_identifiers(facts):
    # Given a record full of identifiers (in the fixture)
    # When it is reduced
    flat = repr(facts)
    # Then only allow-listed clinical facts remain, with the DOB turned into an age
    assert facts.age == 76 and facts.sex == "f"
    assert facts.clinical["blood_pressure"] == 152 and facts.clinical["bmi"] == 31.2
    assert facts.clinical["medications"] == ["metformin 500 mg", "lisinopril 10 mg"]
    assert "chest tightness on exertion" in facts.clinical["symptoms"]
    assert facts.findings == {"risk_label": "high", "risk_score": 0.81, "treatment_plan": "antihypertensive_medication"}
    assert set(facts.clinical) <= set(ALLOWED_FIELDS)
    for identifier in IDENTIFIERS:
        assert identifier.lower() not in flat.lower(), identifier


@pytest.mark.parametrize(
    ("record", "age"),
    [
        ({"dob": "1990-06-15"}, 34),
        ({"Date Of Birth": "1990-01-01T08:00:00"}, 35),
        ({"birth_date": date(1930, 5, 1)}, 90),  # 94 -> 90 (Safe Harbor)
        ({"age": 97}, 90),
        ({"age": "89"}, 89),
        ({"age": "unknown", "dob": "not a date"}, None),
        ({"age": float("inf")}, None),
    ],
)
def test_age_comes_from_the_date_of_birth_and_is_capped_at_90(record, age):
    # Given a record with an age or a date of birth / When reduced / Then the age is whole years, capped
    facts = minimum_necessary(record, today=TODAY)
    assert facts.age == age
    assert "dob" not in facts.clinical and "birth_date" not in facts.clinical


@pytest.mark.parametrize(
    "text",
    [
        "contact me at someone@hospital.org",
        "phone +1 555-123-4567",
        "see www.example.com/chart",
        "SSN 078-05-1120",
        "record number 00123456",
        "admitted 2023-11-02",
        "admitted 11/02/2023",
        "admitted March 3, 2023",
        "admitted 3 March 2023",
    ],
)
def test_free_text_is_scrubbed_of_contact_details_numbers_and_dates(text):
    # Given an allow-listed free-text field with an identifier in it
    facts = minimum_necessary({"symptoms": f"cough; {text}"})
    # Then the identifier part is redacted and the clinical part stays
    assert facts.clinical["symptoms"].startswith("cough;")
    assert "[redacted]" in facts.clinical["symptoms"]
    assert not any(ch.isdigit() for ch in facts.clinical["symptoms"]), facts.clinical["symptoms"]


def test_minimum_necessary_never_raises_on_odd_records():
    # Given unexpected fields and values / When reduced / Then nothing raises and nothing odd survives
    facts = minimum_necessary({"": None, 3: object(), "findings": "not a dict", "conditions": None, "sex": ""})
    assert facts == PatientFacts(age=None, sex=None, clinical={}, findings={})


def test_build_messages_asks_for_three_sections_and_carries_only_facts(facts):
    # When the prompt is built
    system, user = build_messages(facts)
    # Then it asks for the three headed sections of a draft for clinician review, and carries the facts as JSON
    assert system["role"] == "system" and user["role"] == "user"
    for heading in ("## Condition", "## Recommended treatment", "## Follow-up"):
        assert heading in system["content"]
    assert "clinician" in system["content"] and "DRAFT" in system["content"]
    assert '"age_years": 76' in user["content"] and "Jonathan" not in user["content"]


# --------------------------------------------------------------------------- parsing and cost


@pytest.mark.parametrize(
    "text",
    [
        "## Condition\nA\n\n## Recommended treatment\nB\n\n## Follow-up\nC",
        "**Condition:** A\n**Recommended Treatment:** B\n**Follow up:** C",
        "Condition: A\nRecommended treatment:\nB\nFollow-up: C",
        "1. **Condition**\nA\n2. **Recommended treatment**\nB\n3. **Follow-up**\nC\n",
        "### CONDITION\nA\nTreatment should wait.\n### RECOMMENDED TREATMENT\nB\n### FOLLOW-UP\nC",
    ],
)
def test_parse_sections_accepts_common_heading_styles(text):
    sections = parse_sections(text)
    assert sections["condition"].startswith("A")
    assert sections["recommended_treatment"] == "B" and sections["follow_up"] == "C"


def test_parse_sections_rejects_a_missing_section():
    with pytest.raises(InvalidModelOutput, match="Follow-up") as info:
        parse_sections("## Condition\nA\n## Recommended treatment\nB")
    assert info.value.reason == "missing_sections"


def test_estimate_cost_uses_the_price_table():
    # Given the default table / Then known models, dated snapshots and unknown models are priced as documented
    price_in, price_out = PRICES_PER_MTOK["gpt-4o-mini"]
    assert estimate_cost("gpt-4o-mini", 1_000_000, 1_000_000) == pytest.approx(price_in + price_out)
    assert estimate_cost("gpt-4o-mini-2024-07-18", 1000, 0) == pytest.approx(price_in / 1000)
    assert estimate_cost("llama3:8b", 1000, 1000) is None
    assert estimate_cost("llama3:8b", 1000, 1000, prices={"llama3:8b": (0.0, 0.0)}) == 0.0


# --------------------------------------------------------------------------- offline provider


def test_offline_provider_is_deterministic_and_labelled(facts):
    # Given the offline provider / When it writes the same facts twice
    first, second = OfflineProvider().generate(facts), OfflineProvider().generate(facts)
    # Then the text is identical, labelled on its first line, and has the three sections
    assert first.text == second.text and first.sections == second.sections
    assert first.text.splitlines()[0] == OFFLINE_LABEL
    assert parse_sections(first.text) == first.sections
    assert "high risk" in first.sections["condition"] and "smoking cessation" in first.sections["recommended_treatment"]
    assert (first.provider, first.finish_reason, first.tokens_in, first.tokens_out, first.cost_usd) == (
        "offline",
        "template",
        0,
        0,
        0.0,
    )
    assert first.prompt_version == PROMPT_VERSION and first.requires_review is True


# --------------------------------------------------------------------------- OpenAI provider, real SDK


def test_no_identifier_leaves_the_process(server, provider):
    # Given a record full of identifiers, reduced as the producer does
    facts = minimum_necessary(RECORD_WITH_IDENTIFIERS, today=TODAY)
    # When a report is generated synchronously and through the Batch API
    provider.generate(facts)
    batch_id = provider.submit_batch([provider.batch_request_line("item:1", facts)])
    for _ in range(5):
        if provider.batch_status(batch_id)["status"] == "completed":
            break
    assert isinstance(provider.batch_results(batch_id)["item:1"], ReportDraft)
    # Then no identifier appears in any request that reached the server (headers or body)...
    sent = "\n".join(r.as_text() for r in server.requests)
    assert len(server.requests) >= 5
    for identifier in IDENTIFIERS:
        assert identifier.lower() not in sent.lower(), f"{identifier!r} left the process"
    # ...while the allowed clinical values do
    for value in ("152", "251", "31.2", "metformin 500 mg", "chest tightness", "antihypertensive_medication"):
        assert value in sent, value
    assert '"age_years": 76' in server.chat_requests[0].json["messages"][1]["content"]


def test_the_capture_sees_what_the_sdk_sends(server, provider):
    # Given facts that (wrongly) carry a name, built by hand to bypass minimum_necessary
    leaky = PatientFacts(age=None, sex=None, clinical={"symptoms": "Quixote"}, findings={})
    # When sent, Then the capture finds it: the leak test above is able to fail
    provider.generate(leaky)
    assert "Quixote" in server.chat_requests[0].as_text()


def test_a_report_carries_its_accounting(server, provider, facts):
    # Given a well-behaved server / When a report is generated
    draft = provider.generate(facts)
    # Then the draft is parsed and every accounting field is filled
    usage = server.chat_requests[0].json
    assert usage["model"] == MODEL and usage["max_tokens"] == 600 and usage["temperature"] == 0.2
    assert isinstance(draft, ReportDraft) and set(draft.sections) == {"condition", "recommended_treatment", "follow_up"}
    assert (draft.provider, draft.model, draft.prompt_version, draft.finish_reason) == (
        "openai",
        MODEL,
        PROMPT_VERSION,
        "stop",
    )
    assert draft.tokens_in > 0 and draft.tokens_out > 0
    assert draft.cost_usd == pytest.approx(estimate_cost(MODEL, draft.tokens_in, draft.tokens_out))
    assert draft.latency_s > 0 and draft.requires_review is True


@pytest.mark.parametrize(
    ("behaviour", "error", "reason"),
    [
        ("500", ProviderUnavailable, None),
        ("timeout", ProviderUnavailable, None),
        ("malformed", InvalidModelOutput, "malformed"),
        ("refusal", InvalidModelOutput, "refusal"),
        ("refusal_text", InvalidModelOutput, "refusal"),
        ("empty", InvalidModelOutput, "empty"),
        ("length", InvalidModelOutput, "truncated"),
    ],
)
def test_each_failure_becomes_the_right_medbatch_error(server, provider, facts, behaviour, error, reason):
    # Given a server scripted to misbehave once
    server.script(behaviour)
    # When a report is requested, Then the real SDK's failure maps onto medbatch's error tree
    with pytest.raises(error) as info:
        provider.generate(facts)
    assert isinstance(info.value, RetryableError if error is ProviderUnavailable else PermanentError)
    if reason:
        assert info.value.reason == reason
    assert "chest tightness" not in str(info.value)  # messages never carry prompt contents
    # And the SDK did not retry on its own (retries are the task's job)
    assert len(server.chat_requests) == 1
    # And the next request succeeds
    assert provider.generate(facts).finish_reason == "stop"


def test_429_is_rate_limited_with_the_retry_after_header(server, provider, facts):
    server.script("429")
    with pytest.raises(RateLimited) as info:
        provider.generate(facts)
    assert info.value.retry_after_s == 1


def test_a_slow_answer_within_the_timeout_succeeds(server, provider, facts):
    server.script("slow:0.2")
    assert provider.generate(facts).latency_s >= 0.2


def test_4xx_other_than_429_is_permanent(server, facts):
    # Given a provider naming a route the server does not have (a 404 from the API)
    provider = OpenAIProvider(api_key="sk-test", base_url=server.base_url + "/nowhere", model=MODEL)
    with pytest.raises(ProviderRejected) as info:
        provider.generate(facts)
    assert info.value.status_code == 404


def test_concurrent_requests_overlap(facts):
    # Given a server with a fixed latency, When eight reports are generated from eight threads
    with FakeOpenAIServer(latency_s=0.3) as server:
        provider = OpenAIProvider(api_key="sk-test", base_url=server.base_url, model=MODEL)
        drafts: list[ReportDraft] = []
        started = time.perf_counter()
        threads = [threading.Thread(target=lambda: drafts.append(provider.generate(facts))) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.perf_counter() - started
    # Then all succeed and they ran concurrently, not one after another
    assert len(drafts) == 8 and elapsed < 8 * 0.3 / 2


def test_batch_round_trip_maps_results_and_errors_by_custom_id(server, provider, facts):
    # Given four lines, of which the second fails with a 500 and the fourth times out
    server.script("ok", "500", "ok", "timeout")
    lines = [provider.batch_request_line(f"item:{i}", facts) for i in range(4)]
    assert lines[0]["url"] == "/v1/chat/completions" and lines[0]["body"]["messages"] == build_messages(facts)
    # When the batch is submitted and polled until it completes
    batch_id = provider.submit_batch(lines)
    statuses: list[str] = []
    while len(statuses) < 5 and "completed" not in statuses:
        statuses.append(provider.batch_status(batch_id)["status"])
    results = provider.batch_results(batch_id)
    # Then it went through its states, and results come back by custom_id
    assert statuses == ["in_progress", "completed"]
    upload = next(r for r in server.requests if r.path == "/v1/files")
    assert upload.json["purpose"] == "batch" and upload.json["file"]["content"].count(b"\n") == 4
    created = next(r for r in server.requests if r.path == "/v1/batches")
    assert created.json["endpoint"] == "/v1/chat/completions" and created.json["completion_window"] == "24h"
    assert set(results) == {"item:0", "item:1", "item:2", "item:3"}
    ok = results["item:0"]
    assert isinstance(ok, ReportDraft) and isinstance(results["item:2"], ReportDraft)
    assert ok.cost_usd == pytest.approx(estimate_cost(MODEL, ok.tokens_in, ok.tokens_out) * BATCH_DISCOUNT)
    assert isinstance(results["item:1"], InvalidModelOutput) and "HTTP 500" in str(results["item:1"])
    assert isinstance(results["item:3"], InvalidModelOutput) and "request_timeout" in str(results["item:3"])
    assert provider.batch_status(batch_id)["request_counts"] == {"total": 4, "completed": 2, "failed": 2}


def test_batch_refuses_duplicate_custom_ids(provider, facts):
    line = provider.batch_request_line("item:1", facts)
    with pytest.raises(PermanentError):
        provider.submit_batch([line, line])


# --------------------------------------------------------------------------- configuration


def test_the_sdk_environment_variables_are_honoured(server, facts, monkeypatch):
    # Given only OPENAI_API_KEY / OPENAI_BASE_URL in the environment
    monkeypatch.setenv("OPENAI_API_KEY", "sk-from-env")
    monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
    # When the provider is built without a key or URL
    make_provider("openai", model=MODEL).generate(facts)
    # Then the SDK used them
    assert server.chat_requests[0].headers["authorization"] == "Bearer sk-from-env"


def test_openai_itself_gets_max_completion_tokens(monkeypatch, facts):
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    provider = OpenAIProvider(api_key="sk-test", base_url=None, model=MODEL)
    body = provider.batch_request_line("x", facts)["body"]
    assert body["max_completion_tokens"] == 600 and "max_tokens" not in body


def test_make_provider_builds_by_name_and_refuses_bad_configuration(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    assert isinstance(make_provider("offline", api_key=None), OfflineProvider)
    with pytest.raises(ModelMisconfigured, match="unknown report provider"):
        make_provider("gpt")
    with pytest.raises(ModelMisconfigured, match="OpenAI client"):
        make_provider("openai", model=MODEL)


def test_importing_the_module_does_not_import_openai():
    code = "import sys, medbatch.ml.reports; sys.exit(1 if 'openai' in sys.modules else 0)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def test_names_written_into_free_text_are_redacted():
    from medbatch.ml.reports import minimum_necessary

    facts = minimum_necessary({"conditions": "hypertension; seen by John Smith, per Dr. Patel; type 2 diabetes"})
    text = str(facts.clinical)
    assert "John" not in text and "Smith" not in text and "Patel" not in text
    assert "hypertension" in text and "type 2 diabetes" in text
