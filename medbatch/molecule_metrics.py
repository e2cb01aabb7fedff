"""One way to show a molecule job's MOSES metrics beside the MOSES CharRNN reference row.

``medbatch status`` (a table), the demo's summary (one line), the morning page (an HTML table), the README
and the model card all format through here, so a figure reads the same wherever it is shown: three
decimals, ``n/a`` when it could not be measured (IntDiv of fewer than two molecules, say).

Two rows describe a job, side by side with MOSES CharRNN (:func:`comparison_rows`): the **raw** row is the
model, measured over every sample as MOSES measures; the **delivered** row is what the chemist receives.
Validity, uniqueness, the filters (and novelty unless known molecules were allowed) hold for the delivered
set by construction: that row shows ``selected`` there, never a figure, so no filtered set is called
"validity". Its own figures are IntDiv and the samples it cost per molecule.
"""

from __future__ import annotations

from typing import Any

#: The set metrics, in the order of the MOSES paper's table 2 (keys as ``ml.chem.set_metrics`` names them).
METRIC_KEYS = ("validity", "unique@1k", "unique@10k", "novelty", "intdiv", "filters")
#: The side-by-side table's columns: the MOSES metrics, then the samples spent per delivered molecule.
TABLE_KEYS = (*METRIC_KEYS, "samples/delivered")
#: What the delivered row shows in a column that holds by construction.
SELECTED = "selected"


def figure(value: Any) -> str:
    """A metric as shown: three decimals; ``n/a`` when there is none."""
    if value is None:
        return "n/a"
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    return f"{value:.3f}"


def figures(values: dict | None, keys: tuple[str, ...] = METRIC_KEYS) -> list[str]:
    """One cell per key: a job's metrics, or a reference row such as ``MOSES_CHARRNN``."""
    values = values or {}
    return [figure(values.get(k)) for k in keys]


def counts(metrics: dict, sep: str = " · ") -> str:
    """``90 generated · 80 valid · 70 unique · 10 duplicates``."""
    return sep.join(f"{metrics[k]} {k}" for k in ("generated", "valid", "unique", "duplicates"))


def properties(metrics: dict) -> str:
    """Mean QED and SA, and the shares passing Lipinski and free of PAINS alerts."""
    return (
        f"QED mean {figure(metrics.get('qed_mean'))} · SA mean {figure(metrics.get('sa_mean'))} · "
        f"Lipinski pass {figure(metrics.get('lipinski_pass'))} · PAINS-free {figure(metrics.get('pains_free'))}"
    )


def fewer_than_k_note(metrics: dict) -> str | None:
    """Why unique@k is over fewer than k molecules, when it is (MOSES does the same); None otherwise."""
    used = (metrics.get("unique@k_used") or {}).get("10k")
    if used is None or used >= 10_000:
        return None
    which = "unique@1k and unique@10k are" if used < 1000 else "unique@10k is"
    return f"{which} over the {used} valid molecules there are (fewer than k; as MOSES does)"


def one_line(metrics: dict | None) -> str:
    """The job in one line: what was delivered, then each raw headline metric followed by the reference figure
    in brackets."""
    if not metrics:
        return "metrics: not computed"
    ref = metrics.get("reference") or {}
    delivered = delivery_line(metrics)
    return (
        (f"{delivered}; raw model: " if delivered else "")
        + f"{metrics['generated']} generated, {metrics['valid']} valid, {metrics['unique']} unique "
        f"({metrics['duplicates']} duplicates): "
        f"validity {figure(metrics.get('validity'))} (MOSES CharRNN {figure(ref.get('validity'))}), "
        f"novelty {figure(metrics.get('novelty'))} ({figure(ref.get('novelty'))}), "
        f"IntDiv {figure(metrics.get('intdiv'))} ({figure(ref.get('intdiv'))}), "
        f"filters {figure(metrics.get('filters'))} ({figure(ref.get('filters'))})"
    )


def comparison_rows(metrics: dict | None, reference: dict | None = None) -> list[tuple[str, list[str]]]:
    """``(label, cells)`` for the raw row, the delivered row (when the metrics have one) and the MOSES CharRNN
    row, one cell per :data:`TABLE_KEYS`. ``metrics``: a job's (``jobs.metrics``) or a card's generated
    sample (``ml.chem.evaluate_generator``); ``reference`` defaults to the one they carry, else MOSES's."""
    from medbatch.ml.moses import MOSES_CHARRNN

    metrics = metrics or {}
    reference = reference or metrics.get("reference") or MOSES_CHARRNN
    rows = [(f"model, raw ({metrics.get('generated', 'n/a')} samples)", [*figures(metrics), "-"])]
    d = metrics.get("delivered")
    if d:
        shown = "" if d.get("requested") is None else f" of {d['requested']}"
        novelty = figure(d.get("novelty")) if d.get("allow_known") else SELECTED
        cells = [SELECTED, SELECTED, SELECTED, novelty, figure(d.get("intdiv")), SELECTED]
        rows.append((f"delivered ({d['delivered']}{shown})", [*cells, figure(d.get("samples_per_delivered"))]))
    rows.append(("MOSES CharRNN", [*figures(reference), "-"]))
    return rows


def delivery_line(metrics: dict | None) -> str | None:
    """``delivered 10000 of 10000 from 14100 samples (1.410 per molecule)``, or ``delivered 9120 of 10000;
    sample budget spent (30000 samples)``; None for metrics without a delivered block."""
    d = (metrics or {}).get("delivered")
    if not d:
        return None
    of = "" if d.get("requested") is None else f" of {d['requested']}"
    if d.get("budget_spent"):
        return f"delivered {d['delivered']}{of}; sample budget spent ({d['samples']} samples)"
    if d.get("requested") is not None and d["delivered"] < d["requested"]:
        return f"delivered {d['delivered']}{of} from {d['samples']} samples (items failed: see the errors)"
    per = figure(d.get("samples_per_delivered"))
    return f"delivered {d['delivered']}{of} from {d['samples']} samples ({per} per molecule)"


def outcomes_line(metrics: dict | None, sep: str = " · ") -> str | None:
    """Every sample's outcome counted: ``delivered 10000 · invalid 3260 · duplicate 4 · ...``."""
    d = (metrics or {}).get("delivered")
    if not d:
        return None
    return sep.join(f"{k.replace('_', ' ')} {v}" for k, v in (d.get("outcomes") or {}).items() if v)


def comparison_markdown(metrics: dict | None, reference: dict | None = None) -> str:
    """:func:`comparison_rows` as a Markdown table (the README, a model card's text)."""
    lines = ["| | " + " | ".join(TABLE_KEYS) + " |", "|---" * (len(TABLE_KEYS) + 1) + "|"]
    lines += [f"| {label} | " + " | ".join(cells) + " |" for label, cells in comparison_rows(metrics, reference)]
    return "\n".join(lines)
