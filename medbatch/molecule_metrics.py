"""One way to show a molecule job's MOSES metrics beside the MOSES CharRNN reference row.

``medbatch status`` (a table), the demo's summary (one line) and the morning page (an HTML table) all
format through here, so a figure reads the same wherever it is shown: three decimals, ``n/a`` when it
could not be measured (IntDiv of fewer than two molecules, say).
"""

from __future__ import annotations

from typing import Any

#: The set metrics, in the order of the MOSES paper's table 2 (keys as ``ml.chem.set_metrics`` names them).
METRIC_KEYS = ("validity", "unique@1k", "unique@10k", "novelty", "intdiv", "filters")


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
    """The job in one line, each headline metric followed by the reference figure in brackets."""
    if not metrics:
        return "metrics: not computed"
    ref = metrics.get("reference") or {}
    return (
        f"{metrics['generated']} generated, {metrics['valid']} valid, {metrics['unique']} unique "
        f"({metrics['duplicates']} duplicates): "
        f"validity {figure(metrics.get('validity'))} (MOSES CharRNN {figure(ref.get('validity'))}), "
        f"novelty {figure(metrics.get('novelty'))} ({figure(ref.get('novelty'))}), "
        f"IntDiv {figure(metrics.get('intdiv'))} ({figure(ref.get('intdiv'))}), "
        f"filters {figure(metrics.get('filters'))} ({figure(ref.get('filters'))})"
    )
