"""The deployment files (Dockerfile, deploy/compose.yaml, deploy/helm/values.yaml): linted by
scripts/lint_deploy.sh (hadolint, checkov, the Compose Specification's schema, yamllint), whose
failures on deliberately bad files are shown here too, and checked against the project: the
image's Airflow is the pinned one, the services and queues are there, classify reaches the GPU
workers through the mounted configuration, and no file holds a credential."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml

from clcplus_ops.config import load_config
from clcplus_ops.pipeline import STAGES

REPO = Path(__file__).resolve().parents[1]
LINT = REPO / "scripts" / "lint_deploy.sh"
DEPLOY = REPO / "deploy"


def lint(*args: str | Path, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(LINT), *map(str, args)], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout)


def said(result: subprocess.CompletedProcess) -> str:
    return f"exit {result.returncode}\n--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"


@pytest.fixture(scope="module")
def linters() -> None:
    """The pinned linters in .venv-tools/ (installed by the script on a fresh machine)."""
    result = lint("--install-only", timeout=900)
    assert result.returncode == 0, said(result)


def load_yaml(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


@pytest.fixture(scope="module")
def compose() -> dict:
    return load_yaml(DEPLOY / "compose.yaml")


@pytest.fixture(scope="module")
def helm() -> dict:
    return load_yaml(DEPLOY / "helm" / "values.yaml")


def pinned(package: str) -> str:
    for line in (REPO / "constraints.txt").read_text().splitlines():
        name, _, version = line.partition("==")
        if name.strip().lower() == package:
            return version.strip()
    raise AssertionError(f"{package} is not pinned in constraints.txt")


# --- the linters -----------------------------------------------------------------------------

def test_the_repository_deployment_files_pass_every_linter(linters):
    result = lint()
    assert result.returncode == 0, said(result)
    checks = [line.split(None, 1)[1] for line in result.stdout.splitlines() if line.startswith("ok ")]
    for expected in ("hadolint Dockerfile", "checkov dockerfile+secrets Dockerfile", "yamllint deploy/compose.yaml",
                     "yamllint deploy/helm/values.yaml", "yamllint deploy/clcplus.yaml",
                     "compose-spec schema deploy/compose.yaml"):
        assert expected in checks, said(result)
    secrets = next(check for check in checks if check.startswith("checkov secrets"))
    for name in ("compose.yaml", "helm/values.yaml", "clcplus.yaml", "env.example", "README.md"):
        assert f"deploy/{name}" in secrets


def test_a_bad_dockerfile_fails_hadolint_and_checkov(linters, tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM ubuntu:latest\nRUN apt-get update && apt-get install -y curl\nCOPY . /app\n")
    result = lint("--dockerfile", bad)
    assert result.returncode == 1, said(result)
    assert f"FAILED  hadolint {bad}" in result.stdout, said(result)
    assert "DL3007" in result.stdout  # the `latest` tag
    assert "DL3008" in result.stdout  # apt packages not pinned
    assert f"FAILED  checkov dockerfile+secrets {bad}" in result.stdout, said(result)
    assert "CKV_DOCKER_3" in result.stdout  # no non-root user
    assert "check(s) failed" in result.stderr


def test_checkov_fails_what_hadolint_passes_and_honours_skips_with_reasons(linters, tmp_path):
    # No USER and no HEALTHCHECK: clean for hadolint, two findings for checkov.
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM alpine:3.20\nCOPY run.sh /run.sh\n")
    result = lint("--dockerfile", bad)
    assert result.returncode == 1, said(result)
    assert f"ok      hadolint {bad}" in result.stdout, said(result)
    assert "CKV_DOCKER_2" in result.stdout and "CKV_DOCKER_3" in result.stdout, said(result)
    # The same findings skipped in the file, each with its reason, pass.
    skipped = tmp_path / "skipped" / "Dockerfile"
    skipped.parent.mkdir()
    skipped.write_text("# checkov:skip=CKV_DOCKER_2: the test image runs no service\n"
                       "# checkov:skip=CKV_DOCKER_3: the test image needs root\n" + bad.read_text())
    result = lint("--dockerfile", skipped)
    assert result.returncode == 0, said(result)


def test_bad_compose_and_values_files_fail(linters, tmp_path):
    compose = tmp_path / "compose.yaml"
    compose.write_text("---\nservices:\n  scheduler:\n    image: clcplus-airflow:dev\n    comand: [scheduler]\n")
    values = tmp_path / "values.yaml"
    # A credential written into the values (built here, so this file holds none) and a key
    # given twice, which YAML loaders silently resolve to the last one.
    key_id = "AKIA" + "Z7QWERTYUIOPASDF"
    values.write_text(f"---\nexecutor: CeleryExecutor\nexecutor: KubernetesExecutor\nenv:\n"
                      f"  - name: AWS_ACCESS_KEY_ID\n    value: {key_id}\n")
    result = lint("--compose", compose, "--helm-values", values)
    assert result.returncode == 1, said(result)
    assert f"FAILED  compose-spec schema {compose}" in result.stdout, said(result)
    assert "'comand'" in result.stdout
    assert f"FAILED  yamllint {values}" in result.stdout and "key-duplicates" in result.stdout, said(result)
    assert f"ok      yamllint {compose}" in result.stdout, said(result)
    assert "FAILED  checkov secrets" in result.stdout and "CKV_SECRET_2" in result.stdout, said(result)


def test_a_missing_file_is_an_error_not_a_pass(tmp_path):
    result = lint("--compose", tmp_path / "absent.yaml")
    assert result.returncode == 2 and "no such file" in result.stderr, said(result)


# --- the files against the project ---------------------------------------------------------------

def test_the_image_is_the_official_one_of_the_pinned_airflow():
    dockerfile = (REPO / "Dockerfile").read_text()
    froms = re.findall(r"^FROM\s+(\S+)", dockerfile, flags=re.MULTILINE)
    assert froms == [f"apache/airflow:{pinned('apache-airflow')}-python3.11"]
    assert "--constraint /opt/clcplus/constraints.txt" in dockerfile
    # The non-root airflow user of the official image, by number.
    assert re.search(r"^USER 50000$", dockerfile, flags=re.MULTILINE)


AIRFLOW_SERVICES = {"scheduler": ["scheduler"], "dag-processor": ["dag-processor"], "triggerer": ["triggerer"],
                    "api-server": ["api-server"]}


def test_compose_runs_every_airflow_component_and_both_worker_queues(compose):
    services = compose["services"]
    assert set(services) == {"postgres", "redis", "airflow-init", *AIRFLOW_SERVICES, "worker-cpu", "worker-gpu"}
    for name, command in AIRFLOW_SERVICES.items():
        assert services[name]["command"] == command
    assert services["worker-cpu"]["command"][:4] == ["celery", "worker", "--queues", "cpu"]
    assert services["worker-gpu"]["command"][:4] == ["celery", "worker", "--queues", "gpu"]
    devices = services["worker-gpu"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    for name, service in services.items():
        if name != "airflow-init":
            assert "healthcheck" in service, f"{name} has no health check"
        if name not in ("postgres", "redis"):
            assert service["environment"]["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
            assert service["depends_on"]["postgres"]["condition"] == "service_healthy"
        if name not in ("postgres", "redis", "airflow-init"):
            assert service["depends_on"]["airflow-init"]["condition"] == "service_completed_successfully"
    init = "\n".join(services["airflow-init"]["command"])
    assert "airflow db migrate" in init
    assert re.search(r"airflow pools set gpu ", init)
    # The UI only on the host's loopback.
    assert all(port.startswith("127.0.0.1:") for port in services["api-server"]["ports"])


def required_variables(text: str) -> set[str]:
    """The `${NAME:?message}` variables of a compose file, comments left out."""
    lines = (line for line in text.splitlines() if not line.lstrip().startswith("#"))
    return set(re.findall(r"\$\{([A-Z0-9_]+):\?", "\n".join(lines)))


def test_compose_takes_every_credential_from_the_environment(compose):
    text = (DEPLOY / "compose.yaml").read_text()
    secret_like = re.compile(r"PASSWORD|SECRET|FERNET|_CONN")
    for name, service in compose["services"].items():
        for key, value in service.get("environment", {}).items():
            if secret_like.search(key) and "PASSWORD_FILE" not in key:
                assert re.search(r"\$\{[A-Z0-9_]+:\?", str(value)), f"{name}: {key} is not taken from the environment"
    assert compose["services"]["scheduler"]["environment"]["AIRFLOW_CONN_AWS_DEFAULT"].startswith(
        "${AIRFLOW_CONN_AWS_DEFAULT:?")
    # env.example names exactly the variables compose requires.
    example = {line.split("=", 1)[0] for line in (DEPLOY / "env.example").read_text().splitlines()
               if re.match(r"^[A-Z0-9_]+=", line)}
    assert example == required_variables(text)
    # ... and no value: the operator fills in deploy/.env.
    assert all(line.endswith("=") for line in (DEPLOY / "env.example").read_text().splitlines()
               if re.match(r"^[A-Z0-9_]+=", line))


def test_classify_reaches_the_gpu_workers_and_the_rest_the_cpu_workers(compose, helm):
    config_path = DEPLOY / "clcplus.yaml"
    config = load_config(config_path)
    placements = {name: stage.resources.placement(config) for name, stage in STAGES.items()}
    assert placements["classify"] == {"pool": "gpu", "queue": "gpu"}
    # Every other stage goes to the default queue, which both deployments make `cpu`.
    assert not [name for name, placement in placements.items() if name != "classify" and "queue" in placement]
    scheduler = compose["services"]["scheduler"]
    assert scheduler["environment"]["AIRFLOW__OPERATORS__DEFAULT_QUEUE"] == "cpu"
    assert helm["config"]["operators"]["default_queue"] == "cpu"
    assert helm["workers"]["celery"]["queue"] == "cpu"
    (gpu_set,) = [s for s in helm["workers"]["celery"]["sets"] if s["queue"] == config.inference.airflow_queue]
    # The pool classify asks for is the one the deployments create.
    pool_command = f"airflow pools set {config.inference.airflow_pool} "
    assert pool_command in "\n".join(compose["services"]["airflow-init"]["command"])
    assert pool_command in helm["migrateDatabaseJob"]["args"][-1]
    # The configuration file is mounted where CLCPLUS_CONFIG points.
    target = scheduler["environment"]["CLCPLUS_CONFIG"]
    assert f"./{config_path.name}:{target}:ro" in scheduler["volumes"]
    (env,) = [e for e in helm["env"] if e["name"] == "CLCPLUS_CONFIG"]
    (mount,) = [m for m in helm["volumeMounts"] if m["name"] == "clcplus-config"]
    assert Path(env["value"]).parent == Path(mount["mountPath"])
    assert config.airflow.aws_conn_id == "aws_default"
    assert all(url.startswith("s3://") for url in (config.store.work, config.store.models,
                                                   config.store.samples, config.store.products))


def test_helm_values_gpu_worker_set_secret_connection_and_security(helm):
    assert helm["executor"] == "CeleryExecutor"
    assert helm["airflowVersion"] == pinned("apache-airflow")
    (gpu,) = helm["workers"]["celery"]["sets"]
    assert gpu["queue"] == "gpu" and gpu["nodeSelector"]
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in gpu["tolerations"]
    assert gpu["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert {"envName": "AIRFLOW_CONN_AWS_DEFAULT", "secretName": "clcplus-s3-connection",
            "secretKey": "AIRFLOW_CONN_AWS_DEFAULT"} in helm["secret"]
    assert helm["postgresql"]["enabled"] is False and helm["data"]["metadataSecretName"]
    pod = helm["securityContexts"]["pod"]
    assert pod["runAsNonRoot"] is True and pod["runAsUser"] == 50000
    for component in ("scheduler", "dagProcessor", "triggerer", "apiServer", "workers"):
        container = helm[component]["securityContexts"]["container"]
        assert container["allowPrivilegeEscalation"] is False and container["capabilities"]["drop"] == ["ALL"]
    assert helm["webserver"]["defaultUser"]["enabled"] is False
