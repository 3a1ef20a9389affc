"""Prometheus metrics (sitemessage.metrics) in a real registry, after real sends to aiosmtpd."""

from __future__ import annotations

import re
import socket
import urllib.request
from datetime import timedelta

import pytest
from django.test import RequestFactory
from django.utils import timezone
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from sitemessage import metrics
from sitemessage.exceptions import SiteMessageConfigurationError
from sitemessage.messages.email import EmailTextMessage
from sitemessage.models import Dispatch, Message
from sitemessage.sending import send_scheduled_messages
from sitemessage.toolbox import recipients, schedule_messages
from tests.fakes import free_port
from tests.processes import address

pytestmark = pytest.mark.django_db


@pytest.fixture
def registry(monkeypatch, settings):
    """Metrics on, installed into a registry of this test's own."""
    monkeypatch.setattr(metrics, '_metrics', None)
    settings.SITEMESSAGE_METRICS = True
    registry = CollectorRegistry()
    metrics.install(registry)
    return registry


def exposition(registry) -> dict:
    """``{'name{labels}': value}`` of the text format, as Prometheus reads it."""
    samples = {}
    for line in generate_latest(registry).decode().splitlines():
        if line and not line.startswith('#'):
            name, value = line.rsplit(' ', 1)
            samples[name] = float(value)
    return samples


def test_outcome_counters_latency_and_queue_gauges_after_a_real_send(registry, smtp_server, smtp_messenger, settings):
    settings.SITEMESSAGE_RETRY_DELAY_SECONDS = 600
    smtp_server.handler.refuse.update({'gone@example.com': '550 No such user', 'busy@example.com': '451 Later'})
    for to in ('one@example.com', 'two@example.com', 'gone@example.com', 'busy@example.com'):
        schedule_messages(EmailTextMessage('Hi', 'Hello'), recipients('smtp', to))
    # One of them waited 100 seconds in the queue before this run.
    Dispatch.objects.filter(address='one@example.com').update(time_created=timezone.now() - timedelta(seconds=100))
    Message.objects.create(cls='plain', context={}, dispatches_ready=False)

    report = send_scheduled_messages()
    samples = exposition(registry)

    assert (report.sent, report.errors, report.failed) == (2, 1, 1)
    assert len(smtp_server.handler.envelopes) == 2
    assert samples['sitemessage_dispatches_total{messenger="smtp",outcome="sent"}'] == 2
    assert samples['sitemessage_dispatches_total{messenger="smtp",outcome="error"}'] == 1
    assert samples['sitemessage_dispatches_total{messenger="smtp",outcome="failed"}'] == 1
    # Latency from creation to sent: one took about 100 s, the other well under 5 s.
    assert samples['sitemessage_send_latency_seconds_count{messenger="smtp"}'] == 2
    assert samples['sitemessage_send_latency_seconds_bucket{le="5.0",messenger="smtp"}'] == 1
    assert samples['sitemessage_send_latency_seconds_bucket{le="60.0",messenger="smtp"}'] == 1
    assert samples['sitemessage_send_latency_seconds_bucket{le="120.0",messenger="smtp"}'] == 2
    assert 100 <= samples['sitemessage_send_latency_seconds_sum{messenger="smtp"}'] < 110
    # Gauges measured at scrape time: the 451 waits for its retry (not due), the 550 failed.
    assert samples['sitemessage_queue_dispatches{messenger="smtp",status="error"}'] == 1
    assert samples['sitemessage_queue_dispatches{messenger="smtp",status="failed"}'] == 1
    assert samples['sitemessage_queue_dispatches{messenger="smtp",status="pending"}'] == 0
    assert samples['sitemessage_queue_due_dispatches{messenger="smtp"}'] == 0
    assert samples['sitemessage_queue_oldest_due_age_seconds{messenger="smtp"}'] == 0
    assert samples['sitemessage_messages_awaiting_preparation'] == 1


def test_queue_gauges_follow_the_queue_without_a_send(registry):
    schedule_messages('hello', recipients('fake', ['a', 'b']))
    Dispatch.objects.update(time_created=timezone.now() - timedelta(seconds=50))

    samples = exposition(registry)

    assert samples['sitemessage_queue_dispatches{messenger="fake",status="pending"}'] == 2
    assert samples['sitemessage_queue_due_dispatches{messenger="fake"}'] == 2
    assert 50 <= samples['sitemessage_queue_oldest_due_age_seconds{messenger="fake"}'] < 60
    assert not any(name.startswith('sitemessage_dispatches_total') for name in samples)  # nothing sent yet

    Dispatch.objects.update(dispatch_status=Dispatch.DISPATCH_STATUS_SENT)
    # A registered messenger with nothing queued reports zeros (its series do not vanish).
    samples = exposition(registry)
    assert samples['sitemessage_queue_dispatches{messenger="fake",status="pending"}'] == 0
    assert samples['sitemessage_queue_oldest_due_age_seconds{messenger="fake"}'] == 0


