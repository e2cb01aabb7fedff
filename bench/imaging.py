"""Benchmark: a folder of radiographs -> staged -> classified (+ Grad-CAM for positives) -> results in SQL.

Images: PNG at 150x150, PNG at 1024x1024 and 12-bit MONOCHROME1 DICOM at 1024x1024 (synthetic).
The model is the default architecture (the article's CNN, 150x150 input) with seeded weights:
speed does not depend on what the weights learned.

Prints images/s end to end (submit with hashing, the queue, one imaging worker, the database), and the
ratio to a raw in-process loop over the same files with the same decode, resize, model, batch size and
Grad-CAM overlays for the same positives, run in the same process as this script. Peak RSS of the worker
(parent and child, read from the kernel's high-water marks after the run: nothing samples it meanwhile) is
reported too, and the first image of a night: one image submitted to the idle worker just started, from the
command's start to its exit (it is the warm-up of the timed run).

    python bench/imaging.py [--per-kind 100] [--database-url postgresql+psycopg://...]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import psutil
from sqlalchemy import create_engine, text

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import BenchDatabase, reaped_cpu, timed_submit, tree_cpu  # noqa: E402
from medbatch.producer.synthetic import synthetic_xray, write_synthetic_dicom  # noqa: E402


def make_images(folder: Path, per_kind: int) -> list[Path]:
    from PIL import Image

    rng = np.random.default_rng(0)
    paths: list[Path] = []
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(per_kind):
        small = folder / f"small-{i:05d}.png"
        big = folder / f"big-{i:05d}.png"
        dcm = folder / f"dicom-{i:05d}.dcm"
        if not small.exists():
            Image.fromarray((synthetic_xray(i % 2, 150, rng) * 255).astype(np.uint8)).save(small)
        if not big.exists():
            Image.fromarray((synthetic_xray(i % 2, 1024, rng) * 255).astype(np.uint8)).save(big)
        if not dcm.exists():
            write_synthetic_dicom(dcm, synthetic_xray(i % 2, 1024, rng), patient_id=f"BENCH-{i}")
        paths += [small, big, dcm]
    return sorted(paths)


def make_model(directory: Path) -> Path:
    from medbatch.ml import registry, xray
    from medbatch.ml.artifacts import tf_module

    tf_module()  # TensorFlow loaded as medbatch loads it: its start-up lines filtered
    import keras

    keras.utils.set_random_seed(0)
    model = xray.build_model(xray.XrayConfig())
    meta = {
        "format": xray.ARTIFACT_FORMAT,
        "name": "xray",
        "input_size": 150,
        "channels": 1,
        "threshold": 0.5,
        "class_names": list(xray.CLASS_NAMES),
        "training_data": {"root": "untrained: benchmark weights", "notes": []},
    }
    return registry.save_versioned(lambda d: xray.save_model(model, meta, d), directory, "xray-bench")


def raw_loop(
    paths: list[Path], artifact: Path, batch: int, predict_batch: int, threads: int, out: Path
) -> tuple[float, float]:
    """The same work in one process: read, decode, resize, predict, Grad-CAM + overlay for positives.

    Returns (wall seconds, CPU seconds) of the loop, the model load excluded."""
    from medbatch.ml import images, xray
    from medbatch.pipeline.imaging import OVERLAY_CAPTION, OVERLAY_SIDE, _resize_keep_aspect

    model = xray.load_model(artifact)
    model.predict(np.zeros((1, 150, 150), np.float32))  # compile once, as the worker's warm-up did

    def decode(p: Path):
        img = images.read_image(p)
        h, w = img.pixels.shape
        scale = min(1.0, OVERLAY_SIDE / max(h, w))
        display = _resize_keep_aspect(img.pixels, scale) if scale < 1 else img.pixels
        return images.resize(img.pixels, 150), display

    start, cpu = time.perf_counter(), _own_cpu()
    with ThreadPoolExecutor(threads) as pool:
        for s in range(0, len(paths), batch):
            chunk = paths[s : s + batch]
            decoded = list(pool.map(decode, chunk))
            x = np.stack([d[0] for d in decoded])
            probs = np.concatenate([model.predict(x[i : i + predict_batch]) for i in range(0, len(x), predict_batch)])
            pos = np.flatnonzero(probs >= model.threshold)
            overlays = []
            for i in range(0, len(pos), predict_batch):
                idx = pos[i : i + predict_batch]
                overlays += [
                    (decoded[j][1], h, out / f"raw-{s + j}.png")
                    for j, h in zip(idx, model.gradcam(x[idx]), strict=True)
                ]
            list(pool.map(lambda o: xray.overlay_png(*o, caption=OVERLAY_CAPTION), overlays))
    return time.perf_counter() - start, _own_cpu() - cpu


def predict_call_cost(artifact: Path, repeats: int = 30) -> dict[str, float]:
    """Seconds per call of the compiled ``model(x, training=False)`` against ``model.predict``, batch 32 and 1."""
    from medbatch.ml import xray

    model = xray.load_model(artifact)
    out: dict[str, float] = {}
    for n in (32, 1):
        x = np.random.default_rng(0).random((n, 150, 150), dtype=np.float32)
        model.predict(x)
        model.keras_model.predict(x[..., None], verbose=0)
        start = time.perf_counter()
        for _ in range(repeats):
            model.predict(x)
        out[f"compiled@{n}"] = (time.perf_counter() - start) / repeats
        start = time.perf_counter()
        for _ in range(repeats):
            model.keras_model.predict(x[..., None], verbose=0)
        out[f"keras_predict@{n}"] = (time.perf_counter() - start) / repeats
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--per-kind", type=int, default=100, help="images of each kind (3 kinds)")
    ap.add_argument("--database-url", default="postgresql+psycopg://postgres@127.0.0.1:5432/test")
    ap.add_argument("--broker-url", default="redis://127.0.0.1:6379/13")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--predict-batch", type=int, default=32)
    ap.add_argument("--threads", type=int, default=4)
    ap.add_argument("--workdir", type=Path, default=ROOT / ".bench")
    args = ap.parse_args()

    folder = args.workdir / f"xray-{args.per_kind}"
    print(f"preparing {3 * args.per_kind} synthetic images in {folder}", flush=True)
    paths = make_images(folder, args.per_kind)
    models = args.workdir / "models"
    artifact = make_model(models)
    results_dir = args.workdir / f"xray-results-{uuid.uuid4().hex[:6]}"

    bench_db = BenchDatabase.create(args.database_url)
    db_url = bench_db.url
    import redis

    redis.Redis.from_url(args.broker_url).flushdb()
    env = {
        **os.environ,
        "MEDBATCH_DATABASE_URL": db_url,
        "MEDBATCH_BROKER_URL": args.broker_url,
        "MEDBATCH_LOG_LEVEL": "INFO",
        "MEDBATCH_RESULTS_DIR": str(results_dir),
        "MEDBATCH_IMAGING_DECODE_THREADS": str(args.threads),
        "MEDBATCH_IMAGING_PREDICT_BATCH": str(args.predict_batch),
    }
    medbatch = [sys.executable, "-m", "medbatch.cli"]
    subprocess.run([*medbatch, "db", "upgrade"], env=env, check=True, capture_output=True)
    from medbatch.db import repository as repo
    from medbatch.db.session import session_scope
    from medbatch.ml.registry import file_version

    with session_scope(db_url) as s:
        repo.register_model(
            s, name="xray", version=file_version(artifact), uri=str(artifact), metrics={}, training_source="bench"
        )
    worker_log = (args.workdir / "imaging-worker.log").open("w")
    worker = subprocess.Popen(
        [*medbatch, "worker", "-Q", "imaging"],
        env=env,
        stdout=worker_log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        # The first image of a night: the worker started and idle (its child loads the active model as it
        # starts), one image submitted and waited for. It is also the warm-up of the timed run below.
        log_path = args.workdir / "imaging-worker.log"
        _await_line(log_path, "preloaded xray", timeout_s=120)
        warm = args.workdir / "xray-warmup"
        warm.mkdir(exist_ok=True)
        (warm / "w.png").write_bytes(paths[0].read_bytes())
        first_image, _ = timed_submit([*medbatch, "submit", "xray", str(warm), "--wait", "--json"], env)
        worker_cpu, submit_cpu = tree_cpu(worker.pid), reaped_cpu()
        start_epoch = time.time()
        try:
            wall, summary = timed_submit(
                [*medbatch, "submit", "xray", str(folder), "--json", "--wait", "--batch-size", str(args.batch_size)],
                env,
            )
        finally:
            worker_cpu, submit_cpu = tree_cpu(worker.pid) - worker_cpu, reaped_cpu() - submit_cpu
        w_peak = _peak_rss(worker.pid)
        child_rss = [p.memory_info().rss for p in psutil.Process(worker.pid).children(recursive=True)]
        parent_rss = psutil.Process(worker.pid).memory_info().rss
    finally:
        worker.terminate()
        worker.wait(timeout=60)
    engine = create_engine(db_url)
    with engine.connect() as c:
        stored = c.execute(
            text("select count(*) from results where job_id = :j"), {"j": summary["job_id"]}
        ).scalar_one()
        positives = c.execute(
            text("select count(*) from results where job_id = :j and label = 'pneumonia'"), {"j": summary["job_id"]}
        ).scalar_one()
        timeline = _timeline(c, summary["job_id"], start_epoch, wall)
    engine.dispose()

    raw_out = args.workdir / "xray-raw-out"
    raw_out.mkdir(exist_ok=True)
    raw, raw_cpu = raw_loop(paths, artifact, args.batch_size, args.predict_batch, args.threads, raw_out)
    bench_db.drop()

    calls = predict_call_cost(artifact)
    n = len(paths)
    print(
        f"\nbench/imaging.py: {n} images ({args.per_kind} PNG 150x150, {args.per_kind} PNG 1024x1024, "
        f"{args.per_kind} DICOM 1024x1024), {bench_db.backend}, batch {args.batch_size}, "
        f"predict batch {args.predict_batch}, {args.threads} decode threads, {os.cpu_count()} cores, "
        f"device {_device()}"
    )
    print(
        f"  medbatch end to end  {wall:7.1f} s  {n / wall:7.1f} images/s  "
        f"(staged {summary['items_staged']}, results stored {stored}, positives with Grad-CAM {positives})"
    )
    print(f"  raw in-process loop  {raw:7.1f} s  {n / raw:7.1f} images/s  (same decode, model, batch, Grad-CAM)")
    print(f"  ratio (throughput)   {raw / wall:7.2f}  (medbatch images/s / raw images/s; target >= 0.90)")
    print(
        f"  peak RSS worker      {w_peak / 2**20:7.0f} MB (each process's high-water mark, warm-up included; parent "
        f"{parent_rss / 2**20:.0f} MB + child {sum(child_rss) / 2**20:.0f} MB at the end)"
    )
    print(f"  every staged image has exactly one result: {stored == summary['items_staged']}")
    print(
        f"  CPU seconds          medbatch {worker_cpu + submit_cpu:.1f} (worker {worker_cpu:.1f}, submit command "
        f"{submit_cpu:.1f}), raw loop {raw_cpu:.1f}"
    )
    print("  timeline (s after submit started): " + ", ".join(f"{k} {v:.2f}" for k, v in timeline.items()))
    print(f"  first image of a night, worker idle: {first_image:.2f} s (submit --wait of one image, start to exit)")
    for b in (32, 1):
        c, k = calls[f"compiled@{b}"], calls[f"keras_predict@{b}"]
        print(f"  one call, batch {b:2d}: compiled {c * 1000:6.1f} ms, model.predict {k * 1000:6.1f} ms ({k / c:.1f}x)")


def _await_line(path: Path, text: str, timeout_s: float) -> None:
    """Wait until the worker's log holds ``text`` (or the timeout: then the run goes on, and says so)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if path.exists() and text in path.read_text(errors="replace"):
            return
        time.sleep(0.1)
    print(f"  (the worker's log never said {text!r})", flush=True)


