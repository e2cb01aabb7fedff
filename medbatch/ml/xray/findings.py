"""What a positive X-ray result says: the attention region, the draft findings text, the overlay PNG."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from medbatch import defaults


def attention_region(heatmap: np.ndarray) -> str:
    """Where a Grad-CAM heatmap concentrates, in image coordinates: e.g. ``lower zone, image left``.

    Image left/right, not patient left/right: the view (PA/AP) decides which side is which.
    """
    h, w = heatmap.shape
    total = float(heatmap.sum())
    if total <= 0:
        return "no focal area"
    # the centre of mass from the row and column sums (no coordinate grids: a tenth of the time)
    cy = float(heatmap.sum(axis=1) @ np.arange(h)) / total / h
    cx = float(heatmap.sum(axis=0) @ np.arange(w)) / total / w
    zone = "upper" if cy < 1 / 3 else "middle" if cy < 2 / 3 else "lower"
    side = "image left" if cx < 0.45 else "image right" if cx > 0.55 else "central"
    return f"{zone} zone, {side}"


def draft_findings(
    probability: float, threshold: float, heatmap: np.ndarray | None, model: str, flags: Sequence[str]
) -> str:
    """A short draft findings text for a positive result, written to be checked by a clinician."""
    lines = [
        "DRAFT - AI-generated, requires clinician review; not a diagnosis.",
        f"Model {model} estimates the probability of pneumonia at {probability:.2f} "
        f"(threshold {threshold:.2f}): findings suggestive of pneumonia.",
    ]
    if heatmap is not None:
        lines.append(f"Model attention (Grad-CAM) is greatest at: {attention_region(heatmap)} (image coordinates).")
    if flags:
        lines.append("Input notes: " + "; ".join(flags) + ".")
    lines.append("Correlate with the clinical picture and the radiologist's read.")
    return " ".join(lines)


def overlay_png(
    pixels: np.ndarray,
    heatmap: np.ndarray,
    path: Path,
    *,
    max_side: int = defaults.IMAGING_OVERLAY_SIDE_PX,
    caption: str = "",
) -> Path:
    """Save the radiograph with the Grad-CAM heatmap blended over it (jet colours, 40 %) as a PNG.

    Written to a temporary name and renamed, so a reader never sees half a file and a re-run replaces
    the same path with the same bytes.
    """
    from PIL import Image, ImageDraw

    h, w = pixels.shape
    scale = min(1.0, max_side / max(h, w))
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    base = Image.fromarray(np.clip(pixels * 255, 0, 255).astype(np.uint8), mode="L").resize(
        size, Image.Resampling.BILINEAR
    )
    heat = Image.fromarray(np.asarray(heatmap, dtype=np.float32), mode="F").resize(size, Image.Resampling.BILINEAR)
    colours = _jet(np.clip(np.asarray(heat), 0, 1))
    rgb = np.repeat(np.asarray(base)[..., None], 3, axis=-1).astype(np.float32)
    alpha = 0.4 * np.clip(np.asarray(heat), 0, 1)[..., None]
    blended = Image.fromarray(((1 - alpha) * rgb + alpha * colours).astype(np.uint8), mode="RGB")
    if caption:
        ImageDraw.Draw(blended).text((4, 4), caption, fill=(255, 255, 0))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    blended.save(tmp, format="PNG", compress_level=1)  # fast zlib: a review overlay, not an archive
    os.replace(tmp, path)
    return path


def _jet(v: np.ndarray) -> np.ndarray:
    """The jet colour map as (h, w, 3) floats in 0..255."""
    r = np.clip(1.5 - np.abs(4 * v - 3), 0, 1)
    g = np.clip(1.5 - np.abs(4 * v - 2), 0, 1)
    b = np.clip(1.5 - np.abs(4 * v - 1), 0, 1)
    return np.stack([r, g, b], axis=-1) * 255.0
