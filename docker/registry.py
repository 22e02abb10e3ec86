"""Write the deployments' function registry from the packaged one.

    python docker/registry.py           # rewrite docker/functions.yaml, docker/k8s/10-registry.yaml
    python docker/registry.py --check   # exit 1 if either is not what it would write

Compose and Kubernetes run the packaged registry (server/functions.yaml) with two
changes: the servers listen on every interface, and each function's workers are its
own service, ``NAME:PORT``: the function's name as the DNS name (a compose service or
a headless Kubernetes Service, which resolves to every replica) and the port the
packaged registry gives it. Everything else (handlers, limits, params, options) is
the packaged text, comments included, so the deployments cannot drift from it:
tests/deploy checks that both files are exactly what this script writes.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
PACKAGED = ROOT / "server" / "functions.yaml"
REGISTRY = ROOT / "docker" / "functions.yaml"
CONFIGMAP = ROOT / "docker" / "k8s" / "10-registry.yaml"
CONFIGMAP_NAME = "dcf-registry"
NAMESPACE = "dcf"
MOUNT_DIR = "/etc/dcf"  # where compose and Kubernetes put the file; DCF_CONFIG names it
KEY = "functions.yaml"
LISTEN_HOST = "0.0.0.0"

HEADER = """\
# The function registry of the deployments: docker/compose.yaml mounts this file and
# docker/k8s/10-registry.yaml carries the same text, both at /etc/dcf/functions.yaml
# (DCF_CONFIG). Written by `python docker/registry.py` from server/functions.yaml:
# edit that file, then run the script. Each function's workers are its own service,
# NAME:PORT, a DNS name that resolves to every replica of that worker.
"""

_FUNCTION = re.compile(r"^  ([A-Za-z0-9][A-Za-z0-9._-]*):\s*(#.*)?$")
_WORKERS = re.compile(r"^(\s+workers:\s*)\[[^\]]*\](.*)$")
_HOST = re.compile(r"^(\s+host:\s*)\S+(.*)$")


class RegistryError(ValueError):
    """The packaged registry is written in a way this script cannot rewrite."""


def port_of(address: str) -> int:
    """The port of a HOST:PORT worker address."""
    _, _, port = address.rpartition(":")
    if not port.isdigit():
        raise RegistryError(f"worker address {address!r} has no port")
    return int(port)


def deployment_workers(name: str, entry: dict[str, Any]) -> list[str]:
    """``NAME:PORT``: the function's service and the port of its first packaged worker."""
    workers = entry.get("workers") or []
    if isinstance(workers, str):
        workers = [w for w in workers.split(",") if w]
    if not workers:
        raise RegistryError(f"{name}: the packaged registry gives it no worker address")
    return [f"{name}:{port_of(workers[0])}"]


def render_registry(packaged: str) -> str:
    """The deployment registry's text from the packaged registry's text."""
    document = yaml.safe_load(packaged)
    functions = document.get("functions") or {}
    lines = packaged.splitlines()
    while lines and (lines[0].startswith("#") or not lines[0].strip()):
        lines.pop(0)  # the packaged header describes the embedded default
    out: list[str] = []
    section = None
    function = None
    rewritten: set[str] = set()
    for line in lines:
        if line and not line[0].isspace() and not line.startswith("#"):
            section, function = line.split(":", 1)[0], None
        elif section == "functions" and (match := _FUNCTION.match(line)):
            function = match.group(1)
        if section == "server" and (match := _HOST.match(line)):
            line = f"{match.group(1)}{LISTEN_HOST}{match.group(2)}"
        elif section == "functions" and function and (match := _WORKERS.match(line)):
            workers = ", ".join(deployment_workers(function, functions[function]))
            line = f"{match.group(1)}[{workers}]{match.group(2)}"
            rewritten.add(function)
        out.append(line)
    missing = sorted(set(functions) - rewritten)
    if missing:
        raise RegistryError(
            f"cannot rewrite the workers of {missing}: give them as `workers: [HOST:PORT]`"
        )
    return HEADER + "\n" + "\n".join(out) + "\n"


def render_configmap(registry: str) -> str:
    """The Kubernetes ConfigMap holding ``registry`` as its functions.yaml."""
    body = "".join(f"    {line}\n" if line else "\n" for line in registry.splitlines())
    return (
        "# The function registry, mounted into every pod at /etc/dcf (DCF_CONFIG).\n"
        "# Written by `python docker/registry.py`: the same text as docker/functions.yaml.\n"
        "# The gateway re-reads it when it changes; a worker reads its entry at start:\n"
        "# kubectl -n dcf rollout restart deployment/NAME after changing NAME's entry.\n"
        "apiVersion: v1\n"
        "kind: ConfigMap\n"
        "metadata:\n"
        f"  name: {CONFIGMAP_NAME}\n"
        f"  namespace: {NAMESPACE}\n"
        "  labels:\n"
        "    app.kubernetes.io/part-of: dcf\n"
        "data:\n"
        f"  {KEY}: |\n"
        f"{body}"
    )


def expected() -> dict[Path, str]:
    """Each file this script writes and the text it would write."""
    registry = render_registry(PACKAGED.read_text())
    return {REGISTRY: registry, CONFIGMAP: render_configmap(registry)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python docker/registry.py", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--check", action="store_true", help="only check; exit 1 if stale")
    args = parser.parse_args(argv)
    try:
        files = expected()
    except RegistryError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    stale = [path for path, text in files.items() if not path.exists() or path.read_text() != text]
    if args.check:
        for path in stale:
            print(f"{path.relative_to(ROOT)} is stale: run python docker/registry.py")
        return 1 if stale else 0
    for path in stale:
        path.write_text(files[path])
        print(f"wrote {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
