"""Job-level metrics for Prometheus: what the night's work is doing, read from the database and the broker.

Flower's ``/metrics`` says what the *workers* do (events, task run times, workers online). This
exporter says what the *work* does: items done, failed and pending, unfinished batches and queue
depth per queue, how long the oldest unfinished batch has waited, and how long a queue with work on
it has gone without finishing a batch. ``medbatch metrics`` serves it on ``/metrics``.

Every value is computed when Prometheus scrapes (a custom collector, no background thread), with
cheap queries through :mod:`medbatch.db.repository` and ``LLEN`` on the broker. Labels are queue,
workload and status names only: never a job, item, patient or path.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import redis
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry

from medbatch.config import error_reason
from medbatch.db import repository as repo
from medbatch.db.session import session_scope
from medbatch.db.tables import BatchStatus, ItemStatus
from medbatch.defaults import DRIFT_OUT_OF_RANGE_MAX, DRIFT_PSI_MAX, METRICS_PORT
from medbatch.worker.routing import QUEUES, WORKLOADS

log = logging.getLogger(__name__)

#: Item, batch and report counts cover jobs still open or finished within this window (tonight's work),
#: so a scrape costs the same after a year of history as on the first night.
RECENT_WINDOW_S = 24 * 3600
#: Counting items reads one index entry per item of the recent jobs (about 0.5 s for 1M on PostgreSQL),
#: so those counts are refreshed at most this often; everything else is read on every scrape.
ITEM_COUNTS_EVERY_S = 60.0
#: A scrape's database work is cut off after this long (PostgreSQL ``statement_timeout``).
QUERY_TIMEOUT_S = 8.0

#: kombu's Redis transport keeps priority levels above 0 in lists named ``<queue>\x06\x16<priority>``.
KOMBU_PRIORITY_SEP = "\x06\x16"
KOMBU_PRIORITY_STEPS = (0, 3, 6, 9)
#: kombu's hash of messages delivered to a worker and not yet acknowledged (running or prefetched).
KOMBU_UNACKED_KEY = "unacked"

UNFINISHED_BATCH = (BatchStatus.PENDING.value, BatchStatus.QUEUED.value, BatchStatus.RUNNING.value)


def queue_keys(queue: str) -> list[str]:
    """The Redis lists that hold ``queue``'s waiting messages, one per kombu priority step."""
    return [queue if p == 0 else f"{queue}{KOMBU_PRIORITY_SEP}{p}" for p in KOMBU_PRIORITY_STEPS]


