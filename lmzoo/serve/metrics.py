"""Prometheus metrics of a server (prometheus_client, one registry per app):

    lmzoo_requests_running / lmzoo_requests_waiting      gauges, read at scrape time
    lmzoo_prompt_tokens_total / lmzoo_generation_tokens_total
    lmzoo_prompt_cached_tokens_total                     prompt tokens found in a cache row (not prefilled)
    lmzoo_requests_finished_total{finish_reason}         stop / length / cancelled / error
    lmzoo_time_to_first_token_seconds                    histogram: submit -> first generated token
    lmzoo_inter_token_latency_seconds                    histogram: between a request's tokens
    lmzoo_e2e_request_latency_seconds                    histogram: submit -> finish

Times are taken on the engine thread when each step's events come out (what a client then receives
within one event-loop hop).
"""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0)
ITL_BUCKETS = (0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 2.5)
E2E_BUCKETS = (0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 80.0, 160.0, 320.0)
CONTENT_TYPE = CONTENT_TYPE_LATEST


class ServerMetrics:
    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.running = Gauge("lmzoo_requests_running", "Requests being decoded.", registry=r)
        self.waiting = Gauge("lmzoo_requests_waiting", "Requests queued for a slot.", registry=r)
        self.prompt_tokens = Counter("lmzoo_prompt_tokens", "Prompt tokens of finished requests.", registry=r)
        self.cached_tokens = Counter("lmzoo_prompt_cached_tokens", "Prompt tokens of finished requests found in "
                                     "a cache row (the engine's prompt cache), not prefilled.", registry=r)
        self.generation_tokens = Counter("lmzoo_generation_tokens", "Generated tokens.", registry=r)
        self.finished = Counter("lmzoo_requests_finished", "Finished requests.", ["finish_reason"], registry=r)
        self.ttft = Histogram("lmzoo_time_to_first_token_seconds", "Submit to first token.", buckets=TTFT_BUCKETS,
                              registry=r)
        self.itl = Histogram("lmzoo_inter_token_latency_seconds", "Between tokens of a request.",
                             buckets=ITL_BUCKETS, registry=r)
        self.e2e = Histogram("lmzoo_e2e_request_latency_seconds", "Submit to finish.", buckets=E2E_BUCKETS,
                             registry=r)
        self._times: dict[str, tuple[float, float | None]] = {}  # request id -> (submitted, last token)

    def watch(self, counts) -> None:
        """counts(): (running, waiting), read at every scrape."""
        self.running.set_function(lambda: counts()[0])
        self.waiting.set_function(lambda: counts()[1])

    def submitted(self, rid: str) -> None:
        self._times[rid] = (time.perf_counter(), None)

    def events(self, events) -> None:
        now = time.perf_counter()
        for ev in events:
            start, last = self._times.get(ev.request_id, (None, None))
            if start is None:
                continue
            if ev.token is not None:
                self.generation_tokens.inc()
                if last is None:
                    self.ttft.observe(now - start)
                else:
                    self.itl.observe(now - last)
                self._times[ev.request_id] = (start, now)
            if ev.finish_reason is not None:
                self.prompt_tokens.inc(ev.prompt_tokens or 0)
                self.cached_tokens.inc(ev.cached_tokens or 0)
                self.finished.labels(ev.finish_reason).inc()
                self.e2e.observe(now - start)
                self._times.pop(ev.request_id, None)

    def failed(self, rids) -> None:
        for rid in rids:
            if self._times.pop(rid, None) is not None:
                self.finished.labels("error").inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
