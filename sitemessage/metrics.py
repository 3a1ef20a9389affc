"""Prometheus metrics of the delivery queue (``pip install django-sitemessage[prometheus]``).

Off unless ``SITEMESSAGE_METRICS = True``: ``prometheus_client`` is imported only then. Counters and
the latency histogram are fed where a batch's outcomes are stored (one call per batch, no query);
the queue gauges are measured at scrape time by :class:`QueueCollector` with a few aggregate
queries. Expose them with :func:`metrics_view` (route it in your URLconf) or, in the worker, on
``SITEMESSAGE_METRICS_PORT`` (:func:`start_metrics_server`).
"""

from __future__ import annotations

import logging
import threading
from typing import Iterable, Optional

from django.db import connection
from django.http import HttpRequest, HttpResponse
from django.utils import timezone

from .exceptions import SiteMessageConfigurationError
from .models import Dispatch
from .queue_status import QUEUE_STATUSES, MessengerStatus, get_queue_status
from .registry import get_registered_messenger_objects
from .settings import get_setting

LOGGER = logging.getLogger(__name__)

# From a second to a day: mail goes out in seconds when all is well, in hours when it is not.
LATENCY_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 3 * 3600, 6 * 3600, 24 * 3600)

_lock = threading.Lock()
_metrics: Optional['SitemessageMetrics'] = None


def metrics_enabled() -> bool:
    """Whether ``SITEMESSAGE_METRICS`` is on; a value other than True/False is named in the error."""
    value = get_setting('METRICS')
    if not isinstance(value, bool):
        raise SiteMessageConfigurationError(f'SITEMESSAGE_METRICS must be True or False, got {value!r}.')
    return value


def _prometheus():
    try:
        import prometheus_client
    except ImportError as error:
        raise SiteMessageConfigurationError(
            'SITEMESSAGE_METRICS is True but prometheus_client is not installed: '
            'pip install django-sitemessage[prometheus]'
        ) from error
    return prometheus_client


class QueueCollector:
    """Gauges of the queue, measured by :func:`~sitemessage.queue_status.get_queue_status` at each scrape."""

    def collect(self):
        from prometheus_client.core import GaugeMetricFamily

        was_open = connection.connection is not None
        try:
            status = get_queue_status()
        finally:
            # The worker's metrics server scrapes in a thread of its own: leave no connection behind.
            if not was_open and not connection.in_atomic_block:
                connection.close()
        depth = GaugeMetricFamily(
            'sitemessage_queue_dispatches',
            'Dispatches by status (sent ones are not counted).',
            labels=['messenger', 'status'],
        )
        due = GaugeMetricFamily(
            'sitemessage_queue_due_dispatches', 'Dispatches that may be sent now.', labels=['messenger']
        )
        oldest = GaugeMetricFamily(
            'sitemessage_queue_oldest_due_age_seconds',
            'Seconds since the oldest due dispatch became due (0 when none is due).',
            labels=['messenger'],
        )
        # Registered messengers with an empty queue report zeros rather than no series at all.
        for alias in get_registered_messenger_objects():
            status.messengers.setdefault(alias, MessengerStatus())
        for alias, messenger in sorted(status.messengers.items()):
            for name in QUEUE_STATUSES.values():
                depth.add_metric([alias, name], getattr(messenger, name))
            due.add_metric([alias], messenger.due)
            oldest.add_metric([alias], messenger.oldest_due_age or 0.0)
        yield depth
        yield due
        yield oldest
        yield GaugeMetricFamily(
            'sitemessage_messages_awaiting_preparation',
            'Messages scheduled without recipients, waiting for prepare_dispatches().',
            value=status.awaiting_preparation,
        )

    def describe(self):
        return []  # measured only when scraped: registering must not query the database


