"""The CSV row validator: every bad row gets a reason a clerk can act on; good rows pass untouched."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from medbatch.errors import InvalidInput
from medbatch.producer.records import SCHEMAS, iter_record_chunks, read_header, validate_frame

HEADER = "patient_id,age,bmi,exercise_frequency,smoking_history"


def write(tmp_path: Path, text: str, *, name: str = "in.csv", encoding: str = "utf-8", newline: str = "\n") -> Path:
    path = tmp_path / name
    path.write_bytes(text.replace("\n", newline).encode(encoding))
    return path


def collect(path: Path, workload: str = "risk", **kw):
    items, rejected = [], []
    for chunk in iter_record_chunks(path, workload, **kw):
        items += [{**i, "payload": json.loads(i["payload"])} for i in chunk.items]
        rejected += chunk.rejected
    return items, rejected


def test_good_rows_become_items_with_line_numbers_and_patient_ids(tmp_path):
    path = write(tmp_path, f"{HEADER}\nP1,54,27.5,3,0\nP2,61,31,0,20\n")
    items, rejected = collect(path)
    assert rejected == []
    assert [(i["source_row"], i["patient_ref"]) for i in items] == [(2, "P1"), (3, "P2")]
    assert items[0]["payload"] == {"age": 54.0, "bmi": 27.5, "exercise_frequency": 3.0, "smoking_history": 0.0}


def test_each_kind_of_bad_value_gets_its_own_reason(tmp_path):
    path = write(
        tmp_path,
        f"{HEADER}\n"
        "P1,abc,27,3,0\n"  # not a number
        "P2,54,,3,0\n"  # missing
        "P3,7,27,3,0\n"  # out of range, with hint
        "P4,54,27,3,-4\n"  # negative
        "P5,54,27,3,inf\n"  # not finite
        "P6,54,27,3,0\n",  # good
    )
    items, rejected = collect(path)
    reasons = {r["source_row"]: r["reason"] for r in rejected}
    assert [i["patient_ref"] for i in items] == ["P6"]
    assert "age 'abc' is not a number" in reasons[2]
    assert "bmi is missing" in reasons[3]
    assert "age 7 is outside the plausible range 18-120 years" in reasons[4] and "adults" in reasons[4]
    assert "smoking_history -4 is outside" in reasons[5]
    assert "smoking_history 'inf' is not a number" in reasons[6]
    assert {r["patient_ref"] for r in rejected} == {"P1", "P2", "P3", "P4", "P5"}


def test_several_problems_in_one_row_are_all_named(tmp_path):
    _, rejected = collect(write(tmp_path, f"{HEADER}\nP1,,999,x,0\n"))
    reason = rejected[0]["reason"]
    assert "age is missing" in reason and "bmi 999" in reason and "exercise_frequency 'x'" in reason


def test_extra_and_missing_fields_in_a_row_are_rejected_not_shifted(tmp_path):
    path = write(tmp_path, f"{HEADER}\nP1,54,27,3,0,EXTRA\nP2,54,27\nP3,54,27,3,0\n")
    items, rejected = collect(path)
    assert [i["patient_ref"] for i in items] == ["P3"]
    assert [r["source_row"] for r in rejected] == [2, 3]
    assert "6 fields but the header has 5" in rejected[0]["reason"]


def test_bom_crlf_blank_lines_and_quoted_commas(tmp_path):
    text = f'{HEADER},note\n"P,1",54,27.5,3,0,"likes, commas"\n\n\nP2,55,"28,5",2,1,"multi\nline"\nP3,56,29,2,1,x\n'
    path = write(tmp_path, "\ufeff" + text, newline="\r\n")
    items, rejected = collect(path)
    assert rejected == []
    assert [(i["patient_ref"], i["source_row"]) for i in items] == [("P,1", 2), ("P2", 5), ("P3", 7)]
    assert items[1]["payload"]["bmi"] == 28.5  # decimal comma accepted


def test_header_names_are_normalised_and_extra_columns_ignored(tmp_path):
    path = write(tmp_path, "MRN, Age ,BMI,Exercise Frequency,smoking-history,name\nM1,54,27,3,0,Jane Doe\n")
    items, _ = collect(path)
    assert items[0]["patient_ref"] == "M1"
    assert "name" not in items[0]["payload"] and "Jane Doe" not in str(items[0]["payload"])


def test_empty_file_is_refused_with_a_reason(tmp_path):
    with pytest.raises(InvalidInput, match="empty"):
        read_header(write(tmp_path, ""), "risk")


def test_missing_required_column_names_it(tmp_path):
    with pytest.raises(InvalidInput, match="missing required column.*exercise_frequency"):
        read_header(write(tmp_path, "age,bmi,smoking_history\n54,27,0\n"), "risk")


def test_header_only_file_has_no_rows(tmp_path):
    items, rejected = collect(write(tmp_path, f"{HEADER}\n"))
    assert items == [] and rejected == []


def test_not_utf8_is_refused(tmp_path):
    path = tmp_path / "latin.csv"
    path.write_bytes(b"\xff\xfe\x00a\x00g\x00e")
    with pytest.raises(InvalidInput):
        read_header(path, "risk")


def test_treatment_flags_and_blood_pressure_forms(tmp_path):
    path = write(
        tmp_path,
        "id,age,blood_pressure,cholesterol,smoking_history,diabetes\n"
        "1,60,140/90,240,0,yes\n2,60,140,5.8,0,no\n3,60,140,240,0,maybe\n",
    )
    items, rejected = collect(path, "treatment")
    assert items[0]["payload"]["blood_pressure"] == 140 and items[0]["payload"]["diabetes"] == 1.0
    reasons = {r["source_row"]: r["reason"] for r in rejected}
    assert "mmol/L" in reasons[3]
    assert "diabetes 'maybe' is not 0/1" in reasons[4]


def test_streaming_chunks_keep_every_row(tmp_path):
    rows = "\n".join(f"P{i},{30 + i % 50},25,2,0" for i in range(1050))
    items, rejected = collect(write(tmp_path, f"{HEADER}\n{rows}\n"), chunk_rows=100)
    assert len(items) == 1050 and rejected == []
    assert len({i["source_row"] for i in items}) == 1050


def test_schema_matches_the_model_contract():
    from medbatch.ml.tabular import WORKLOAD_FEATURES

    assert {w: tuple(c.name for c in cols) for w, cols in SCHEMAS.items()} == dict(WORKLOAD_FEATURES)


cell = st.one_of(
    st.text(max_size=12), st.floats(allow_nan=True, allow_infinity=True).map(str), st.integers(-1000, 1000).map(str)
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(cell, cell, cell, cell), min_size=1, max_size=20))
def test_validator_never_crashes_and_accepts_only_in_range_values(rows):
    """Property: any strings in, either a reason or values inside the documented ranges out."""
    frame = pd.DataFrame(rows, columns=[c.name for c in SCHEMAS["risk"]], dtype="string")
    values, reasons = validate_frame(frame, "risk")
    for i in range(len(rows)):
        if not reasons[i]:
            for col in SCHEMAS["risk"]:
                v = values[col.name].iat[i]
                assert col.low <= v <= col.high
        else:
            assert all(isinstance(r, str) and r for r in reasons[i])


def test_semicolon_and_tab_separated_files_from_spreadsheets(tmp_path):
    semi = write(tmp_path, "patient_id;age;bmi;exercise_frequency;smoking_history\nP1;54;27,5;3;0\n", name="s.csv")
    tab = write(tmp_path, "patient_id\tage\tbmi\texercise_frequency\tsmoking_history\nP2\t61\t30\t1\t5\n", name="t.csv")
    (a,), _ = collect(semi)
    (b,), _ = collect(tab)
    assert (a["patient_ref"], a["payload"]["bmi"]) == ("P1", 27.5)
    assert (b["patient_ref"], b["payload"]["age"]) == ("P2", 61.0)


def test_thousands_separator_is_refused_not_guessed(tmp_path):
    items, rejected = collect(write(tmp_path, f'{HEADER}\nP1,54,27,3,"1,000"\nP2,"1,200",27,3,0\nP3,54,"27,5",3,0\n'))
    reasons = {r["source_row"]: r["reason"] for r in rejected}
    assert "smoking_history '1,000' is ambiguous" in reasons[2]
    assert "age '1,200' is ambiguous" in reasons[3]
    assert [(i["patient_ref"], i["payload"]["bmi"]) for i in items] == [("P3", 27.5)]


def test_excel_workbook_is_named(tmp_path):
    path = tmp_path / "export.csv"
    path.write_bytes(b"PK\x03\x04" + bytes(range(256)) * 4)
    with pytest.raises(InvalidInput, match="Excel workbook"):
        read_header(path, "risk")


plain_or_odd = st.one_of(
    cell,
    st.sampled_from(
        ["54", " 54", "54 ", "\u00a054", "27,5", "1,000", "120/80", "Yes", " no", "TRUE", "1.0", "0", "-0"]
    ),
)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture]
)
@given(workload=st.sampled_from(sorted(SCHEMAS)), data=st.data())
def test_vectorised_chunks_give_exactly_what_the_rule_gives(tmp_path, workload, data):
    """Property: the fast path (plain values in C) and the per-row rule agree on every value, reason and line."""
    names = [c.name for c in SCHEMAS[workload]]
    rows = data.draw(st.lists(st.tuples(*[plain_or_odd] * len(names)), min_size=1, max_size=15))
    rows = [tuple(v.replace("\n", " ").replace("\r", " ").replace("\x00", "") for v in r) for r in rows]
    frame = pd.DataFrame(rows, columns=names, dtype="string")
    values, reasons = validate_frame(frame, workload)
    path = tmp_path / f"{workload}.csv"
    with path.open("w", newline="", encoding="utf-8") as fh:
        import csv

        w = csv.writer(fh)
        w.writerow(["patient_id", *names])
        w.writerows([f"P{i}", *r] for i, r in enumerate(rows))
    items, rejected = collect(path, workload)
    by_line = {i["source_row"]: i for i in items}
    why = {r["source_row"]: r["reason"] for r in rejected}
    for i in range(len(rows)):
        line = i + 2  # the header is line 1; no field spans lines
        if reasons[i]:
            assert why[line] == "; ".join(reasons[i]) and line not in by_line
        else:
            assert by_line[line]["patient_ref"] == f"P{i}" and line not in why
            assert by_line[line]["payload"] == pytest.approx(values.iloc[i].to_dict(), rel=1e-9)
    assert len(items) + len(rejected) == len(rows)


_piece = st.sampled_from(
    ["54", "27.5", "0", "3", "P7", "", " ", ",", ";", '"', '""', "'", "#", "\\", "\n", "\r\n", "\r", "\x00", "é", "\t"]
    + ["\x0b", "\x0c", "\x1c", "\x85", "\u2028", "\ufeff", "NA", "nan", "1e400"]
)
_line = st.lists(_piece, max_size=12).map("".join)
_ending = st.sampled_from(["\n", "\r\n", "\r", ""])


def _chunks(path: Path, chunk_rows: int) -> list:
    return [
        ([{**i, "payload": str(i["payload"])} for i in chunk.items], chunk.rejected)
        for chunk in iter_record_chunks(path, "risk", chunk_rows=chunk_rows)
    ]


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture]
)
@given(
    lines=st.lists(
        st.one_of(
            st.tuples(st.sampled_from(["P1,54,27.5,3,0", "P2,61,31,0,20"]), st.just("\n")), st.tuples(_line, _ending)
        ),
        max_size=40,
    ),
    block=st.integers(8, 120),
    chunk_rows=st.integers(1, 9),
)
def test_plain_blocks_read_whole_give_exactly_what_the_csv_module_gives(
    tmp_path, monkeypatch, lines, block, chunk_rows
):
    """Property: reading plain blocks whole in C (quote-free lines of the header's width) changes nothing:
    the same items, line numbers, rejections and chunking as reading every line through the csv module."""
    from medbatch.producer import csvtext

    path = tmp_path / "any.csv"
    path.write_bytes((HEADER + "\n" + "".join(t + e for t, e in lines)).encode())
    with monkeypatch.context() as patch:  # undone after each example (the fixture lives across them)
        patch.setattr(csvtext, "BLOCK_CHARS", block)  # many blocks: plain ones, odd ones, fields across them
        whole = _chunks(path, chunk_rows)
        patch.setattr(csvtext, "plain_columns", lambda *_: None)
        by_line = _chunks(path, chunk_rows)
    assert whole == by_line
