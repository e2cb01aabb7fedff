"""A request for N molecules becomes a job: one item per sample slot, batches on the ``molecules`` queue.

The job delivers exactly ``count`` molecules that are valid, canonical-unique within the job, pass the MOSES
filters and are novel against the MOSES training set (``allow_known`` keeps known ones; ``min_likelihood``
skips the least likely samples). Every sample is an item with a result, delivered or not, with its reason.

The first round stages enough slots for ``count`` at the model's measured yield (:func:`first_round`). When a
round ends short, the job's last finishing batch stages a top-up round (:func:`top_up_items`, sized from the
job's own yield) in the same transaction that completes it, until ``count`` are delivered or ``max_samples``
are spent. Which samples are delivered is decided once, in slot order, when the job ends: the first
``count`` distinct candidates. Every decision depends on sampled molecules only, never on timing, so the
job's molecules are the same however its batches interleave.

Each item's payload says everything its batch needs to regenerate it exactly: the batch's seed (derived
from the job's seed and the batch's sequence number), the slot's position ``k`` in that batch, the batch
size ``n`` and the temperature. A worker samples ``n`` sequences with that seed and keeps the ``k``-th
for each pending item, so a re-delivered or re-run batch produces the same molecules.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import numpy as np

from medbatch import defaults
from medbatch.db import repository as repo
from medbatch.db.session import session_scope
from medbatch.db.tables import BatchStatus
from medbatch.errors import BrokerUnavailable, InvalidInput
from medbatch.extras import require_workload
from medbatch.producer.chunks import RecordChunk
from medbatch.producer.send import Send
from medbatch.producer.staging import Progress, SubmitSummary, ensure_model, stage_job

MAX_COUNT = 1_000_000
#: Default sample budget: this many samples per molecule requested (the shipped model needs about 1.4).
DEFAULT_BUDGET_PER_MOLECULE = 3
#: The most samples one job may spend.
MAX_SAMPLES = 10 * MAX_COUNT
#: Share of samples delivered when the model's card does not say (the shipped model measures 0.72).
DEFAULT_YIELD = 0.7
#: The first round samples this much more than the card's yield predicts, so a top-up round is rarely needed.
FIRST_ROUND_MARGIN = 1.02
#: A top-up round samples this much more than the job's own yield predicts, plus a few.
TOP_UP_MARGIN, TOP_UP_EXTRA = 1.2, 16
#: The lowest yield a top-up is sized for (a job that delivered nothing yet).
MIN_YIELD = 0.05
MIN_TEMPERATURE, MAX_TEMPERATURE = 0.05, 3.0
MAX_SEED = 2**32 - 1
#: The most molecules one batch message asks for (one worker samples them in one go).
MAX_BATCH_ITEMS = 10_000
#: Slots staged per transaction.
CHUNK = 20_000
#: Largest generation request file read (``{"count": N, "seed": S, "temperature": T}`` is a few bytes).
MAX_REQUEST_BYTES = 64 * 1024
REQUEST_FIELDS = ("count", "seed", "temperature", "max_samples", "allow_known", "min_likelihood")


def batch_seed(job_seed: int, seq: int) -> int:
    """The sampling seed of batch ``seq`` of a job seeded with ``job_seed`` (NumPy ``SeedSequence``)."""
    return int(np.random.SeedSequence([job_seed, seq]).generate_state(1, dtype=np.uint32)[0])


def default_batch_size(setting: int) -> int:
    """The batch size of a request that names none: ``MEDBATCH_MOLECULE_BATCH_SIZE``, at most
    :data:`MAX_BATCH_ITEMS`."""
    return min(setting, MAX_BATCH_ITEMS)


def validate_request(
    count: int,
    seed: int,
    temperature: float,
    batch_size: int,
    max_samples: int | None = None,
    min_likelihood: float | None = None,
) -> None:
    """Raise :class:`InvalidInput` with what to fix when a request is out of range."""
    if not isinstance(count, int) or isinstance(count, bool) or not 1 <= count <= MAX_COUNT:
        raise InvalidInput(f"--count must be a whole number from 1 to {MAX_COUNT:,} (got {count!r})")
    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed <= MAX_SEED:
        raise InvalidInput(f"--seed must be a whole number from 0 to {MAX_SEED} (got {seed!r})")
    if not isinstance(temperature, int | float) or not math.isfinite(temperature):
        raise InvalidInput(f"--temperature must be a number (got {temperature!r})")
    if not MIN_TEMPERATURE <= temperature <= MAX_TEMPERATURE:
        raise InvalidInput(
            f"--temperature must be from {MIN_TEMPERATURE} to {MAX_TEMPERATURE} (got {temperature}); "
            "1.0 samples the model as trained, lower is more conservative"
        )
    if not 1 <= batch_size <= MAX_BATCH_ITEMS:
        raise InvalidInput(f"--batch-size must be from 1 to {MAX_BATCH_ITEMS:,} (got {batch_size})")
    if max_samples is not None and (type(max_samples) is not int or not count <= max_samples <= MAX_SAMPLES):
        raise InvalidInput(f"--max-samples must be a whole number from --count ({count:,}) to {MAX_SAMPLES:,}")
    if min_likelihood is not None and (
        type(min_likelihood) not in (int, float) or not math.isfinite(min_likelihood) or min_likelihood > 0
    ):
        raise InvalidInput(
            f"--min-likelihood is a log-likelihood in nats, 0 or below (e.g. -30; got {min_likelihood!r})"
        )


def _whole(value: Any, name: str, lo: int, hi: int) -> int:
    """``value`` as a whole number within ``lo..hi``: a JSON integer, or a float with no fraction
    (``1000.0``); ``1.9``, ``1e400``, ``"10"`` and ``true`` are refused, never rounded or coerced."""
    if type(value) is float and math.isfinite(value) and value.is_integer():
        value = int(value)
    if type(value) is not int or not lo <= value <= hi:
        raise InvalidInput(f"{name} must be a whole number from {lo:,} to {hi:,}")
    return value


def request_from_json(data: Any) -> dict[str, Any]:
    """A generation request from decoded JSON (``count``, optional ``seed``, ``temperature``, ``max_samples``,
    ``allow_known``, ``min_likelihood``), every value checked for its type and range (before
    :func:`validate_request` checks the rest).

    Raises:
        InvalidInput: not an object with ``count``, an unknown field, or a value of the wrong kind.
    """
    if not isinstance(data, dict) or "count" not in data:
        raise InvalidInput('expected {"count": N, "seed": S, "temperature": T}')
    unknown = sorted(set(data) - set(REQUEST_FIELDS))
    if unknown:
        shown = ", ".join(ascii(k)[:40] for k in unknown[:5])
        raise InvalidInput(f"unknown field(s) {shown}; a request takes {', '.join(REQUEST_FIELDS)}")
    temperature = data.get("temperature", 1.0)
    if type(temperature) not in (int, float) or not math.isfinite(temperature):
        raise InvalidInput(f"temperature must be a number from {MIN_TEMPERATURE} to {MAX_TEMPERATURE}")
    allow_known = data.get("allow_known", False)
    if type(allow_known) is not bool:
        raise InvalidInput("allow_known must be true or false")
    min_likelihood = data.get("min_likelihood")
    if min_likelihood is not None and (type(min_likelihood) not in (int, float) or not math.isfinite(min_likelihood)):
        raise InvalidInput("min_likelihood must be a number (a log-likelihood in nats, 0 or below)")
    count = _whole(data["count"], "count", 1, MAX_COUNT)
    request = {
        "count": count,
        "seed": _whole(data.get("seed", 0), "seed", 0, MAX_SEED),
        "temperature": float(temperature),
    }
    if data.get("max_samples") is not None:  # the optional ones only when given: submit's defaults otherwise
        request["max_samples"] = _whole(data["max_samples"], "max_samples", count, MAX_SAMPLES)
    if allow_known:
        request["allow_known"] = True
    if min_likelihood is not None:
        request["min_likelihood"] = float(min_likelihood)
    return request


def expected_yield(model_metrics: dict[str, Any] | None, *, allow_known: bool = False) -> float:
    """Share of samples a job will deliver, from the model card's generated sample (validity x distinct x
    filters x novelty); :data:`DEFAULT_YIELD` when the card does not say. At temperature 1.0 and without
    ``min_likelihood`` it is what the card measured; otherwise the top-up rounds correct it."""
    g = (model_metrics or {}).get("generated") or {}
    parts = [g.get("validity"), g.get("unique_fraction"), g.get("filters")]
    parts += [] if allow_known else [g.get("novelty")]
    if any(not isinstance(v, int | float) or not 0 < v <= 1 for v in parts):
        return DEFAULT_YIELD
    return max(MIN_YIELD, float(math.prod(parts)))


def first_round(count: int, max_samples: int, yield_estimate: float) -> int:
    """Samples of the first round: ``count`` at the expected yield, with :data:`FIRST_ROUND_MARGIN`, in budget."""
    return min(max_samples, max(count, math.ceil(count / yield_estimate * FIRST_ROUND_MARGIN)))


def top_up_samples(options: dict[str, Any], *, delivered: int, sampled: int) -> int:
    """How many more samples a job needs after a round that sampled ``sampled`` and found ``delivered``
    distinct deliverable molecules: none when ``count`` is reached or the budget is spent, else the
    missing ones at the job's own yield (at least :data:`MIN_YIELD`) with a margin, within the budget."""
    missing = int(options["count"]) - delivered
    left = int(options["max_samples"]) - sampled
    if missing <= 0 or left <= 0:
        return 0
    rate = max(MIN_YIELD, delivered / sampled) if sampled else DEFAULT_YIELD
    return min(left, math.ceil(missing / rate * TOP_UP_MARGIN) + TOP_UP_EXTRA)