class SitemessageMetrics:
    """The metrics of one registry: outcome counters, the latency histogram and the queue collector."""

    def __init__(self, registry):
        prometheus_client = _prometheus()
        self.registry = registry
        self.dispatches = prometheus_client.Counter(
            'sitemessage_dispatches',
            'Delivery attempts by outcome (sent, error: to retry, failed: given up).',
            ['messenger', 'outcome'],
            registry=registry,
        )
        self.latency = prometheus_client.Histogram(
            'sitemessage_send_latency_seconds',
            'Seconds from the creation of a dispatch until it was sent.',
            ['messenger'],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        registry.register(QueueCollector())

    def observe(self, dispatches: Iterable) -> None:
        """Count the stored outcomes of a batch and the latency of the dispatches it sent."""
        outcomes = {
            Dispatch.DISPATCH_STATUS_SENT: 'sent',
            Dispatch.DISPATCH_STATUS_ERROR: 'error',
            Dispatch.DISPATCH_STATUS_FAILED: 'failed',
        }
        now = timezone.now()
        for dispatch in dispatches:
            outcome = outcomes.get(dispatch.dispatch_status)
            if outcome is None:
                continue  # put back untouched (a rate limit): not an attempt
            self.dispatches.labels(dispatch.messenger, outcome).inc()
            if outcome == 'sent' and dispatch.time_created is not None:
                self.latency.labels(dispatch.messenger).observe(max((now - dispatch.time_created).total_seconds(), 0))


def install(registry=None) -> SitemessageMetrics:
    """Create the metrics in ``registry`` (prometheus_client's default one if None) and use them from now on.

    Called on first use when ``SITEMESSAGE_METRICS`` is True; call it yourself to use a registry of
    your own. Installing again into the registry in use returns the metrics already there.
    """
    global _metrics
    with _lock:
        if registry is None:
            registry = _prometheus().REGISTRY
        if _metrics is None or _metrics.registry is not registry:
            _metrics = SitemessageMetrics(registry)
        return _metrics


def get_metrics() -> Optional[SitemessageMetrics]:
    """The metrics in use, installed on first use; None when ``SITEMESSAGE_METRICS`` is off."""
    if _metrics is not None:
        return _metrics
    if not metrics_enabled():
        return None
    return install()


def observe_outcomes(dispatches: Iterable) -> None:
    """Feed the counters with a batch's stored outcomes; does nothing when metrics are off.

    Metrics must never break delivery: an error here is logged, the outcomes are stored already.
    """
    try:
        metrics = get_metrics()
        if metrics is not None:
            metrics.observe(dispatches)
    except Exception:
        LOGGER.exception('Could not update the sitemessage metrics')


def metrics_view(request: HttpRequest) -> HttpResponse:
    """The metrics in Prometheus' text format; route it and restrict who may read it."""
    metrics = get_metrics()
    if metrics is None:
        raise SiteMessageConfigurationError(
            'sitemessage.metrics.metrics_view is routed but SITEMESSAGE_METRICS is False: set it to True.'
        )
    prometheus_client = _prometheus()
    return HttpResponse(
        prometheus_client.generate_latest(metrics.registry), content_type=prometheus_client.CONTENT_TYPE_LATEST
    )


def start_metrics_server() -> Optional[int]:
    """Serve the metrics on ``SITEMESSAGE_METRICS_ADDRESS``:``SITEMESSAGE_METRICS_PORT`` if a port is set.

    Returns the port, or None when no port is set. The worker calls it at start.
    """
    port = get_setting('METRICS_PORT')
    if port is None:
        return None
    if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
        raise SiteMessageConfigurationError(f'SITEMESSAGE_METRICS_PORT must be a port number, got {port!r}.')
    metrics = get_metrics()
    if metrics is None:
        raise SiteMessageConfigurationError(
            'SITEMESSAGE_METRICS_PORT is set but SITEMESSAGE_METRICS is False: set it to True.'
        )
    address = get_setting('METRICS_ADDRESS')
    try:
        _prometheus().start_http_server(port, addr=address, registry=metrics.registry)
    except OSError as error:
        raise SiteMessageConfigurationError(
            f'Cannot serve the metrics on {address}:{port} (SITEMESSAGE_METRICS_ADDRESS, _PORT): {error}'
        ) from error
    LOGGER.info('sitemessage metrics served on http://%s:%s/metrics', address, port)
    return port
