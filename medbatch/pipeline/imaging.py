"""Classify one batch of radiographs: decode in parallel, predict in compiled batches, explain the positives.

Every image is checked against the content hash it was submitted with, decoded (PNG, JPEG or DICOM)
and resized to the model input in a thread pool. Predictions run in fixed-size compiled calls. For
each positive, a Grad-CAM overlay PNG is written under ``results_dir/heatmaps/`` and a short draft
findings text is stored, both marked for clinician review. The batch's results and failures are
written in one transaction; a re-delivered batch writes nothing twice and rewrites the same overlay
file with the same bytes. Each result's detail records the image's input features (intensity, original
size); when the job has finished, its drift against the training images is measured from them
(:mod:`medbatch.pipeline.drift`).
"""

from __future__ import annotations

import hashlib
import logging
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medbatch import defaults
from medbatch.errors import RetryableError
from medbatch.ml import images
from medbatch.pipeline.common import item_failure, measure_drift_when_done, run_batch

log = logging.getLogger("medbatch.pipeline.imaging")

#: Longest side of the radiograph kept for the overlay PNG (the full image is not held in memory).
OVERLAY_SIDE = defaults.IMAGING_OVERLAY_SIDE_PX
OVERLAY_CAPTION = "DRAFT: model attention, not a diagnosis"


@dataclass(frozen=True)
class ImagingOptions:
    """Worker-side limits and locations for imaging batches (plain values from the settings)."""

    results_dir: Path
    decode_threads: int = defaults.IMAGING_DECODE_THREADS
    predict_batch: int = defaults.IMAGING_PREDICT_BATCH_IMAGES
    max_pixels: int = images.DEFAULT_MAX_PIXELS
    max_bytes: int = images.DEFAULT_MAX_BYTES
    modalities: tuple[str, ...] = tuple(sorted(images.RADIOGRAPH_MODALITIES))
    #: The pool child's memory limit (bytes, 0 = none): each decode thread may cost its share of it.
    child_memory_bytes: int = 0
    #: How to reach a PACS for items staged from one (:class:`medbatch.interop.dicomweb.PacsAccess`).
    pacs: Any = None


@dataclass
class _Decoded:
    model_input: np.ndarray
    display: np.ndarray
    image: images.DecodedImage


def heatmap_path(results_dir: Path, item_id: int) -> Path:
    """Where the Grad-CAM overlay of an item is written (one file per item: re-runs replace it)."""
    return Path(results_dir) / "heatmaps" / f"item-{item_id}.png"


def _decode(item: Any, size: int, opts: ImagingOptions) -> _Decoded:
    payload = item.payload
    if "sop" in payload:  # staged from a PACS: retrieved here by WADO-RS (no shared disk needed)
        from medbatch.interop.dicomweb import retrieve_checked

        data, name = retrieve_checked(payload, opts.pacs, max_bytes=opts.max_bytes), "instance.dcm"
    else:
        data, name = images.read_file(Path(payload["path"]), max_bytes=opts.max_bytes), Path(payload["path"]).name
        actual = hashlib.sha256(data).hexdigest()
        if actual != payload["sha256"]:
            raise images.ImageRejected(
                "file content changed since it was submitted "
                f"(sha256 now {actual[:12]}..., at submission {payload['sha256'][:12]}...)"
            )
    image = images.decode(
        data,
        name=name,
        max_pixels=opts.max_pixels,
        modalities=opts.modalities,
        max_decoded_bytes=images.decode_budget(opts.child_memory_bytes, opts.decode_threads),
    )
    del data
    return _shrink(image, size)


def _shrink(image: images.DecodedImage, size: int) -> _Decoded:
    h, w = image.pixels.shape
    scale = min(1.0, OVERLAY_SIDE / max(h, w))
    display = _resize_keep_aspect(image.pixels, scale) if scale < 1 else image.pixels
    model_input = images.resize(image.pixels, size)
    image.pixels = np.empty((0, 0), dtype=np.float32)  # drop the full-size array now; shape is kept separately
    return _Decoded(model_input=model_input, display=display, image=image)


def _resize_keep_aspect(pixels: np.ndarray, scale: float) -> np.ndarray:
    from PIL import Image

    h, w = pixels.shape
    img = Image.fromarray(np.ascontiguousarray(pixels, dtype=np.float32), mode="F")
    out = img.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.Resampling.BILINEAR)
    return np.asarray(out, dtype=np.float32)


