"""How a binary classifier is measured: one Youden threshold, one block of rates, calibration bins and the
expected calibration error, a reliability plot, a ROC plot.

The tabular models (:mod:`medbatch.ml.tabular`) and the X-ray CNN (:mod:`medbatch.ml.xray`) both use
these, so "sensitivity at the threshold" means the same thing everywhere: a score at or above the
threshold is predicted positive; a rate whose denominator is zero is ``None``, never 0 or NaN.

scikit-learn and matplotlib are imported inside the functions: importing this module costs nothing.
"""

from __future__ import annotations

from typing import Any

import numpy as np

#: Largest number of calibration bins; fewer are used when a bin would hold fewer rows than asked.
CALIBRATION_MAX_BINS = 10
#: A held-out split smaller than this, or with fewer rows than :data:`SMALL_SAMPLE_PER_CLASS` in a class, gets
#: :func:`small_sample_warning`: its AUC, sensitivity and specificity could be anything (n=6 gives AUC 1.0 easily).
SMALL_SAMPLE_N = 30
SMALL_SAMPLE_PER_CLASS = 10


def youden_threshold(y_true: np.ndarray, scores: np.ndarray, *, single_class: float = 0.5) -> float:
    """The score threshold that maximises Youden's J (sensitivity + specificity - 1) on the ROC curve.

    Only finite thresholds are candidates: scikit-learn's first ROC threshold is ``+inf`` ("predict
    nothing positive"), a sentinel, not a threshold a model can store. Ties go to the highest threshold.

    Args:
        y_true: 0/1 (or boolean) truth per row.
        scores: score per row, higher meaning more likely positive.
        single_class: returned when ``y_true`` holds one class only (no ROC curve exists).
    """
    from sklearn.metrics import roc_curve

    y_true = np.asarray(y_true)
    if len(np.unique(y_true)) < 2:
        return float(single_class)
    fpr, tpr, thresholds = roc_curve(y_true, scores)
    finite = np.isfinite(thresholds)
    best = int(np.argmax(np.where(finite, tpr - fpr, -np.inf)))
    return float(thresholds[best])


def small_sample_warning(n: int, positives: int | None = None, *, split: str = "held-out test") -> str | None:
    """A warning when a split is too small for its figures to mean anything, else None.

    Args:
        n: rows (images, patients) in the split.
        positives: rows of the positive class, when the figures are binary (the other class is ``n - positives``).
        split: the split's name in the message.
    """
    per_class = None if positives is None else min(positives, n - positives)
    if n >= SMALL_SAMPLE_N and (per_class is None or per_class >= SMALL_SAMPLE_PER_CLASS):
        return None
    counts = "" if positives is None else f", {positives} positive and {n - positives} negative"
    return (
        f"WARNING: AUC on n={n} is not meaningful: the {split} split holds {n} rows{counts} (fewer than "
        f"{SMALL_SAMPLE_N}, or {SMALL_SAMPLE_PER_CLASS} per class); measure the model on a larger one before relying "
        "on its figures"
    )


def confusion_counts(y_pos: np.ndarray, predicted_pos: np.ndarray) -> dict[str, int]:
    """``{"tn", "fp", "fn", "tp"}`` from boolean truth and boolean predictions."""
    y_pos = np.asarray(y_pos, dtype=bool)
    predicted_pos = np.asarray(predicted_pos, dtype=bool)
    return {
        "tn": int(np.sum(~y_pos & ~predicted_pos)),
        "fp": int(np.sum(~y_pos & predicted_pos)),
        "fn": int(np.sum(y_pos & ~predicted_pos)),
        "tp": int(np.sum(y_pos & predicted_pos)),
    }


def rates(y_pos: np.ndarray, predicted_pos: np.ndarray) -> dict[str, float | None]:
    """Sensitivity, specificity, PPV and NPV (unrounded); ``None`` where the denominator is zero."""
    c = confusion_counts(y_pos, predicted_pos)
    tp, fn, tn, fp = c["tp"], c["fn"], c["tn"], c["fp"]
    return {
        "sensitivity": tp / (tp + fn) if tp + fn else None,
        "specificity": tn / (tn + fp) if tn + fp else None,
        "ppv": tp / (tp + fp) if tp + fp else None,
        "npv": tn / (tn + fn) if tn + fn else None,
    }


def auc_or_none(y_pos: np.ndarray, scores: np.ndarray) -> float | None:
    """ROC AUC of ``scores`` for boolean truth, or ``None`` when only one class is present."""
    from sklearn.metrics import roc_auc_score

    y_pos = np.asarray(y_pos)
    return float(roc_auc_score(y_pos, scores)) if len(np.unique(y_pos)) == 2 else None


