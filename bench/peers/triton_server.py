"""Triton Inference Server through PyTriton, serving ssd and echo for the peer benchmark.

Runs inside build/pytriton-venv (``make bench-peers-triton``), never in the
project's environment:

    python -m bench.peers.triton_server GRPC_PORT HTTP_PORT METRICS_PORT INSTANCES THREADS

Both models take one BYTES element and answer one, without batching. ssd does
bench.bare.PlainSsd's work (the same decode, resize, invoke and JSON as dcf's
ssd) on ``INSTANCES`` model instances, each with its own interpreter of
``THREADS`` threads. Triton's bundled server loads the Python backend, which
links against libpython: its folder goes on ``LD_LIBRARY_PATH`` before PyTriton
starts the server.
"""

from __future__ import annotations

import os
import sys
import sysconfig
from collections.abc import Callable
from typing import Any

import numpy as np
from pytriton.model_config import ModelConfig, Tensor  # type: ignore[import-not-found]
from pytriton.triton import Triton, TritonConfig  # type: ignore[import-not-found]

from bench.bare import PlainSsd

Infer = Callable[[list[Any]], list[dict[str, np.ndarray]]]


def _element(request: Any) -> bytes:
    return bytes(request["INPUT"].reshape(-1)[0])


def _answer(data: bytes) -> dict[str, np.ndarray]:
    return {"OUTPUT": np.array([data], dtype=object)}


def ssd_instance(model: PlainSsd) -> Infer:
    def infer(requests: list[Any]) -> list[dict[str, np.ndarray]]:
        return [_answer(model.answer(_element(request))) for request in requests]

    return infer


def echo(requests: list[Any]) -> list[dict[str, np.ndarray]]:
    return [_answer(_element(request)) for request in requests]


def main() -> None:
    grpc_port, http_port, metrics_port, instances, threads = (int(a) for a in sys.argv[1:6])
    libdir = sysconfig.get_config_var("LIBDIR") or ""
    os.environ["LD_LIBRARY_PATH"] = ":".join(
        part for part in (libdir, os.environ.get("LD_LIBRARY_PATH", "")) if part
    )
    config = TritonConfig(
        grpc_port=grpc_port,
        http_port=http_port,
        metrics_port=metrics_port,
        grpc_address="127.0.0.1",
        http_address="127.0.0.1",
        allow_metrics=False,
        log_verbose=0,
    )
    io = {
        "inputs": [Tensor(name="INPUT", dtype=bytes, shape=(1,))],
        "outputs": [Tensor(name="OUTPUT", dtype=bytes, shape=(1,))],
        "config": ModelConfig(batching=False),
    }
    with Triton(config=config) as triton:
        triton.bind(
            model_name="ssd",
            infer_func=[ssd_instance(PlainSsd(threads)) for _ in range(instances)],
            **io,
        )
        triton.bind(model_name="echo", infer_func=echo, **io)
        triton.serve()


if __name__ == "__main__":
    main()