def test_counting_outcomes_costs_no_query(registry, fake_messenger, django_assert_num_queries):
    schedule_messages('hello', recipients('fake', ['a', 'b', 'c']))
    dispatches = list(Dispatch.objects.all())
    for dispatch in dispatches:
        dispatch.dispatch_status = Dispatch.DISPATCH_STATUS_SENT
    with django_assert_num_queries(0):
        metrics.observe_outcomes(dispatches)
    assert exposition(registry)['sitemessage_dispatches_total{messenger="fake",outcome="sent"}'] == 3


def test_metrics_view_serves_the_text_format(registry, fake_messenger):
    schedule_messages('hello', recipients('fake', 'a'))
    send_scheduled_messages()

    response = metrics.metrics_view(RequestFactory().get('/metrics'))

    assert response.status_code == 200
    assert response['Content-Type'] == CONTENT_TYPE_LATEST
    assert 'sitemessage_dispatches_total{messenger="fake",outcome="sent"} 1.0' in response.content.decode()


def test_metrics_are_off_by_default(monkeypatch, fake_messenger):
    monkeypatch.setattr(metrics, '_metrics', None)
    schedule_messages('hello', recipients('fake', 'a'))
    send_scheduled_messages()

    assert metrics.get_metrics() is None
    assert metrics._metrics is None
    with pytest.raises(SiteMessageConfigurationError, match='SITEMESSAGE_METRICS is False'):
        metrics.metrics_view(RequestFactory().get('/metrics'))


def test_bad_metrics_settings_are_named(monkeypatch, settings):
    monkeypatch.setattr(metrics, '_metrics', None)
    settings.SITEMESSAGE_METRICS = 'yes'
    with pytest.raises(SiteMessageConfigurationError, match="SITEMESSAGE_METRICS must be True or False, got 'yes'"):
        metrics.get_metrics()
    settings.SITEMESSAGE_METRICS = True
    settings.SITEMESSAGE_METRICS_PORT = 'http'
    with pytest.raises(
        SiteMessageConfigurationError, match="SITEMESSAGE_METRICS_PORT must be a port number, got 'http'"
    ):
        metrics.start_metrics_server()


def test_a_metrics_failure_never_breaks_delivery(monkeypatch, settings, fake_messenger, caplog):
    monkeypatch.setattr(metrics, '_metrics', None)
    settings.SITEMESSAGE_METRICS = 'yes'  # observe_outcomes() raises on it, after the outcomes are stored
    schedule_messages('hello', recipients('fake', 'a'))

    report = send_scheduled_messages()

    assert report.sent == 1
    assert Dispatch.objects.get().dispatch_status == Dispatch.DISPATCH_STATUS_SENT
    assert 'Could not update the sitemessage metrics' in caplog.text


def test_worker_serves_metrics_on_the_port_setting(procs, sink):
    procs.use_sink(sink)
    port = free_port()  # the worker process is told the port of its metrics server in advance
    procs.orm('schedule', count=3, prefix='metrics')
    worker = procs.start('sitemessage_worker', '--idle', '0.2', settings={'METRICS': True, 'METRICS_PORT': port})
    assert sink.handler.wait_for(3, timeout=30), worker.output()
    assert worker.wait_for_output('Sent: 3', timeout=30), worker.output()

    with urllib.request.urlopen(f'http://127.0.0.1:{port}/metrics', timeout=10) as response:
        text = response.read().decode()

    assert re.search(r'^sitemessage_dispatches_total\{messenger="smtp",outcome="sent"\} 3\.0$', text, re.M), text
    assert re.search(r'^sitemessage_queue_dispatches\{messenger="smtp",status="pending"\} 0\.0$', text, re.M)
    assert sorted(sink.handler.rcpts()) == [address('metrics', index) for index in range(3)]


def test_a_busy_metrics_port_is_named(registry, settings):
    with socket.socket() as busy:
        busy.bind(('127.0.0.1', 0))
        busy.listen()
        port = busy.getsockname()[1]
        settings.SITEMESSAGE_METRICS_PORT = port
        with pytest.raises(SiteMessageConfigurationError, match=f'Cannot serve the metrics on 127.0.0.1:{port}'):
            metrics.start_metrics_server()
