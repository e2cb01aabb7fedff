"""The morning after: one self-contained HTML page per night (plots inside the page as PNG data).

``medbatch report-night DATE`` writes it; the nightly run writes it when it has waited for its jobs.
A night is noon to noon in ``MEDBATCH_TIMEZONE`` (see :func:`medbatch.nightly.night_window`). The page holds patient
identifiers and file paths for the flagged items (a reviewer must find them): it is for internal use and
is written next to the results, never sent anywhere.
"""

from __future__ import annotations

import base64
import html
import io
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

from medbatch.db import repository as repo
from medbatch.db.repository import morning as q
from medbatch.db.session import session_scope
from medbatch.defaults import DRIFT_OUT_OF_RANGE_MAX, DRIFT_PSI_MAX
from medbatch.ml.moses import MOSES_CHARRNN
from medbatch.molecule_metrics import SELECTED, TABLE_KEYS, comparison_rows, delivery_line
from medbatch.reviews import agreement_text


def collect(database_url: str, night: date, tz: str = "UTC") -> dict[str, Any]:
    """Everything the page shows, as plain data (also printed by ``report-night --json``)."""
    from medbatch.nightly import night_window

    start, end = night_window(night, tz)
    with session_scope(database_url) as s:
        jobs = q.jobs_between(s, start, end)
        ids = [j.id for j in jobs]
        by_workload: dict[str, list[int]] = {}
        rows = []
        for j in jobs:
            by_workload.setdefault(j.workload, []).append(j.id)
            c = repo.job_counts(s, j.id)
            duration = (j.finished_at - j.created_at).total_seconds() if j.finished_at and j.created_at else None
            rows.append(
                {
                    "job_id": j.id,
                    "workload": j.workload,
                    "status": c["status"],
                    "source": j.source_uri,
                    "items_total": c["items_total"],
                    "items_done": c["items_done"],
                    "items_failed": c["items_failed"],
                    "items_pending": c["items_pending"],
                    "rows_rejected": c["rows_rejected"],
                    "model": f"{j.model_name} {j.model_version}",
                    "submitted_by": j.submitted_by,
                    "created_at": _iso(j.created_at),
                    "finished_at": _iso(j.finished_at),
                    "duration_s": duration,
                    "metrics": getattr(j, "metrics", None),
                }
            )
        flagged_total, flagged = q.flagged_xrays(s, by_workload.get("xray", []), limit=50)
        data = {
            "night": night.isoformat(),
            "window": [start.isoformat(timespec="minutes"), end.isoformat(timespec="minutes")],
            "generated_at": datetime.now(start.tzinfo).isoformat(timespec="seconds"),
            "timezone": tz,
            "jobs": rows,
            "errors": q.error_groups(s, ids),
            "throughput": q.results_per_minute(s, ids),
            "risk_scores": q.scores(s, by_workload.get("risk", [])),
            "xray_probabilities": q.scores(s, by_workload.get("xray", [])),
            "molecule_qed": q.scores(s, by_workload.get("molecules", [])),
            "labels": {w: q.label_totals(s, js) for w, js in by_workload.items()},
            "flagged_xrays": flagged,
            "flagged_xrays_total": flagged_total,
            "reports_to_review": q.reports_to_review(s, by_workload.get("report", [])),
            "models": q.model_usage(s, ids),
            "reviews": [
                {"model": name, "version": version, **tally}
                for (name, version), tally in sorted(repo.review_agreement(s).items())
            ],
            "llm": q.llm_usage(s, by_workload.get("report", [])),
            "dead_batches": q.dead_batches(s, ids),
            "dicom_undelivered": repo.delivery_failures(s, by_workload.get("xray", []), limit=20),
            "inbox": [
                {"path": e.path, "workload": e.workload, "status": e.status, "reason": e.reason, "job_id": e.job_id}
                for e in repo.night_entries(s, start, end)
            ],
        }
    thresholds = {f.get("threshold") for f in data["flagged_xrays"] if f.get("threshold") is not None}
    data["xray_threshold"] = thresholds.pop() if len(thresholds) == 1 else None
    return data


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat(timespec="seconds") if moment else None