class MedbatchCollector(Collector):
    """Collects medbatch's job-level metrics on each scrape; scrapes are serialised by a lock."""

    def __init__(
        self,
        database_url: str,
        broker_url: str,
        *,
        queues: tuple[str, ...] = QUEUES,
        window_s: float = RECENT_WINDOW_S,
        item_counts_every_s: float = ITEM_COUNTS_EVERY_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.database_url = database_url
        self.queues = queues
        self.window_s = window_s
        self.item_counts_every_s = item_counts_every_s
        self.clock = clock
        self._redis = redis.Redis.from_url(broker_url, socket_timeout=5, socket_connect_timeout=5)
        self._lock = threading.Lock()
        self._items: dict[tuple[str, str], int] = {}
        self._items_at = float("-inf")

    def collect(self) -> Iterator[GaugeMetricFamily]:
        with self._lock:
            yield from self._broker_metrics()
            yield from self._database_metrics()

    # ---------------------------------------------------------------- broker

    def _broker_metrics(self) -> Iterator[GaugeMetricFamily]:
        up = GaugeMetricFamily("medbatch_broker_up", "1 when the exporter could read the broker's queues, else 0")
        try:
            with self._redis.pipeline(transaction=False) as pipe:
                for queue in self.queues:
                    for key in queue_keys(queue):
                        pipe.llen(key)
                pipe.hlen(KOMBU_UNACKED_KEY)
                sizes = pipe.execute()
        except redis.RedisError as exc:
            log.warning("metrics: broker unreadable: %s", error_reason(exc))
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        depth = GaugeMetricFamily(
            "medbatch_queue_depth_messages",
            "Messages waiting on the queue in the broker (Redis LLEN, all priorities), not yet taken by a worker",
            labels=["queue"],
        )
        steps = len(KOMBU_PRIORITY_STEPS)
        for i, queue in enumerate(self.queues):
            depth.add_metric([queue], sum(int(n) for n in sizes[i * steps : (i + 1) * steps]))
        yield depth
        unacked = GaugeMetricFamily(
            "medbatch_broker_unacked_messages",
            "Messages delivered to workers and not yet acknowledged (running or prefetched), all queues",
        )
        unacked.add_metric([], int(sizes[-1]))
        yield unacked

    # ---------------------------------------------------------------- database

    def _database_metrics(self) -> Iterator[GaugeMetricFamily]:
        up = GaugeMetricFamily("medbatch_database_up", "1 when the exporter could query the database, else 0")
        started = time.perf_counter()
        now = self.clock()
        try:
            with session_scope(self.database_url) as s:
                repo.limit_statement_time(s, QUERY_TIMEOUT_S)
                backlog = repo.monitoring_unfinished_batches(s)
                last_done = repo.monitoring_last_batch_finished(s, window_s=self.window_s)
                jobs = repo.monitoring_job_counts(s)
                llm = repo.monitoring_llm_usage(s, window_s=self.window_s)
                drift = repo.monitoring_latest_drift(s)
                if now - self._items_at >= self.item_counts_every_s:
                    self._items = repo.monitoring_item_counts(s, window_s=self.window_s)
                    self._items_at = now
        except Exception as exc:  # noqa: BLE001 - a scrape reports the outage instead of failing
            log.warning("metrics: database unreadable: %s", error_reason(exc))
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield from self._item_families(now)
        yield from self._queue_families(now, backlog, last_done)
        yield _labelled(
            "medbatch_jobs",
            "Jobs by workload and status (all jobs in the database)",
            ["workload", "status"],
            jobs,
        )
        tokens = GaugeMetricFamily(
            "medbatch_llm_tokens",
            "LLM tokens of the reports drafted for recent jobs (open or finished in the window), by direction",
            labels=["direction"],
        )
        tokens.add_metric(["in"], llm["tokens_in"])
        tokens.add_metric(["out"], llm["tokens_out"])
        yield tokens
        cost = GaugeMetricFamily("medbatch_llm_cost_usd", "Priced LLM cost in USD of the recent jobs' reports")
        cost.add_metric([], llm["cost_usd"])
        yield cost
        yield from _drift_families(drift)
        took = GaugeMetricFamily("medbatch_exporter_query_seconds", "Database time this scrape took")
        took.add_metric([], time.perf_counter() - started)
        yield took

    def _item_families(self, now: float) -> Iterator[GaugeMetricFamily]:
        counts = {(w, s.value): 0 for w in WORKLOADS for s in ItemStatus}
        counts.update(self._items)
        yield _labelled(
            "medbatch_items",
            f"Items of recent jobs (open, or finished in the last {self.window_s / 3600:g} h) by workload and state",
            ["workload", "state"],
            counts,
        )
        age = GaugeMetricFamily(
            "medbatch_items_counted_age_seconds",
            f"Seconds since medbatch_items was counted (recounted at most every {self.item_counts_every_s:g} s)",
        )
        age.add_metric([], max(0.0, now - self._items_at))
        yield age

    def _queue_families(
        self, now: float, backlog: dict[str, repo.QueueBacklog], last_done: dict[str, Any]
    ) -> Iterator[GaugeMetricFamily]:
        batches = GaugeMetricFamily(
            "medbatch_batches_unfinished",
            "Unfinished batches by queue and status: pending (not sent), queued (sent), running (claimed by a worker)",
            labels=["queue", "status"],
        )
        oldest = GaugeMetricFamily(
            "medbatch_oldest_unfinished_batch_age_seconds",
            "Seconds since the oldest unfinished batch of the queue was queued (0 when none is unfinished)",
            labels=["queue"],
        )
        finished_at = GaugeMetricFamily(
            "medbatch_last_batch_finished_timestamp_seconds",
            "Unix time the queue last finished a batch of a recent job (absent when none in the window)",
            labels=["queue"],
        )
        since_done = GaugeMetricFamily(
            "medbatch_seconds_since_last_batch_finished",
            "Seconds since the queue last finished a batch of a recent job (absent when none in the window)",
            labels=["queue"],
        )
        stalled = GaugeMetricFamily(
            "medbatch_no_progress_seconds",
            "While the queue has unfinished batches: seconds since it last finished one, counted from when the "
            "oldest of them was queued if that is later; 0 when nothing is unfinished",
            labels=["queue"],
        )
        for queue in sorted(set(self.queues) | set(backlog)):
            waiting = backlog.get(queue)
            for status in UNFINISHED_BATCH:
                batches.add_metric([queue, status], waiting.batches.get(status, 0) if waiting else 0)
            since = waiting.oldest_waiting_since.timestamp() if waiting and waiting.oldest_waiting_since else None
            oldest.add_metric([queue], max(0.0, now - since) if since is not None else 0.0)
            done = last_done[queue].timestamp() if queue in last_done else None
            if done is not None:
                finished_at.add_metric([queue], done)
                since_done.add_metric([queue], max(0.0, now - done))
            if since is None:
                stalled.add_metric([queue], 0.0)
            else:
                stalled.add_metric([queue], max(0.0, now - max(since, done if done is not None else since)))
        yield from (batches, oldest, finished_at, since_done, stalled)


def _drift_families(drift: dict[str, dict[str, Any]]) -> Iterator[GaugeMetricFamily]:
    """Input drift of the latest measured job per tabular or X-ray workload (PSI, out-of-range share per feature)."""
    psi = GaugeMetricFamily(
        "medbatch_drift_psi",
        "PSI of a feature, latest measured job vs the training data",
        labels=["workload", "feature"],
    )
    outside = GaugeMetricFamily(
        "medbatch_drift_out_of_range_ratio",
        "Share (0-1) of the latest measured job's rows outside the feature's training range",
        labels=["workload", "feature"],
    )
    flagged = GaugeMetricFamily(
        "medbatch_drift_flagged_features",
        f"Features flagged as drifted (PSI > {DRIFT_PSI_MAX} or > {DRIFT_OUT_OF_RANGE_MAX:.0%} out of range) "
        "in the latest measured job",
        labels=["workload"],
    )
    scores = GaugeMetricFamily(
        "medbatch_drift_score_psi",
        "PSI of the latest measured job's scores vs the held-out scores",
        labels=["workload"],
    )
    for workload, d in sorted(drift.items()):
        for feature, v in sorted((d.get("features") or {}).items()):
            psi.add_metric([workload, feature], v["psi"])
            outside.add_metric([workload, feature], v["out_of_range_share"])
        flagged.add_metric([workload], len(d.get("flagged") or []))
        if d.get("scores"):
            scores.add_metric([workload], d["scores"]["psi"])
    yield from (psi, outside, flagged, scores)


def _labelled(name: str, doc: str, labels: list[str], values: dict[tuple[str, ...], float]) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, doc, labels=labels)
    for key in sorted(values):
        family.add_metric(list(key), values[key])
    return family


def make_registry(database_url: str, broker_url: str, **options: Any) -> CollectorRegistry:
    """A registry holding only medbatch's collector (no process or Python metrics)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(MedbatchCollector(database_url, broker_url, **options))
    return registry


def serve(
    database_url: str,
    broker_url: str,
    *,
    port: int = METRICS_PORT,
    address: str = "127.0.0.1",
    **options: Any,
) -> tuple[Any, threading.Thread]:
    """Serve the metrics over HTTP in a background thread; returns ``(server, thread)``.

    Every path answers with the metrics in Prometheus text format; Prometheus asks for ``/metrics``.
    """
    from prometheus_client import start_http_server

    return start_http_server(port, addr=address, registry=make_registry(database_url, broker_url, **options))