def slot_item(slot: int, *, seed: int, seq: int, k: int, n: int, temperature: float) -> dict[str, Any]:
    """The item of sample slot ``slot``: the ``k``-th of the ``n`` sequences batch ``seq`` samples."""
    return {
        "item_key": f"slot:{slot}",
        "source_uri": f"generate:seed={seed}",
        "source_row": slot + 1,
        "patient_ref": None,
        "payload": {"slot": slot, "seed": batch_seed(seed, seq), "k": k, "n": n, "temperature": float(temperature)},
    }


def top_up_items(options: dict[str, Any], *, first_slot: int, first_seq: int, samples: int) -> list[list[dict]]:
    """A top-up round: ``samples`` slots from ``first_slot``, in batches of the job's batch size numbered from
    ``first_seq``, each seeded like every batch (:func:`batch_seed`), so a re-run stages the same."""
    size = int(options["batch_size"])
    batches = []
    for i, start in enumerate(range(0, samples, size)):
        n = min(size, samples - start)
        batches.append(
            [
                slot_item(
                    first_slot + start + k,
                    seed=int(options["seed"]),
                    seq=first_seq + i,
                    k=k,
                    n=n,
                    temperature=float(options["temperature"]),
                )
                for k in range(n)
            ]
        )
    return batches