# --------------------------------------------------------------------------- plots


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=90)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def plots(data: dict[str, Any]) -> dict[str, str]:
    """The page's plots as PNG data URIs, keyed by name; a plot with no data is left out."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out: dict[str, str] = {}
    if data["jobs"]:
        workloads = sorted({j["workload"] for j in data["jobs"]})
        parts = {"done": "#2e7d32", "failed": "#c62828", "rejected": "#ef6c00", "pending": "#9e9e9e"}
        keys = {"done": "items_done", "failed": "items_failed", "rejected": "rows_rejected", "pending": "items_pending"}
        fig, ax = plt.subplots(figsize=(6.5, 2.6))
        left = [0] * len(workloads)
        for part, colour in parts.items():
            vals = [sum(j[keys[part]] for j in data["jobs"] if j["workload"] == w) for w in workloads]
            ax.barh(workloads, vals, left=left, color=colour, label=part)
            left = [a + b for a, b in zip(left, vals, strict=True)]
        ax.set_xlabel("items")
        ax.legend(loc="lower right", fontsize=7, ncol=4)
        ax.set_title("items per workload and state", fontsize=9)
        out["states"] = _png(fig)
    if data["throughput"]:
        import matplotlib.dates as mdates

        minutes = [datetime.fromisoformat(m) for m, _n in data["throughput"]]
        fig, ax = plt.subplots(figsize=(6.5, 2.4))
        ax.bar(minutes, [n for _m, n in data["throughput"]], width=1 / 1440, align="edge", color="#1565c0")
        span = max(minutes) - min(minutes)
        pad = max(span * 0.05, timedelta(minutes=5))
        ax.set_xlim(min(minutes) - pad, max(minutes) + pad + timedelta(minutes=1))
        ax.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M"))
        ax.set_ylabel("results / minute")
        ax.set_title(f"throughput over the night (UTC, from {min(minutes):%Y-%m-%d})", fontsize=9)
        out["throughput"] = _png(fig)
    for key, title, xlabel in (
        ("risk_scores", "risk scores", "P(outcome)"),
        ("xray_probabilities", "X-ray probabilities", "P(pneumonia)"),
        ("molecule_qed", "generated molecules", "QED"),
    ):
        values = data[key]
        if not values:
            continue
        fig, ax = plt.subplots(figsize=(4.2, 2.4))
        ax.hist(values, bins=30, range=(0, 1), color="#1565c0")
        if key == "xray_probabilities" and data.get("xray_threshold") is not None:
            ax.axvline(data["xray_threshold"], color="red", linestyle="--", label="threshold")
            ax.legend(fontsize=7)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("count")
        ax.set_title(f"{title} (n={len(values):,})", fontsize=9)
        out[key] = _png(fig)
    return out


def _thumbnail(path: str | None, side: int = 160) -> str | None:
    if not path:
        return None
    try:
        from PIL import Image

        with Image.open(path) as img:
            img.thumbnail((side, side))
            buf = io.BytesIO()
            img.convert("RGB").save(buf, format="PNG")
    except (OSError, ValueError):
        return None
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


# --------------------------------------------------------------------------- the page

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#212121;max-width:1100px}
h1{font-size:22px;margin-bottom:4px} h2{font-size:17px;margin-top:28px;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:13px;margin:8px 0} td,th{border:1px solid #ddd;padding:4px 8px;
text-align:left;vertical-align:top} th{background:#f5f5f5} .num{text-align:right}
.bad{color:#c62828;font-weight:600} .ok{color:#2e7d32;font-weight:600} .note{color:#616161;font-size:12px}
.plots img{margin:4px;border:1px solid #eee} .banner{background:#fff3e0;border:1px solid #ffb74d;padding:8px;
font-size:13px} .findings{max-width:460px;font-size:12px}
"""


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value))