def _peak_rss(pid: int) -> int:
    """The summed peak RSS (bytes) of a process and its children alive now: each one's high-water mark as the
    kernel kept it (``VmHWM``), so nothing samples the worker while the clock runs (a 50 ms sampler thread
    cost the medbatch side alone 2-4 % of a core). Elsewhere than Linux, the RSS now."""
    root = psutil.Process(pid)
    total = 0
    for p in [root, *root.children(recursive=True)]:
        try:
            with open(f"/proc/{p.pid}/status") as fh:
                total += next(int(line.split()[1]) * 1024 for line in fh if line.startswith("VmHWM:"))
        except (OSError, StopIteration):
            try:
                total += p.memory_info().rss
            except psutil.Error:
                pass
    return total


def _own_cpu() -> float:
    t = os.times()
    return t.user + t.system


def _timeline(conn, job_id: int, start_epoch: float, wall: float) -> dict[str, float]:
    """Where the end-to-end time went, from the database's timestamps: the producer until the first batch was
    queued, the worker's first pick-up, the time it spent in batches and idle between them, and the tail from
    the last batch's commit to the submit command's exit (drift, the --wait poll, process exit)."""
    job_created = conn.execute(text("select created_at from jobs where id = :j"), {"j": job_id}).scalar_one()
    rows = conn.execute(
        text("select queued_at, started_at, finished_at from batches where job_id = :j order by seq"), {"j": job_id}
    ).all()

    def at(t) -> float:
        return t.timestamp() - start_epoch

    # A batch the worker claimed before the producer recorded its send kept no queued_at in older versions: its start.
    queued = min(at(q or s) for q, s, _ in rows)
    busy = sum(at(f) - at(s) for _, s, f in rows)
    span = max(at(f) for *_, f in rows) - min(at(s) for _, s, _ in rows)
    return {
        "job created": at(job_created),
        "first batch queued": queued,
        "first batch started": min(at(s) for _, s, _ in rows),
        "last batch done": max(at(f) for *_, f in rows),
        "worker busy": busy,
        "worker idle between batches": span - busy,
        "submit exit": wall,
    }


def _device() -> str:
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    return f"GPU x{len(gpus)}" if gpus else "CPU"


if __name__ == "__main__":
    main()
