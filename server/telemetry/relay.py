"""The embedded default's workers' metrics, served again on its gateway's /metrics.

In the embedded default the workers are processes of the same machine, started by
the gateway's supervisor. A worker whose registry entry gives ``metrics_port``
serves its own metrics there (server/worker/metrics.py); the gateway then relays
them too, fetched from each local worker at every scrape, so that one scrape of the
gateway sees everything, as a Prometheus set up for the gateway alone expects. Only
the workers' ``dcf_worker_*`` families are relayed (each process has its own
``process_*`` and ``python_*``), as they are: every sample is labelled with its
function already. A worker that does not answer within ``TIMEOUT_SECONDS`` is left
out of that scrape, with a log line.

Deployments with workers of their own (compose, Kubernetes) scrape each worker
instead: behind one DNS name, a relay would see one replica of many.
"""

from __future__ import annotations

import logging
import urllib.request
from collections.abc import Iterable, Iterator, Sequence

from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector, CollectorRegistry

from server.config import Settings

log = logging.getLogger(__name__)

TIMEOUT_SECONDS = 5.0  # within Prometheus's default scrape timeout (10 s)
RELAYED_PREFIX = "dcf_worker_"


class WorkerMetricsRelay(Collector):
    """The ``dcf_worker_*`` metrics of the workers at ``urls``, merged family by family."""

    def __init__(self, urls: Sequence[str]) -> None:
        self.urls = list(urls)

    def collect(self) -> Iterator[Metric]:
        merged: dict[str, Metric] = {}
        for url in self.urls:
            for family in self._families(url):
                into = merged.get(family.name)
                if into is None:
                    merged[family.name] = family
                else:
                    into.samples.extend(family.samples)
        yield from merged.values()

    def describe(self) -> Iterable[Metric]:
        return []  # unknown until scraped: nothing to check against other collectors

    def _families(self, url: str) -> list[Metric]:
        try:
            with urllib.request.urlopen(url, timeout=TIMEOUT_SECONDS) as reply:
                text = reply.read().decode()
        except OSError as exc:
            log.warning("worker metrics at %s left out of this scrape: %s", url, exc)
            return []
        return [
            family
            for family in text_string_to_metric_families(text)
            if family.name.startswith(RELAYED_PREFIX)
        ]


def local_worker_urls(settings: Settings, local: Iterable[str]) -> list[str]:
    """The metrics URLs of the ``local`` workers (by function name) that serve metrics."""
    names = set(local)
    return [
        f"http://127.0.0.1:{fn.metrics_port}/metrics"
        for fn in settings.functions
        if fn.name in names and fn.metrics_port
    ]


def relay_local_workers(
    registry: CollectorRegistry, settings: Settings, local: Iterable[str]
) -> None:
    """Serve the local workers' metrics in ``registry`` too, if any of them serves some."""
    urls = local_worker_urls(settings, local)
    if urls:
        registry.register(WorkerMetricsRelay(urls))
