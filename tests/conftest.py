"""Shared fixtures: real services, each test isolated.

Services (Redis, PostgreSQL) are found at MEDBATCH_TEST_REDIS_URL / MEDBATCH_TEST_POSTGRES_URL. When one
is missing a test that needs it is skipped locally but FAILS under CI (``CI=true``), so a green CI run
always means the real thing was exercised.
"""

from __future__ import annotations

import itertools
import os
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

# Plain helpers live in tests/helpers.py; imported here for the fixtures (test modules import them from there).
from tests.helpers import IN_CI, ROOT, need, register_molecules, register_xray, run_cli, wait_for_job  # noqa: F401
from tests.helpers import fresh_schema as _fresh_schema

REDIS_BASE = os.environ.get("MEDBATCH_TEST_REDIS_URL", "redis://127.0.0.1:6379")
POSTGRES_ADMIN_URL = os.environ.get("MEDBATCH_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
_redis_dbs = itertools.cycle(range(1, 16))


# --------------------------------------------------------------------------- Redis


@pytest.fixture(scope="session")
def redis_server() -> str:
    try:
        redis.Redis.from_url(REDIS_BASE, socket_connect_timeout=2).ping()
    except (redis.RedisError, OSError) as exc:
        need("Redis", str(exc))
    return REDIS_BASE


@pytest.fixture
def redis_url(redis_server: str) -> Iterator[str]:
    """A Redis database number of this test's own, flushed before and after. A MEDBATCH_TEST_REDIS_URL that
    names a database (``redis://host:6379/11``) pins every test to that one, so that people sharing a Redis
    server each keep to their own number."""
    pinned = redis_server.rstrip("/").rsplit("/", 1)[-1].isdigit() and redis_server.count("/") >= 3
    url = redis_server if pinned else f"{redis_server.rstrip('/')}/{next(_redis_dbs)}"
    client = redis.Redis.from_url(url)
    client.flushdb()
    yield url
    client.flushdb()
    client.close()


# --------------------------------------------------------------------------- databases


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """A fresh PostgreSQL database for this test session, dropped at the end."""
    admin = create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    name = f"medbatch_test_{uuid.uuid4().hex[:8]}"
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:  # noqa: BLE001
        need("PostgreSQL", str(exc).splitlines()[0])
    url = make_url(POSTGRES_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    yield url
    from medbatch.db.session import dispose_engines

    dispose_engines()
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return _fresh_schema(f"sqlite:///{tmp_path / 'medbatch.db'}")


@pytest.fixture
def postgres_url(postgres_server: str) -> str:
    return _fresh_schema(postgres_server)


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request) -> str:
    """Each test using this runs once on SQLite and once on PostgreSQL."""
    return request.getfixturevalue(f"{request.param}_url" if request.param == "sqlite" else "postgres_url")


# --------------------------------------------------------------------------- Celery


@pytest.fixture
def service_env(redis_url: str, db_url: str, tmp_path: Path) -> dict[str, str]:
    """The environment a worker subprocess gets: this test's broker and database."""
    return {
        "MEDBATCH_BROKER_URL": redis_url,
        "MEDBATCH_DATABASE_URL": db_url,
        "MEDBATCH_MODEL_DIR": str(tmp_path / "models"),
        "MEDBATCH_RESULTS_DIR": str(tmp_path / "results"),
        "MEDBATCH_LOG_LEVEL": "INFO",
        "PYTHONPATH": str(ROOT),
    }


@pytest.fixture
def celery_app(redis_url: str, db_url: str):
    from medbatch.config import Settings
    from medbatch.worker.app import create_app

    app = create_app(Settings(broker_url=redis_url, database_url=db_url))
    yield app
    app.close()


@pytest.fixture
def sender(celery_app, db_url):
    from medbatch.producer.send import celery_sender

    return celery_sender(celery_app, db_url)


@pytest.fixture
def start_worker(service_env, celery_app, tmp_path: Path):
    """Factory: start a real worker process; every worker started is stopped at teardown."""
    from medbatch.worker.processes import start_worker as _start
    from medbatch.worker.processes import wait_until_ready

    started = []

    def factory(
        queues: str = "tabular",
        *,
        concurrency: int = 1,
        pool: str = "prefork",
        env: dict | None = None,
        extra_args: list[str] | None = None,
    ):
        log = tmp_path / f"worker-{len(started)}.log"
        worker = _start(
            queues,
            env={**service_env, **(env or {})},
            concurrency=concurrency,
            pool=pool,
            log_path=log,
            extra_args=extra_args,
        )
        started.append(worker)
        wait_until_ready(celery_app, worker, timeout_s=90)
        return worker

    yield factory
    # A cold stop (SIGKILL of the process group) after the test's assertions: nothing here is asserted about
    # shutdown, and a warm one costs seconds per worker. Tests that assert on a warm shutdown call stop().
    for worker in started:
        worker.kill()
        if worker.log_path and worker.log_path.exists():
            sys.stderr.write(f"--- {worker.name} log tail ---\n{worker.log_path.read_text()[-1500:]}\n")


# --------------------------------------------------------------------------- fakes


@pytest.fixture
def llm():
    """A local OpenAI-compatible server (chat and batch API) for this test; its batches complete on the first poll."""
    from tests.fakes.openai_server import FakeOpenAIServer

    with FakeOpenAIServer(batch_polls_to_complete=1) as server:
        yield server


# --------------------------------------------------------------------------- PACS


@pytest.fixture(scope="session")
def orthanc(tmp_path_factory):
    """Debian's Orthanc for this test session (tests/orthanc.py); skips locally, fails in CI, when missing."""
    from tests.orthanc import start_orthanc

    o = start_orthanc(tmp_path_factory.mktemp("orthanc"))
    yield o
    o.stop()


@pytest.fixture
def pacs(orthanc):
    """The session's Orthanc, emptied for this test."""
    orthanc.clear()
    return orthanc


# --------------------------------------------------------------------------- imaging


@pytest.fixture(scope="session")
def xray_artifact(tmp_path_factory) -> Path:
    """A tiny X-ray CNN trained once per session on SYNTHETIC images (48 px, a few thousand weights)."""
    from medbatch.ml import xray
    from medbatch.producer.synthetic import write_xrays

    root = tmp_path_factory.mktemp("xray-train")
    write_xrays(root, 40, size=64, seed=11, formats=("png", "jpeg", "dicom"))
    config = xray.XrayConfig(input_size=48, filters=(8, 16, 16), dense_units=32, epochs=6, learning_rate=3e-3)
    trained = xray.train_xray(root, config=config, seed=0)
    path = xray.save_model(trained.keras_model, trained.meta, tmp_path_factory.mktemp("xray-model"))
    xray.write_card(trained, path)
    return path


# --------------------------------------------------------------------------- molecules


@pytest.fixture(scope="session")
def moses_smiles() -> list[str]:
    """The first 20,000 MOSES training SMILES: a small fixture for tests that need real molecules, not all 1.58M."""
    from tests.helpers import moses_head

    return moses_head(20_000)


@pytest.fixture(scope="session")
def molecule_artifact(tmp_path_factory, moses_smiles) -> Path:
    """A tiny SMILES CharRNN (one LSTM of 48 units) trained once per session, in seconds.

    It learns 40 short MOSES molecules (each seen 10 times per epoch), so about one sample in ten is a
    valid molecule and repeats are common: enough to exercise valid, invalid and duplicate outcomes.
    """
    from medbatch.ml import molecules

    short = sorted(moses_smiles, key=len)[:40]
    smiles = molecules.sample_subset(short * 10, None, 0)
    config = molecules.MolConfig(embedding=16, units=48, layers=1, batch_size=8, epochs=4, learning_rate=1e-2)
    trained = molecules.train_generator(smiles, config=config, seed=0, validation=smiles[:50])
    return molecules.save_model(trained, tmp_path_factory.mktemp("molecule-model"))
