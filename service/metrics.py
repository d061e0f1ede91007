"""Prometheus metrics: requests and latencies per route, jobs by state, queue depth.

One registry per app (tests build several apps in one process). Job and queue figures are
read when scraped, so they are current and cost nothing between scrapes.
"""

from __future__ import annotations

import logging

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily

from .readiness import jobs_by_state, queue_depths

log = logging.getLogger("service.metrics")

BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class _JobsCollector:
    def collect(self):
        jobs = GaugeMetricFamily("mcvae_jobs", "Jobs by state and kind", labels=["state", "kind"])
        try:
            for (state, kind), n in sorted(jobs_by_state().items()):
                jobs.add_metric([state, kind], n)
        except Exception:
            log.warning("could not count jobs for /metrics", exc_info=True)
        yield jobs
        depth = GaugeMetricFamily("mcvae_queue_depth", "Messages waiting in each broker queue",
                                  labels=["queue"])
        try:
            for queue, n in sorted(queue_depths().items()):
                depth.add_metric([queue], n)
        except Exception:
            log.warning("could not read queue depths for /metrics", exc_info=True)
        yield depth

    def describe(self):
        return []  # no eager collection at registration


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("mcvae_http_requests", "HTTP requests by method, route and status",
                                ["method", "route", "status"], registry=self.registry)
        self.latency = Histogram("mcvae_http_request_duration_seconds",
                                 "Time to the last byte of the response", ["method", "route"],
                                 buckets=BUCKETS, registry=self.registry)
        self.registry.register(_JobsCollector())

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        self.requests.labels(method, route, str(status)).inc()
        self.latency.labels(method, route).observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
