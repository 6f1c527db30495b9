"""Prometheus metrics of one server, in its own registry (tests can run several servers in one process)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily

STAGES = ("decode", "encoders", "router", "upstream")
_LATENCY = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class Metrics:
    def __init__(self):
        self.registry = r = CollectorRegistry()
        self.requests = Counter(
            "lr_onnx_requests_total", "HTTP requests by endpoint and status", ["endpoint", "status"], registry=r
        )
        self.latency = Histogram(
            "lr_onnx_request_seconds", "Request latency by endpoint", ["endpoint"], buckets=_LATENCY, registry=r
        )
        self.stage = Histogram(
            "lr_onnx_stage_seconds",
            "Seconds per stage: decode (per request with images), encoders and router (per batch), upstream (per call)",
            ["stage"],
            buckets=_LATENCY,
            registry=r,
        )
        self.batch = Histogram(
            "lr_onnx_batch_size", "Requests encoded together", buckets=(1, 2, 4, 8, 16, 32, 64, 128), registry=r
        )
        self.chosen = Counter("lr_onnx_chosen_total", "Decisions by chosen model", ["model"], registry=r)
        self.upstream_errors = Counter(
            "lr_onnx_upstream_errors_total",
            "Failed upstream calls by model and reason",
            ["model", "reason"],
            registry=r,
        )
        self.client_disconnects = Counter(
            "lr_onnx_client_disconnects_total",
            "Clients that went away before their request body arrived",
            ["endpoint"],
            registry=r,
        )
        self.queue = Gauge("lr_onnx_queue_depth", "Requests waiting for the router", registry=r)
        self.rejected = Counter(
            "lr_onnx_rejected_total", "Requests refused with 503 because the queue was full", registry=r
        )
        self.feedback = Counter(
            "lr_onnx_feedback_total", "Feedback accepted, by status (recorded, duplicate)", ["status"], registry=r
        )

    def watch_log(self, log) -> None:
        """Export the decision log's written and dropped record counts (a full disk drops, never blocks)."""
        self.registry.register(_LogCollector(log))

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _LogCollector:
    def __init__(self, log):
        self.log = log

    def collect(self):
        yield CounterMetricFamily(
            "lr_onnx_decision_log_written", "Decisions written to the decision log", value=self.log.written
        )
        yield CounterMetricFamily(
            "lr_onnx_decision_log_dropped", "Decisions not logged (queue full or disk full)", value=self.log.dropped
        )
