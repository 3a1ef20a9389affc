"""Waking workers after the scheduling transaction commits (sitemessage/background/wakeup.py)."""

from __future__ import annotations

import logging

import pytest
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext, override_settings

from sitemessage import wakeup
from sitemessage.exceptions import SiteMessageConfigurationError
from sitemessage.models import Message
from sitemessage.toolbox import recipients, schedule_messages

pytestmark = pytest.mark.django_db

postgres_only = pytest.mark.skipif(
    connection.vendor != 'postgresql', reason='SITEMESSAGE_TEST_DB=postgres: LISTEN/NOTIFY is PostgreSQL only'
)
not_postgres = pytest.mark.skipif(
    connection.vendor == 'postgresql', reason='SITEMESSAGE_TEST_DB: workers poll on databases without NOTIFY'
)


def test_the_announcement_waits_for_the_commit(django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        wakeup.queue_changed()
    assert len(callbacks) == 1


def test_scheduling_announces_once_per_scheduling(django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        schedule_messages(['one', 'two'], recipients('fake', ['a', 'b']))
    assert len(callbacks) == 1


@pytest.mark.parametrize('target', ['rq', 'CELERY', 'tasks'])
def test_an_unknown_enqueue_target_raises_before_anything_is_registered(target, django_capture_on_commit_callbacks):
    with (
        override_settings(SITEMESSAGE_ENQUEUE_ON_SCHEDULE=target),
        django_capture_on_commit_callbacks(execute=False) as callbacks,
    ):
        with pytest.raises(SiteMessageConfigurationError, match=rf"must be .* got '{target}'"):
            wakeup.queue_changed()
        with pytest.raises(SiteMessageConfigurationError):
            schedule_messages('text', recipients('fake', 'a'))
    assert callbacks == []
    assert not Message.objects.exists()  # refused before the commit: nothing stored


@not_postgres
def test_without_notify_the_commit_runs_no_query(django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        wakeup.queue_changed()
    with CaptureQueriesContext(connection) as queries:
        callbacks[0]()
    assert queries.captured_queries == []


def test_an_enqueue_failure_after_the_commit_is_logged_not_raised(django_capture_on_commit_callbacks, caplog):
    with override_settings(SITEMESSAGE_ENQUEUE_ON_SCHEDULE='django_tasks'):
        with django_capture_on_commit_callbacks(execute=False) as callbacks:
            wakeup.queue_changed()
    # Between the scheduling and its commit the target became unusable: the commit must not fail for it.
    with override_settings(SITEMESSAGE_ENQUEUE_ON_SCHEDULE='rq'), caplog.at_level(logging.ERROR, 'sitemessage.wakeup'):
        callbacks[0]()
    [record] = [r for r in caplog.records if r.name == 'sitemessage.wakeup']
    assert record.getMessage().startswith(
        'Could not enqueue a send task on rq (SiteMessageConfigurationError: SITEMESSAGE_ENQUEUE_ON_SCHEDULE must be'
    )
    assert 'the message is stored and the next delivery run sends it' in record.getMessage()


def test_no_enqueue_target_enqueues_nothing(django_capture_on_commit_callbacks, caplog):
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        wakeup.queue_changed()
    with caplog.at_level(logging.DEBUG):
        callbacks[0]()
    assert [r for r in caplog.records if r.name.startswith('sitemessage')] == []


@not_postgres
def test_without_notify_workers_do_not_listen_and_waiting_is_a_plain_wait():
    with CaptureQueriesContext(connection) as queries:
        assert wakeup.listen() is False
    assert queries.captured_queries == []
    assert wakeup.wait_for_work(0) is False  # nothing can notify: it never reports a wake-up


@postgres_only
@pytest.mark.django_db(transaction=True)
def test_a_committed_scheduling_notifies_a_listening_connection():
    assert wakeup.listen() is True
    for address in ('a', 'b'):
        with transaction.atomic():
            schedule_messages('text', recipients('fake', address))
    assert wakeup.wait_for_work(5) is True  # returns as soon as a notification is there: no real wait
    assert wakeup.wait_for_work(0) is False  # one wake-up for both schedulings: nothing left pending
