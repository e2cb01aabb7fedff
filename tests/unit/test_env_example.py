""".env.example says "the value shown is the default": every commented MEDBATCH_ setting it shows is."""

from __future__ import annotations

import re
from pathlib import Path

from medbatch.config import Settings

EXAMPLE = Path(__file__).resolve().parents[2] / ".env.example"


def _shown(default) -> str:
    if default is None:
        return ""
    if hasattr(default, "get_secret_value"):
        default = default.get_secret_value()
    if isinstance(default, bool):
        return str(default).lower()
    if isinstance(default, (list, tuple)):
        return ",".join(map(str, default))
    if isinstance(default, float) and default.is_integer():
        return str(int(default))
    return str(default)


def test_every_setting_shown_in_env_example_has_its_default_value():
    shown = re.findall(r"^# (MEDBATCH_[A-Z0-9_]+)=(.*)$", EXAMPLE.read_text(), re.M)
    settings = {name[len("MEDBATCH_") :].lower(): value for name, value in shown}
    fields = Settings.model_fields
    checked = {name: value for name, value in settings.items() if name in fields}  # the rest are compose variables
    assert len(checked) > 40
    wrong = {name: (value, _shown(fields[name].default)) for name, value in checked.items()}
    wrong = {name: pair for name, pair in wrong.items() if pair[0] != pair[1]}
    assert wrong == {}, "shown value, default"
