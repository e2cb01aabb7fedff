"""The layering of ../shared/ARCHITECTURE.md, enforced: imports are walked, not trusted."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[2] / "medbatch"

FORBIDDEN = {
    "ml": {
        "celery",
        "kombu",
        "redis",
        "sqlalchemy",
        "alembic",
        "medbatch.db",
        "medbatch.worker",
        "medbatch.tasks",
        "medbatch.pipeline",
        "medbatch.producer",
    },
    "db": {
        "celery",
        "kombu",
        "tensorflow",
        "keras",
        "sklearn",
        "medbatch.worker",
        "medbatch.tasks",
        "medbatch.ml",
        "medbatch.pipeline",
    },
    "pipeline": {"celery", "kombu", "medbatch.worker", "medbatch.tasks"},
    "producer": {"tensorflow", "keras", "sklearn", "medbatch.tasks", "medbatch.pipeline"},
}


def imports_of(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_layer_imports_nothing_it_must_not(layer):
    bad = []
    for path in (PKG / layer).rglob("*.py"):
        for name in imports_of(path):
            if any(name == f or name.startswith(f + ".") for f in FORBIDDEN[layer]):
                bad.append(f"{path.relative_to(PKG.parent)} imports {name}")
    assert bad == []


def test_tasks_are_thin_adapters():
    for path in (PKG / "tasks").glob("*.py"):
        if path.name == "__init__.py":
            continue
        tree = ast.parse(path.read_text())
        for fn in [n for n in tree.body if isinstance(n, ast.FunctionDef)]:
            assert fn.end_lineno - fn.lineno <= 15, f"{path.name}:{fn.name} holds logic; move it to pipeline/"


def test_only_config_reads_the_environment():
    offenders = []
    for path in PKG.rglob("*.py"):
        if path.name == "config.py" or "migrations" in path.parts:
            continue
        text = path.read_text()
        if "os.environ[" in text or "os.getenv(" in text or "os.environ.get(" in text:
            offenders.append(str(path.relative_to(PKG.parent)))
    # processes.py passes os.environ through to child processes (copy, never read for settings)
    assert [o for o in offenders if not o.endswith("processes.py")] == []


def test_cli_help_imports_no_heavy_framework():
    code = (
        "import sys; from typer.testing import CliRunner; from medbatch.cli import app; "
        "r = CliRunner().invoke(app, ['--help']); assert r.exit_code == 0, r.output; "
        "heavy = [m for m in ('tensorflow', 'keras', 'sklearn', 'torch') if m in sys.modules]; print(heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_ml_packages_import_no_heavy_framework():
    # TensorFlow/Keras/sklearn are imported inside functions (a Celery parent forks before any is loaded);
    # medbatch.ml.tabular is the exception: it is the sklearn model's own package, imported by its loader only.
    modules = "artifacts chem drift evaluation images molecules registry reports xray".split()
    code = (
        f"import sys, importlib; [importlib.import_module('medbatch.ml.' + m) for m in {modules!r}]; "
        "import medbatch.pipeline.drift; "
        "print([m for m in ('tensorflow', 'keras', 'sklearn', 'torch') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
