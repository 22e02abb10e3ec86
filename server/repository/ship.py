"""``python -m server ship FOLDER --out DIR``: what deploys a function folder.

DIR gets everything a deployment of the function needs, beside dcf's own
(docker/), written from the folder's function.yaml alone:

- ``NAME/``: the folder as shipped (its tests left out), and ``Dockerfile`` (with
  ``requirements.txt``): dcf's image plus the function's build packages and Python
  requirements and the folder, at /opt/dcf/functions/NAME, running the worker role.
  ``docker build -t dcf-NAME:latest DIR``.
- ``registry-entry.yaml``: the function's registry entry (its workers: the service
  NAME), and ``functions.yaml``: the deployments' registry (docker/functions.yaml)
  with that entry added, which the gateway and the worker read.
- ``compose.yaml``: the worker's service, to run beside docker/compose.yaml
  (``docker compose -f docker/compose.yaml -f DIR/compose.yaml up -d``); it points the
  stack's registry at ``functions.yaml``.
- ``k8s/``: the registry's ConfigMap (dcf's, plus the function) and the function's
  Deployment (probes, resources, non-root), headless Service and NetworkPolicy (the
  gateway alone may connect). The gateway reads the ConfigMap again when it changes:
  ``kubectl apply -f DIR/k8s/`` adds the function without restarting it.

The files follow docker/'s conventions (labels, UID 10001, read-only root, the
worker token secret), and tests/repository checks them offline as tests/deploy
checks docker/.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import yaml

from server.config import ConfigError, FunctionConfig, load_settings, params_yaml
from server.repository.folder import FunctionFolder, files_of, read_folder

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
DEPLOYMENT_REGISTRY = DOCKER / "functions.yaml"
FUNCTIONS_IN_IMAGE = "/opt/dcf/functions"  # where the image keeps function folders
REGISTRY_MOUNT = "/etc/dcf/functions.yaml"
NAMESPACE = "dcf"
CONFIGMAP = "dcf-registry"
IMAGE_UID = 10001
_MEMORY = re.compile(r"^(\d+)(Ki|Mi|Gi)$")
_CPU = re.compile(r"^(\d+(\.\d+)?|\d+m)$")


class ShipError(ValueError):
    """What cannot be shipped as asked; the message says why."""


class _Dumper(yaml.SafeDumper):
    """YAML as people write it: no anchors for repeated values, short lists inline."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _yaml(document: Any) -> str:
    return yaml.dump(document, Dumper=_Dumper, sort_keys=False, default_flow_style=None, width=100)


def _size(count: int) -> int | str:
    """A byte count as the registry writes sizes: 16MiB rather than 16777216."""
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if count and count % scale == 0:
            return f"{count // scale}{unit}"
    return count


def ship(
    folder: Path,
    out: Path,
    image: str = "dcf:latest",
    port: int = 50061,
    cpu: str = "1",
    memory: str = "512Mi",
    registry: Path | None = None,
) -> list[Path]:
    """Write the deployment files of ``folder`` into ``out``; the paths written."""
    function = read_folder(folder)
    name = function.config.name
    if not _MEMORY.match(memory):
        raise ShipError(f"--memory {memory!r}: expected a size such as 512Mi or 2Gi")
    if not _CPU.match(cpu):
        raise ShipError(f"--cpu {cpu!r}: expected cores such as 1, 0.5 or 500m")
    if not 0 < port < 65536:
        raise ShipError(f"--port {port}: expected 1..65535")
    base = registry or DEPLOYMENT_REGISTRY
    try:
        base_text = base.read_text()
    except OSError as exc:
        raise ShipError(f"cannot read the deployments' registry {base}: {exc.strerror}") from None
    entry = registry_entry(function, port)
    combined = add_entry(base_text, name, entry)

    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []

    def write(relative: str, text: str) -> None:
        path = out / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        written.append(path)

    copy = out / name
    if copy.exists():
        shutil.rmtree(copy)
    for file in files_of(function.path):
        target = copy / file.relative_to(function.path)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(file, target)
    written.append(copy)
    if function.requirements:
        write("requirements.txt", "".join(f"{r}\n" for r in function.requirements))
    write("Dockerfile", dockerfile(function, image, port))
    write("registry-entry.yaml", _entry_text(name, entry))
    write("functions.yaml", combined)
    write("compose.yaml", compose(name, port, cpu, memory, out / "functions.yaml"))
    write("k8s/10-registry.yaml", configmap(combined, name))
    write(f"k8s/50-{name}.yaml", kubernetes(name, port, cpu, memory))
    return written