def iter_generation_chunks(count: int, *, seed: int, temperature: float, batch_size: int) -> Iterator[RecordChunk]:
    """The first round's ``count`` slots as items, ``CHUNK`` at a time; chunk sizes are multiples of ``batch_size``
    so that batch ``seq`` holds exactly slots ``seq * batch_size ...``."""
    step = max(batch_size, CHUNK // batch_size * batch_size)
    for start in range(0, count, step):
        items = []
        for slot in range(start, min(count, start + step)):
            seq, k = divmod(slot, batch_size)
            n = min(batch_size, count - seq * batch_size)
            items.append(slot_item(slot, seed=seed, seq=seq, k=k, n=n, temperature=temperature))
        yield RecordChunk(items=items, bytes_read=len(items))


def send_staged(database_url: str, send: Send, job_id: int) -> int:
    """Send every staged (``pending``) batch of a molecule job; returns how many were sent.

    Raises:
        BrokerUnavailable: the rest stay ``pending`` for ``resume`` or the reconciler.
    """
    from medbatch.producer.send import send_batches
    from medbatch.worker.routing import route_for

    with session_scope(database_url) as s:
        pending = repo.unfinished_batches(s, job_id, status=BatchStatus.PENDING.value)
    return send_batches(send, database_url, pending, route_for("molecules").task) if pending else 0


def submit_molecules(
    *,
    database_url: str,
    send: Send,
    count: int,
    seed: int = 0,
    temperature: float = 1.0,
    batch_size: int = defaults.MOLECULE_BATCH_SIZE,
    max_samples: int | None = None,
    allow_known: bool = False,
    min_likelihood: float | None = None,
    model: tuple[str, str] | None = None,
    progress: Progress | None = None,
    submitted_by: str | None = None,
) -> SubmitSummary:
    """Stage a request for ``count`` delivered molecules and queue its first round on the ``molecules`` queue.

    ``max_samples``: the sample budget (default ``3 * count``). ``allow_known``: deliver molecules of the
    MOSES training set too. ``min_likelihood``: skip valid samples whose log-likelihood (nats, at the
    sampling temperature) is below it. ``model`` pins a registered (name, version); by default the
    active molecules model, or the one shipped with medbatch.

    The whole first round is staged before any batch is sent, so the job has left ``staging`` when its
    last batch ends and that batch can stage a top-up round.

    Raises:
        InvalidInput: a value out of range; no model.
        MissingExtra: the ``molecules`` extra is not installed.
        BrokerUnavailable: the broker went away; what was staged stays in the database for ``resume``.
    """
    require_workload("molecules")
    max_samples = DEFAULT_BUDGET_PER_MOLECULE * count if max_samples is None else max_samples
    validate_request(count, seed, temperature, batch_size, max_samples, min_likelihood)
    model = model or ensure_model(database_url, "molecules")
    with session_scope(database_url) as s:
        card = repo.find_model(s, *model).metrics
    samples = first_round(count, max_samples, expected_yield(card, allow_known=allow_known))
    summary = stage_job(
        database_url=database_url,
        workload="molecules",
        source=f"generate:count={count},seed={seed},temperature={temperature}",
        model=model,
        options={
            "count": count,
            "seed": seed,
            "temperature": float(temperature),
            "max_samples": max_samples,
            "allow_known": bool(allow_known),
            "min_likelihood": None if min_likelihood is None else float(min_likelihood),
            "first_round": samples,
        },
        chunks=iter_generation_chunks(samples, seed=seed, temperature=temperature, batch_size=batch_size),
        batch_size=batch_size,
        send=None,
        progress=progress,
        submitted_by=submitted_by,
    )
    try:
        summary.batches_sent = send_staged(database_url, send, summary.job_id)
    except BrokerUnavailable as exc:
        raise BrokerUnavailable(
            f"job {summary.job_id}: all {summary.items_staged} sample slots are staged, but not every batch could "
            f"be sent ({exc}); when the broker is back run `medbatch resume {summary.job_id}`"
        ) from exc
    return summary