def _table(headers: list[str], rows: list[list[Any]], numeric: set[int] | None = None) -> str:
    numeric = numeric or set()
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = "".join(
        "<tr>" + "".join(f"<td{' class=num' if i in numeric else ''}>{c}</td>" for i, c in enumerate(r)) + "</tr>"
        for r in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def _drifted(job: dict[str, Any]) -> list[str]:
    return list((((job.get("metrics") or {}).get("drift")) or {}).get("flagged") or [])


def render(data: dict[str, Any]) -> str:
    """The self-contained HTML page for ``data`` (from :func:`collect`)."""
    pics = plots(data)
    jobs = data["jobs"]
    attention = [j for j in jobs if j["status"] not in ("completed",) or _drifted(j)]
    verdict = (
        '<p class="ok">Every job completed cleanly.</p>'
        if jobs and not attention and not data["dead_batches"] and not (data.get("dicom_undelivered") or [0])[0]
        else ('<p class="bad">Needs attention: see the jobs and errors below.</p>' if jobs else "<p>No jobs.</p>")
    )
    parts = [
        "<!doctype html><html lang=en><head><meta charset=utf-8>",
        f"<title>medbatch night of {_e(data['night'])}</title><style>{CSS}</style></head><body>",
        f"<h1>medbatch: the night of {_e(data['night'])}</h1>",
        f"<p class=note>Jobs submitted {_e(data['window'][0])} to {_e(data['window'][1])}; "
        f"written {_e(data['generated_at'])}.</p>",
        '<p class="banner">Internal: this page names source files and patient identifiers of flagged items. '
        "Every model output is decision support awaiting a clinician's review, not a diagnosis.</p>",
        verdict,
        f"<p><b>{data['flagged_xrays_total']}</b> X-ray positive(s) and <b>{data['reports_to_review']}</b> "
        "draft report(s) await clinical review.</p>",
        "<h2>Jobs</h2>",
        _table(
            ["job", "workload", "status", "items", "done", "failed", "rejected", "model", "by", "duration"],
            [
                [
                    _e(j["job_id"]),
                    _e(j["workload"]),
                    f'<span class="{"ok" if j["status"] == "completed" else "bad"}">{_e(j["status"])}</span>',
                    _e(j["items_total"]),
                    _e(j["items_done"]),
                    _e(j["items_failed"]),
                    _e(j["rows_rejected"]),
                    _e(j["model"]),
                    _e(j["submitted_by"]),
                    _e(f"{j['duration_s']:.0f} s" if j["duration_s"] is not None else "unfinished"),
                ]
                for j in jobs
            ],
            numeric={3, 4, 5, 6},
        ),
    ]
    if pics:
        parts.append('<h2>Plots</h2><div class="plots">')
        parts += [f'<img alt="{_e(k)}" src="{v}">' for k, v in pics.items()]
        parts.append("</div>")
    parts.append("<h2>Errors by reason</h2>")
    if data["errors"]:
        parts.append(
            _table(
                ["workload", "stage", "reason", "count", "for example"],
                [
                    [
                        _e(g["workload"]),
                        _e(g["stage"]),
                        _e(g["reason"]),
                        _e(g["count"]),
                        "<br>".join(_e(x["source"]) for x in g["examples"]),
                    ]
                    for g in data["errors"]
                ],
                numeric={3},
            )
        )
    else:
        parts.append("<p>No errors.</p>")
    if data["dead_batches"]:
        parts.append(f'<p class="bad">{data["dead_batches"]} batch(es) were dead-lettered.</p>')
    undelivered, failures = data.get("dicom_undelivered") or (0, [])
    if undelivered:
        parts.append(f"<h2>Findings not delivered to the PACS ({undelivered})</h2>")
        parts.append(
            _table(
                ["job", "object", "destination", "tries", "reason"],
                [
                    [_e(f["job_id"]), _e(f["kind"].upper()), _e(f["destination"]), _e(f["attempts"]), _e(f["reason"])]
                    for f in failures
                ],
                numeric={3},
            )
        )
    parts.append(f"<h2>X-ray positives awaiting review ({data['flagged_xrays_total']})</h2>")
    if data["flagged_xrays"]:
        shown = data["flagged_xrays"]
        rows = []
        for f in shown:
            thumb = _thumbnail(f.get("heatmap"))
            img = f'<img alt="Grad-CAM overlay" src="{thumb}">' if thumb else "(no overlay)"
            rows.append(
                [
                    img,
                    _e(f["source"]),
                    _e(f["patient_id"]),
                    _e(f"{f['probability']:.3f}"),
                    f'<div class="findings">{_e(f["findings"])}</div>',
                ]
            )
        parts.append(_table(["overlay", "file", "patient", "P(pneumonia)", "draft findings"], rows))
        if data["flagged_xrays_total"] > len(shown):
            parts.append(f"<p class=note>The {len(shown)} most probable shown; all are in `medbatch results`.</p>")
    else:
        parts.append("<p>None.</p>")
    molecule_jobs = [j for j in jobs if j["workload"] == "molecules" and j.get("metrics")]
    if molecule_jobs:
        parts.append("<h2>Generated molecules</h2>")
        rows = []
        for j in molecule_jobs:
            line = delivery_line(j["metrics"])
            for label, cells in comparison_rows(j["metrics"], MOSES_CHARRNN)[:-1]:
                rows.append([_e(f"job {j['job_id']}: {label}")] + [_e(v) for v in cells])
            if line:
                parts.append(f"<p>job {j['job_id']}: {_e(line)}</p>")
        rows.append(["MOSES CharRNN (reference)"] + [_e(v) for v in comparison_rows(None, MOSES_CHARRNN)[-1][1]])
        parts.append(_table(["", *TABLE_KEYS], rows))
        parts.append(
            f"<p class=note>raw: every sample, as MOSES measures the model; delivered: the molecules kept, "
            f"{SELECTED!r} where a column holds by construction.</p>"
        )
    drift_jobs = [j for j in jobs if ((j.get("metrics") or {}).get("drift") or {}).get("available")]
    if drift_jobs:
        parts.append("<h2>Input drift (tonight vs the training data)</h2>")
        rows = []
        for j in drift_jobs:
            d = j["metrics"]["drift"]
            worst = sorted(d["features"].items(), key=lambda kv: -kv[1]["psi"])[:3]
            sc = d.get("scores")
            rows.append(
                [
                    _e(f"job {j['job_id']} ({j['workload']})"),
                    _e(d.get("n")),
                    f'<span class="bad">{_e(", ".join(d["flagged"]))}</span>' if d["flagged"] else "none",
                    _e("; ".join(f"{k} {v['psi']:.2f} / {v['out_of_range_share']:.0%}" for k, v in worst)),
                    _e("" if not sc else f"{sc['mean']:.3f} vs {sc['reference_mean']:.3f}"),
                ]
            )
        parts.append(
            _table(
                [
                    "job",
                    "rows",
                    f"drifted (PSI > {DRIFT_PSI_MAX} or > {DRIFT_OUT_OF_RANGE_MAX:.0%} outside range)",
                    "largest PSI / outside range",
                    "mean score vs held out",
                ],
                rows,
                numeric={1},
            )
        )
    parts.append("<h2>Models used</h2>")
    parts.append(
        _table(
            ["model", "version", "results"],
            [[_e(m["model"]), _e(m["version"]), _e(m["results"])] for m in data["models"]],
            numeric={2},
        )
        if data["models"]
        else "<p>None.</p>"
    )
    parts.append("<h2>Reviewers' verdicts (all imported, per model version)</h2>")
    parts.append(
        _table(
            ["model", "version", "reviewed", "verdicts"],
            [[_e(r["model"]), _e(r["version"]), _e(r["reviewed"]), _e(agreement_text(r))] for r in data["reviews"]],
            numeric={2},
        )
        if data.get("reviews")
        else "<p>None imported (`medbatch review import FILE.csv`).</p>"
    )
    parts.append("<h2>Language model use</h2>")
    parts.append(
        _table(
            ["provider", "model", "reports", "tokens in", "tokens out", "estimated cost (USD)"],
            [
                [
                    _e(x["provider"]),
                    _e(x["model"]),
                    _e(x["reports"]),
                    _e(x["tokens_in"]),
                    _e(x["tokens_out"]),
                    _e("n/a" if x["cost_usd"] is None else f"{x['cost_usd']:.4f}"),
                ]
                for x in data["llm"]
            ],
            numeric={2, 3, 4, 5},
        )
        if data["llm"]
        else "<p>None.</p>"
    )
    if data["inbox"]:
        parts.append("<h2>Inbox</h2>")
        parts.append(
            _table(
                ["file", "workload", "status", "job", "reason"],
                [
                    [_e(e["path"]), _e(e["workload"]), _e(e["status"]), _e(e["job_id"]), _e(e["reason"])]
                    for e in data["inbox"]
                ],
            )
        )
    parts.append("</body></html>")
    return "\n".join(parts)


def write_night(database_url: str, night: date, out_dir: Path, tz: str = "UTC") -> Path:
    """Collect and render the night's page into ``out_dir/night-YYYY-MM-DD.html``; returns the path."""
    data = collect(database_url, night, tz)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"night-{night.isoformat()}.html"
    tmp = path.with_suffix(".html.tmp")
    tmp.write_text(render(data), encoding="utf-8")
    tmp.replace(path)
    return path