def classify_items(model: Any, items: list, opts: ImagingOptions) -> tuple[list[dict], list[dict]]:
    """Classify every item; an image that cannot be read or scored becomes a failure with its reason.

    The stages overlap instead of running one after the other over the whole batch: the decode threads
    work ahead while the model scores the first ``predict_batch`` decoded images, Grad-CAM runs once that
    many positives are waiting (or at the end), and each overlay PNG is written by the same threads while
    the model goes on. Every overlay is on disk before this returns (its path is in the result).

    Returns:
        ``(results, failures)`` for :func:`medbatch.db.repository.complete_batch`.
    """
    size = model.input_size
    threshold = model.threshold
    failures: list[dict] = []
    scored: list[tuple[Any, _Decoded, float]] = []
    heatmaps: dict[int, np.ndarray] = {}

    def one(item: Any) -> tuple[Any, _Decoded | None, str | None]:
        try:
            return item, _decode(item, size, opts), None
        except images.ImageRejected as exc:
            return item, None, str(exc)
        except MemoryError:
            return item, None, "image too large to decode in this worker's memory"
        except RetryableError:
            raise  # a PACS that is down fails no image: the batch is handed back and retried
        except Exception as exc:  # noqa: BLE001 - a decoder bug on a hostile file fails that image only
            log.warning("item %s: decoder raised %s", item.id, type(exc).__name__)
            return item, None, f"image could not be decoded: {type(exc).__name__}: {exc}"

    # One pool for decodes and overlays: never more than decode_threads images in memory at full size
    # (the decode budget counts on it); overlays queue behind the decodes, which the model needs first.
    pool = ThreadPoolExecutor(max_workers=opts.decode_threads)
    try:
        decoding = [pool.submit(one, it) for it in items]
        waiting: list[tuple[Any, _Decoded]] = []  # decoded, not scored yet
        explaining: list[tuple[Any, _Decoded]] = []  # positive, no heatmap yet
        writing: list[Future] = []

        def score_waiting() -> None:
            probs = model.predict(np.stack([d.model_input for _, d in waiting]))
            for (it, dec), p in zip(waiting, probs.tolist(), strict=True):
                scored.append((it, dec, p))
                if p >= threshold:
                    explaining.append((it, dec))
            waiting.clear()

        def explain(at_least: int) -> None:
            while explaining and len(explaining) >= at_least:
                chunk = explaining[: opts.predict_batch]
                del explaining[: len(chunk)]
                maps = model.gradcam(np.stack([dec.model_input for _, dec in chunk]))
                for (it, dec), heat in zip(chunk, maps, strict=True):
                    heatmaps[it.id] = heat
                    path = heatmap_path(opts.results_dir, it.id)
                    writing.append(pool.submit(_write_overlay, dec.display, heat, path))

        for future in decoding:
            item, dec, reason = future.result()
            if dec is None:
                failures.append(item_failure(item, reason or "unreadable image", stage="decode"))
                continue
            waiting.append((item, dec))
            if len(waiting) >= opts.predict_batch:
                score_waiting()
                explain(opts.predict_batch)
        if waiting:
            score_waiting()
        explain(1)
        for future in writing:  # PNG encoding (zlib) releases the GIL: written in parallel, before the commit
            future.result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return [_result(model, it, dec, p, heatmaps.get(it.id), opts) for it, dec, p in scored], failures


def _write_overlay(display: np.ndarray, heat: np.ndarray, path: Path) -> Path:
    from medbatch.ml import xray

    return xray.overlay_png(display, heat, path, caption=OVERLAY_CAPTION)


def _result(model: Any, it: Any, dec: _Decoded, p: float, heat: np.ndarray | None, opts: ImagingOptions) -> dict:
    """The result row of one scored image; ``heat`` (its Grad-CAM map) is given for a positive only."""
    from medbatch.ml import xray

    threshold = model.threshold
    is_pos = p >= threshold
    detail: dict[str, Any] = {
        "probability": round(p, 6),
        "threshold": threshold,
        "kind": dec.image.kind,
        "modality": dec.image.modality,
        "original_size": list(dec.image.original_shape),
        # what the drift check compares with the training images (pipeline/drift.py reads it back)
        "input_features": xray.input_features(dec.model_input, dec.image.original_shape),
        "flags": dec.image.flags,
        "requires_review": bool(is_pos),
        "heatmap": None,
        "findings": None,
    }
    if is_pos:
        detail["heatmap"] = str(heatmap_path(opts.results_dir, it.id).resolve())
        detail["attention"] = xray.attention_region(heat)
        detail["findings"] = xray.draft_findings(p, threshold, heat, f"{model.name} {model.version}", dec.image.flags)
    return {
        "item_id": it.id,
        "model_name": model.name,
        "model_version": model.version,
        "label": model.positive_label if is_pos else model.negative_label,
        "score": round(p, 6),
        "detail": detail,
    }


def classify_batch(
    batch_id: int,
    *,
    database_url: str,
    max_attempts: int,
    options: ImagingOptions,
    expected_db: str | None = None,
) -> dict[str, Any]:
    """Classify an X-ray batch and persist the outcome (idempotent, like every batch).

    Returns:
        A small summary: batch id, status, counts of results and failures.
    """
    out = run_batch(
        batch_id,
        database_url=database_url,
        max_attempts=max_attempts,
        predict=lambda model, items: classify_items(model, items, options),
        expected_db=expected_db,
        workloads=("xray",),
    )
    measure_drift_when_done(database_url, out)
    return out
