"""A molecule-generation request becomes a job: one item per molecule slot, batches on the ``molecules`` queue.

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
from medbatch.errors import InvalidInput
from medbatch.extras import require_workload
from medbatch.producer.records import RecordChunk
from medbatch.producer.send import Send
from medbatch.producer.staging import Progress, SubmitSummary, ensure_model, stage_job

MAX_COUNT = 1_000_000
MIN_TEMPERATURE, MAX_TEMPERATURE = 0.05, 3.0
MAX_SEED = 2**32 - 1
#: The most molecules one batch message asks for (one worker samples them in one go).
MAX_BATCH_ITEMS = 10_000
#: Slots staged per transaction.
CHUNK = 20_000
#: Largest generation request file read (``{"count": N, "seed": S, "temperature": T}`` is a few bytes).
MAX_REQUEST_BYTES = 64 * 1024
REQUEST_FIELDS = ("count", "seed", "temperature")


def batch_seed(job_seed: int, seq: int) -> int:
    """The sampling seed of batch ``seq`` of a job seeded with ``job_seed`` (NumPy ``SeedSequence``)."""
    return int(np.random.SeedSequence([job_seed, seq]).generate_state(1, dtype=np.uint32)[0])


def default_batch_size(setting: int) -> int:
    """The batch size of a request that names none: ``MEDBATCH_BATCH_SIZE``, at most :data:`MAX_BATCH_ITEMS`
    (the setting also sizes tabular batches, where up to 100,000 is allowed)."""
    return min(setting, MAX_BATCH_ITEMS)


def validate_request(count: int, seed: int, temperature: float, batch_size: int) -> None:
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


def _whole(value: Any, name: str, lo: int, hi: int) -> int:
    """``value`` as a whole number within ``lo..hi``: a JSON integer, or a float with no fraction
    (``1000.0``); ``1.9``, ``1e400``, ``"10"`` and ``true`` are refused, never rounded or coerced."""
    if type(value) is float and math.isfinite(value) and value.is_integer():
        value = int(value)
    if type(value) is not int or not lo <= value <= hi:
        raise InvalidInput(f"{name} must be a whole number from {lo:,} to {hi:,}")
    return value


def request_from_json(data: Any) -> dict[str, Any]:
    """A generation request from decoded JSON, every value checked for its type and range (before
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
    return {
        "count": _whole(data["count"], "count", 1, MAX_COUNT),
        "seed": _whole(data.get("seed", 0), "seed", 0, MAX_SEED),
        "temperature": float(temperature),
    }


def iter_generation_chunks(count: int, *, seed: int, temperature: float, batch_size: int) -> Iterator[RecordChunk]:
    """The job's slots as items, ``CHUNK`` at a time; chunk sizes are multiples of ``batch_size`` so that
    batch ``seq`` holds exactly slots ``seq * batch_size ...``."""
    step = max(batch_size, CHUNK // batch_size * batch_size)
    for start in range(0, count, step):
        items = []
        for slot in range(start, min(count, start + step)):
            seq, k = divmod(slot, batch_size)
            n = min(batch_size, count - seq * batch_size)
            items.append(
                {
                    "item_key": f"slot:{slot}",
                    "source_uri": f"generate:seed={seed}",
                    "source_row": slot + 1,
                    "patient_ref": None,
                    "payload": {
                        "slot": slot,
                        "seed": batch_seed(seed, seq),
                        "k": k,
                        "n": n,
                        "temperature": float(temperature),
                    },
                }
            )
        yield RecordChunk(items=items, bytes_read=len(items))


def submit_molecules(
    *,
    database_url: str,
    send: Send,
    count: int,
    seed: int = 0,
    temperature: float = 1.0,
    batch_size: int = defaults.BATCH_SIZE_ITEMS,
    model: tuple[str, str] | None = None,
    progress: Progress | None = None,
    submitted_by: str | None = None,
) -> SubmitSummary:
    """Stage a request for ``count`` molecules and queue its batches on the ``molecules`` queue.

    ``model`` pins a registered (name, version); by default the active molecules model, or the one
    shipped with medbatch.

    Raises:
        InvalidInput: count, seed, temperature or batch size out of range; no model.
        MissingExtra: the ``molecules`` extra is not installed.
        BrokerUnavailable: the broker went away; what was staged stays in the database for ``resume``.
    """
    require_workload("molecules")
    validate_request(count, seed, temperature, batch_size)
    model = model or ensure_model(database_url, "molecules")
    return stage_job(
        database_url=database_url,
        workload="molecules",
        source=f"generate:count={count},seed={seed},temperature={temperature}",
        model=model,
        options={"count": count, "seed": seed, "temperature": float(temperature)},
        chunks=iter_generation_chunks(count, seed=seed, temperature=temperature, batch_size=batch_size),
        batch_size=batch_size,
        send=send,
        progress=progress,
        submitted_by=submitted_by,
    )
