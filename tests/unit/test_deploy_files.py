"""docker-compose.yml and the Prometheus files, read as the tools read them (no Docker engine here)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import pytest
import yaml

from tests.helpers import DEPLOY, ROOT, need

COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())  # SafeLoader resolves `<<` merge keys
SERVICES = COMPOSE["services"]
WORKERS = ["worker-tabular", "worker-imaging", "worker-imaging-gpu", "worker-molecules", "worker-reports"]
LONG_RUNNING = [name for name in SERVICES if name != "migrate"]


def test_the_stack_has_every_service_it_documents():
    expected = {"redis", "postgres", "migrate", "beat", "flower", "metrics", "prometheus", *WORKERS}
    assert expected <= set(SERVICES)


def test_long_running_services_restart_and_report_health():
    for name in LONG_RUNNING:
        assert SERVICES[name].get("restart") in ("unless-stopped", "always"), name
    assert SERVICES["migrate"]["restart"] == "no"
    for name in [n for n in LONG_RUNNING if n != "beat"]:  # beat has no endpoint or node to ask
        assert SERVICES[name].get("healthcheck", {}).get("test"), name
    for name in WORKERS:
        queue = SERVICES[name]["command"][SERVICES[name]["command"].index("-Q") + 1]
        assert f"-Q {queue}" in SERVICES[name]["healthcheck"]["test"][1], name


def test_gpu_worker_is_opt_in_and_reserves_one_named_gpu():
    gpu = SERVICES["worker-imaging-gpu"]
    assert gpu["profiles"] == ["gpu"]
    (device,) = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
    # device_ids, not count: `count: 1` gives every replica the same first GPU
    assert "count" not in device and len(device["device_ids"]) == 1
    assert gpu["build"]["args"]["TENSORFLOW_GPU"] == "1" and gpu["image"] != SERVICES["worker-imaging"]["image"]
    assert "-c" in gpu["command"] and gpu["command"][gpu["command"].index("-c") + 1] == "1"
    assert "TENSORFLOW_GPU" in (ROOT / "Dockerfile").read_text()
    # Only the GPU worker and Prometheus are behind profiles: `docker compose up` starts the whole CPU stack
    assert {n for n, s in SERVICES.items() if "profiles" in s} == {"worker-imaging-gpu", "prometheus", "dicom-listener"}
    assert SERVICES["prometheus"]["profiles"] == ["monitoring"]
    assert SERVICES["dicom-listener"]["profiles"] == ["pacs"]


def test_metrics_service_serves_inside_the_network_and_only_on_the_hosts_loopback():
    metrics = SERVICES["metrics"]
    assert metrics["command"][:3] == ["metrics", "--address", "0.0.0.0"]
    assert metrics["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    for name, service in SERVICES.items():
        for port in service.get("ports", []):
            # `${VAR:-127.0.0.1}:...` is loopback unless the operator names another address on purpose
            published = re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", str(port))
            assert published.startswith("127.0.0.1:"), f"{name} publishes {port} beyond the host's loopback"


def test_volumes_are_named_and_declared():
    declared = set(COMPOSE["volumes"])
    used = set()
    for service in SERVICES.values():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if not source.startswith((".", "/")):
                used.add(source)
    assert used == declared
    assert {"postgres-data", "redis-data", "models", "results", "prometheus-data"} <= declared


def test_secrets_come_from_the_env_file_never_inline():
    medbatch_services = [n for n, s in SERVICES.items() if str(s.get("image", "")).startswith("medbatch")]
    for name in medbatch_services:
        assert {"path": ".env", "required": False} in SERVICES[name]["env_file"], name
    text = (ROOT / "docker-compose.yml").read_text()
    assert "changeme" not in yaml.safe_dump(COMPOSE)  # comments may name the placeholder; values never
    # every password in a URL is a ${...} reference
    for userinfo in re.findall(r"://([^@/\s]*)@", text):
        assert ":" not in userinfo or userinfo.split(":", 1)[1].startswith("${"), userinfo
    for name, service in SERVICES.items():
        env = service.get("environment", {})
        for key, value in env.items() if isinstance(env, dict) else []:
            if re.search(r"PASSWORD|AUTH|SECRET|API_KEY", key):
                assert str(value).startswith("${"), f"{name}: {key} is inline"
    # every required ${VAR:?...} is documented in .env.example
    example = (ROOT / ".env.example").read_text()
    for var in set(re.findall(r"\$\{([A-Z_]+):\?", yaml.safe_dump(COMPOSE))):
        assert re.search(rf"^#? ?{var}=", example, re.M), f"{var} missing from .env.example"


def test_prometheus_config_scrapes_the_exporter_and_flower_and_loads_the_rules():
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    targets = {
        job["job_name"]: [t for sc in job["static_configs"] for t in sc["targets"]] for job in config["scrape_configs"]
    }
    assert targets == {"medbatch": ["metrics:9808"], "flower": ["flower:5555"]}
    for rule_file in config["rule_files"]:
        assert (DEPLOY / "prometheus" / rule_file).is_file()


def test_alert_rules_cover_stalls_old_batches_and_workers():
    rules = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    by_name = {r["alert"]: r for g in rules["groups"] for r in g["rules"]}
    assert {"MedbatchQueueNoProgress", "MedbatchBatchOlderThanVisibilityTimeout", "MedbatchWorkerDown"} <= set(by_name)
    stall = by_name["MedbatchQueueNoProgress"]["expr"]
    assert "medbatch_no_progress_seconds > 900" in stall and "medbatch_queue_depth_messages > 0" in stall
    assert "3600" in by_name["MedbatchBatchOlderThanVisibilityTimeout"]["expr"]
    for rule in by_name.values():
        assert rule["labels"]["severity"] in ("page", "warning") and rule["annotations"]["summary"]


def _promtool() -> str:
    tool = os.environ.get("MEDBATCH_TEST_PROMTOOL") or shutil.which("promtool")
    if not tool:
        # Skips locally, fails under CI=true (.ci/run installs Debian's prometheus package, which ships it).
        need("promtool", "not installed (Debian: apt-get install prometheus; or set MEDBATCH_TEST_PROMTOOL)")
    return tool


@pytest.mark.parametrize(
    "args",
    [["check", "config", "prometheus.yml"], ["check", "rules", "alerts.yml"], ["test", "rules", "alerts_test.yml"]],
)
def test_promtool_accepts_the_config_and_the_rules_pass_their_unit_tests(args):
    run = subprocess.run([_promtool(), *args], cwd=DEPLOY / "prometheus", capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stdout + run.stderr