def image_name(name: str) -> str:
    return f"dcf-{name}:latest"


def worker_args(name: str, port: int) -> list[str]:
    return ["worker", name, "--host", "0.0.0.0", "--port", str(port)]


def registry_entry(function: FunctionFolder, port: int) -> dict[str, Any]:
    """The function's registry entry, its paths as the image has them."""
    config = function.config
    in_image = f"{FUNCTIONS_IN_IMAGE}/{config.name}"

    def moved(value: Any) -> Any:  # an option naming a file of the folder, in the image
        if isinstance(value, str) and Path(value).is_relative_to(function.path):
            return f"{in_image}/{Path(value).relative_to(function.path).as_posix()}"
        return value

    handler = config.handler
    if config.handler_file:
        handler = Path(config.handler_file).relative_to(function.path).as_posix()
    entry: dict[str, Any] = {
        "folder": in_image,
        "handler": handler,
        "factory": config.factory,
        "description": config.description,
        "input_type": config.input_type,
        "output_type": config.output_type,
    }
    if config.aliases:
        entry["aliases"] = list(config.aliases)
    entry["max_input_bytes"] = _size(config.max_input_bytes)
    entry["max_concurrency"] = config.max_concurrency
    for key in ("max_queue", "max_call_seconds"):
        if getattr(config, key) is not None:
            entry[key] = getattr(config, key)
    if config.max_uploads:
        entry["max_uploads"] = config.max_uploads
    if config.options:
        entry["options"] = {key: moved(value) for key, value in config.options.items()}
    entry["params"] = params_yaml(config.declared_params())
    entry["workers"] = [f"{config.name}:{port}"]
    return entry


def _entry_text(name: str, entry: dict[str, Any]) -> str:
    body = _yaml({name: entry})
    return (
        f"# The registry entry of {name}, written by `python -m server ship` from its\n"
        "# function.yaml: it goes under `functions:` in the deployments' registry\n"
        "# (functions.yaml beside this file has it there already).\n"
        "functions:\n" + "".join(f"  {line}\n" for line in body.splitlines())
    )


def add_entry(registry: str, name: str, entry: dict[str, Any]) -> str:
    """``registry``'s text with ``entry`` added at the end of its ``functions:``."""
    try:
        document = yaml.safe_load(registry) or {}
    except yaml.YAMLError as exc:
        raise ShipError(f"the deployments' registry is not valid YAML: {exc}") from None
    if not isinstance(document, dict) or list(document)[-1:] != ["functions"]:
        raise ShipError("the deployments' registry must end with its `functions:` mapping")
    if name in (document.get("functions") or {}):
        raise ShipError(f"the deployments' registry has a function {name} already")
    body = _yaml({name: entry})
    added = f"\n  # Added by `python -m server ship` from the function folder {name}.\n" + "".join(
        f"  {line}\n" for line in body.splitlines()
    )
    text = registry.rstrip("\n") + "\n" + added
    _check_registry(text, name)
    return text