def binary_metrics(y_true: np.ndarray, scores: np.ndarray, threshold: float, *, digits: int = 4) -> dict[str, Any]:
    """The one metrics block at a threshold: n, positives, AUC, sensitivity, specificity, accuracy, counts.

    Floats are rounded to ``digits``; AUC is ``None`` with one class, a rate ``None`` with no denominator.
    """
    y_true = np.asarray(y_true)
    y_pos = y_true == 1
    predicted = np.asarray(scores) >= threshold
    counts = confusion_counts(y_pos, predicted)
    r = rates(y_pos, predicted)
    auc = auc_or_none(y_pos, scores)

    def rounded(value: float | None) -> float | None:
        return None if value is None else round(float(value), digits)

    return {
        "n": int(len(y_true)),
        "positives": int(y_pos.sum()),
        "auc": rounded(auc),
        "threshold": rounded(threshold),
        "sensitivity": rounded(r["sensitivity"]),
        "specificity": rounded(r["specificity"]),
        "accuracy": rounded((counts["tp"] + counts["tn"]) / len(y_true)) if len(y_true) else None,
        "confusion_matrix": counts,
    }


def calibration_bins(y_pos: np.ndarray, p: np.ndarray, *, min_rows_per_bin: int) -> list[dict[str, Any]]:
    """Quantile bins of predicted probability: mean predicted vs observed rate per bin (a reliability table).

    Up to :data:`CALIBRATION_MAX_BINS` bins, at least 2, fewer when a bin would hold under
    ``min_rows_per_bin`` rows.
    """
    y_pos = np.asarray(y_pos)
    p = np.asarray(p)
    n_bins = int(max(2, min(CALIBRATION_MAX_BINS, len(p) // min_rows_per_bin)))
    order = np.argsort(p, kind="stable")
    bins = []
    for i, chunk in enumerate(np.array_split(order, n_bins)):
        if len(chunk) == 0:
            continue
        bins.append(
            {
                "bin": i + 1,
                "n": int(len(chunk)),
                "p_min": float(p[chunk].min()),
                "p_max": float(p[chunk].max()),
                "mean_predicted": float(p[chunk].mean()),
                "observed": float(y_pos[chunk].mean()),
            }
        )
    return bins


def expected_calibration_error(y_pos: np.ndarray, p: np.ndarray, *, n_bins: int = CALIBRATION_MAX_BINS) -> float | None:
    """Expected calibration error: ``sum(n_b / n * |observed_b - mean_predicted_b|)`` over ``n_bins``
    equal-width bins of predicted probability on [0, 1] (empty bins skipped); ``None`` without rows."""
    y_pos = np.asarray(y_pos, dtype=np.float64)
    p = np.asarray(p, dtype=np.float64)
    if len(p) == 0:
        return None
    idx = np.minimum((p * n_bins).astype(int), n_bins - 1)
    total = 0.0
    for b in range(n_bins):
        mask = idx == b
        if mask.any():
            total += mask.sum() / len(p) * abs(float(y_pos[mask].mean()) - float(p[mask].mean()))
    return float(total)


def reliability_png(curves: dict[str, list[dict[str, Any]]], title: str) -> bytes:
    """A reliability plot (mean predicted vs observed per bin, one line per model) from
    :func:`calibration_bins` tables, as PNG bytes; the diagonal is perfect calibration."""
    fig, ax = _figure(5)
    top = 0.0
    for label, bins in curves.items():
        xs = [b["mean_predicted"] for b in bins]
        ys = [b["observed"] for b in bins]
        top = max(top, *xs, *ys) if xs else top
        ax.plot(xs, ys, marker="o", markersize=3, label=label)
    top = min(1.0, max(0.05, top * 1.05))
    ax.plot([0, top], [0, top], linestyle="--", color="grey", label="perfect calibration")
    ax.set_xlim(0, top)
    ax.set_ylim(0, top)
    ax.set_xlabel("mean predicted probability (held-out bin)")
    ax.set_ylabel("observed rate")
    ax.set_title(title, fontsize=9)
    ax.legend(loc="upper left", fontsize=7)
    return _png(fig)


def roc_png(y_true: np.ndarray, scores: np.ndarray, threshold: float, title: str) -> bytes:
    """A ROC curve with the chosen operating point, as PNG bytes (only the chance line with one class)."""
    from sklearn.metrics import roc_curve

    fig, ax = _figure(4.5)
    if len(np.unique(y_true)) == 2:
        fpr, tpr, _ = roc_curve(y_true, scores)
        ax.plot(fpr, tpr, label="model")
        m = binary_metrics(y_true, scores, threshold)
        ax.scatter(
            [1 - m["specificity"]], [m["sensitivity"]], color="red", zorder=3, label=f"threshold {threshold:.2f}"
        )
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", label="chance")
    ax.set_xlabel("1 - specificity")
    ax.set_ylabel("sensitivity")
    ax.set_title(title, fontsize=9)
    ax.legend(loc="lower right", fontsize=8)
    return _png(fig)


def _figure(inches: float):
    """``(figure, axes)``: a square matplotlib figure of ``inches`` at 100 dpi, on the headless Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=(inches, inches), dpi=100)


def _png(fig) -> bytes:
    """The figure as PNG bytes (laid out tight); the figure is closed."""
    import io

    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()