def _check_registry(text: str, name: str) -> FunctionConfig:
    """The registry as the server reads it, with the function in it; ShipError if not."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder, "functions.yaml")
        path.write_text(text)
        try:
            settings = load_settings(path, environ={}, folders=False)
        except ConfigError as exc:
            raise ShipError(f"the registry it would write is refused: {exc}") from None
    fn = settings.function(name)
    assert fn is not None
    return fn


def dockerfile(function: FunctionFolder, image: str, port: int) -> str:
    name = function.config.name
    in_image = f"{FUNCTIONS_IN_IMAGE}/{name}"
    lines = [
        f"# {name}: a dcf worker serving the function folder {name}.",
        "# Written by `python -m server ship`: dcf's image (docker build -f docker/Dockerfile",
        "# -t dcf .), plus the function's build packages, its Python requirements and its",
        f"# folder at {in_image}. Build it from the folder this file is in:",
        "#",
        f"#   docker build -t {image_name(name)} .",
        "",
        f"ARG DCF_IMAGE={image}",
        "FROM ${DCF_IMAGE}",
        "",
    ]
    if function.build_packages or function.requirements:
        lines += ["# Installing needs root; the worker runs as dcf's user again below.", "USER 0"]
    if function.build_packages:
        packages = " ".join(function.build_packages)
        lines += [
            "# Debian's versions are not pinned: a point release replaces them.",
            "# hadolint ignore=DL3008",
            "RUN apt-get update \\",
            f" && apt-get install -y --no-install-recommends {packages} \\",
            " && rm -rf /var/lib/apt/lists/*",
        ]
    if function.requirements:
        requirements = f"{FUNCTIONS_IN_IMAGE}/{name}.requirements.txt"
        lines += [
            f"COPY requirements.txt {requirements}",
            f"RUN pip install --no-cache-dir -r {requirements}",
        ]
    args = ", ".join(f'"{a}"' for a in worker_args(name, port))
    lines += [
        "",
        f"COPY {name}/ {in_image}/",
        f"USER {IMAGE_UID}:{IMAGE_UID}",
        "",
        "# The registry (DCF_CONFIG, mounted by compose and Kubernetes) names this folder; alone,",
        "# the worker finds it among the function folders here.",
        f"ENV DCF_FUNCTIONS_DIRS={FUNCTIONS_IN_IMAGE}",
        f"EXPOSE {port}",
        f"CMD [{args}]",
        "",
    ]
    return "\n".join(lines)


def compose(name: str, port: int, cpu: str, memory: str, registry: Path) -> str:
    """A compose file adding the worker's service to docker/compose.yaml's stack."""
    # Compose reads every path against the first file's folder: docker/.
    try:
        registry_path = os.path.relpath(registry.resolve(), DOCKER)
    except ValueError:
        registry_path = str(registry.resolve())
    service = {
        "image": image_name(name),
        "command": worker_args(name, port),
        "environment": {
            "DCF_CONFIG": REGISTRY_MOUNT,
            "DCF_LOG_LEVEL": "INFO",
            "DCF_WORKER_TOKEN": "${DCF_WORKER_TOKEN:-}",
        },
        "configs": [{"source": "registry", "target": REGISTRY_MOUNT}],
        "restart": "unless-stopped",
        "stop_grace_period": "20s",
        "read_only": True,
        "tmpfs": ["/tmp"],
        "cap_drop": ["ALL"],
        "security_opt": ["no-new-privileges:true"],
        "deploy": {"resources": {"limits": {"cpus": cpu, "memory": memory[:-1]}}},
    }
    document = {"services": {name: service}, "configs": {"registry": {"file": registry_path}}}
    return (
        f"# {name} beside dcf's services. Written by `python -m server ship`:\n"
        "#\n"
        f"#   docker build -t {image_name(name)} {registry.parent.name}\n"
        f"#   docker compose -f docker/compose.yaml -f {registry.parent.name}/compose.yaml up -d\n"
        "#\n"
        "# The stack's registry becomes functions.yaml beside this file: dcf's own, plus\n"
        f"# {name}, whose workers are this service. Compose reads the paths of every\n"
        "# file against the first file's folder (docker/), hence the registry's path.\n"
        + _yaml(document)
    )


def _labels(name: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "dcf",
        "app.kubernetes.io/component": name,
        "app.kubernetes.io/part-of": "dcf",
    }


def kubernetes(name: str, port: int, cpu: str, memory: str) -> str:
    """The worker's Deployment, its headless Service, and who may connect to it."""
    labels = _labels(name)
    selector = {k: v for k, v in labels.items() if k != "app.kubernetes.io/part-of"}
    probe = {"grpc": {"port": port}}
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": NAMESPACE, "labels": labels},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": selector},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "enableServiceLinks": False,
                    "automountServiceAccountToken": False,
                    "terminationGracePeriodSeconds": 30,
                    "securityContext": {
                        "runAsNonRoot": True,
                        "runAsUser": IMAGE_UID,
                        "runAsGroup": IMAGE_UID,
                        "seccompProfile": {"type": "RuntimeDefault"},
                    },
                    "containers": [
                        {
                            "name": "worker",
                            "image": image_name(name),
                            "imagePullPolicy": "IfNotPresent",
                            "args": worker_args(name, port),
                            "env": [
                                {"name": "DCF_CONFIG", "value": REGISTRY_MOUNT},
                                {
                                    "name": "DCF_WORKER_TOKEN",
                                    "valueFrom": {
                                        "secretKeyRef": {
                                            "name": "dcf-worker-token",
                                            "key": "token",
                                            "optional": True,
                                        }
                                    },
                                },
                            ],
                            "ports": [{"name": "grpc", "containerPort": port}],
                            "startupProbe": {**probe, "periodSeconds": 2, "failureThreshold": 30},
                            "readinessProbe": {**probe, "periodSeconds": 5},
                            "livenessProbe": {**probe, "periodSeconds": 10, "failureThreshold": 3},
                            "resources": {
                                "requests": {"cpu": "100m", "memory": memory},
                                "limits": {"cpu": cpu, "memory": memory},
                            },
                            "securityContext": {
                                "allowPrivilegeEscalation": False,
                                "readOnlyRootFilesystem": True,
                                "capabilities": {"drop": ["ALL"]},
                            },
                            "volumeMounts": [
                                {
                                    "name": "registry",
                                    "mountPath": str(Path(REGISTRY_MOUNT).parent),
                                    "readOnly": True,
                                },
                                {"name": "tmp", "mountPath": "/tmp"},
                            ],
                        }
                    ],
                    "volumes": [
                        {"name": "registry", "configMap": {"name": CONFIGMAP}},
                        {"name": "tmp", "emptyDir": {"sizeLimit": "256Mi"}},
                    ],
                },
            },
        },
    }
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": NAMESPACE, "labels": labels},
        "spec": {
            "clusterIP": "None",
            "selector": selector,
            "ports": [{"name": "grpc", "port": port, "targetPort": "grpc", "appProtocol": "grpc"}],
        },
    }
    policy = {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": name, "namespace": NAMESPACE, "labels": labels},
        "spec": {
            "podSelector": {"matchLabels": selector},
            "policyTypes": ["Ingress"],
            "ingress": [
                {
                    "from": [
                        {
                            "podSelector": {
                                "matchLabels": {
                                    "app.kubernetes.io/name": "dcf",
                                    "app.kubernetes.io/component": "gateway",
                                }
                            }
                        }
                    ],
                    "ports": [{"protocol": "TCP", "port": "grpc"}],
                }
            ],
        },
    }
    header = (
        f"# The {name} worker: a Deployment of the image dcf-{name} (its Dockerfile beside\n"
        f"# k8s/), its headless Service (the name {name} resolves to every ready pod, as the\n"
        "# registry's workers address says), and a NetworkPolicy letting the gateway's pods\n"
        "# alone connect. Written by `python -m server ship`.\n"
    )
    return header + "---\n".join(_yaml(d) for d in (deployment, service, policy))


def configmap(registry: str, name: str) -> str:
    """The registry's ConfigMap: dcf's own registry with the function added."""
    body = "".join(f"    {line}\n" if line else "\n" for line in registry.splitlines())
    return (
        f"# The function registry, dcf's plus {name}: it replaces docker/k8s/10-registry.yaml.\n"
        "# Written by `python -m server ship`. The gateway reads it again when it changes,\n"
        "# so `kubectl apply` adds the function without restarting the gateway.\n"
        "apiVersion: v1\n"
        "kind: ConfigMap\n"
        "metadata:\n"
        f"  name: {CONFIGMAP}\n"
        f"  namespace: {NAMESPACE}\n"
        "  labels:\n"
        "    app.kubernetes.io/part-of: dcf\n"
        "data:\n"
        "  functions.yaml: |\n"
        f"{body}"
    )
