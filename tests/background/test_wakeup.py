"""Waking workers after the scheduling transaction commits (sitemessage/background/wakeup.py)."""

from __future__ import annotations

import logging
import re
import socket
import time
import uuid

import pytest
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext, override_settings

from sitemessage import wakeup
from sitemessage.background import channels
from sitemessage.exceptions import SiteMessageConfigurationError
from sitemessage.models import Message
from sitemessage.toolbox import recipients, schedule_messages
from tests.processes import redis_url

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


@not_postgres
def test_scheduling_announces_once_per_scheduling(django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        schedule_messages(['one', 'two'], recipients('fake', ['a', 'b']))
    assert len(callbacks) == 1


@postgres_only
def test_on_postgres_the_insert_trigger_announces_and_the_commit_has_nothing_left_to_do(
    django_capture_on_commit_callbacks,
):
    with django_capture_on_commit_callbacks(execute=False) as callbacks, CaptureQueriesContext(connection) as queries:
        schedule_messages(['one', 'two'], recipients('fake', ['a', 'b']))
    assert callbacks == []
    assert not [q for q in queries.captured_queries if q['sql'].upper().startswith('NOTIFY')]


@postgres_only
def test_on_postgres_without_the_trigger_the_commit_sends_notify(django_capture_on_commit_callbacks):
    """A database made without migrations has no trigger: the scheduling process notifies, as before."""
    channels.PostgresChannel._trigger_found.clear()
    try:
        with connection.cursor() as cursor:  # rolled back with the test's transaction
            cursor.execute(f'DROP TRIGGER {channels.INSERT_TRIGGER} ON sitemessage_dispatch')
        with django_capture_on_commit_callbacks(execute=False) as callbacks:
            schedule_messages('one', recipients('fake', 'a'))
        with CaptureQueriesContext(connection) as queries:
            callbacks[0]()
    finally:
        channels.PostgresChannel._trigger_found.clear()
    assert [q['sql'] for q in queries.captured_queries] == [f'NOTIFY {channels.CHANNEL}']


@postgres_only
def test_on_postgres_an_enqueue_target_still_runs_after_the_commit(django_capture_on_commit_callbacks):
    with override_settings(SITEMESSAGE_ENQUEUE_ON_SCHEDULE='django_tasks'):
        with django_capture_on_commit_callbacks(execute=False) as callbacks:
            schedule_messages('one', recipients('fake', 'a'))
    assert len(callbacks) == 1  # the task is enqueued; the wake-up itself came from the trigger


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


@postgres_only
@pytest.mark.django_db(transaction=True)
def test_rows_inserted_by_any_path_notify_once_committed():
    """The trigger sees every INSERT into the dispatch table: the ORM's bulk_create without our signal too."""
    from sitemessage.models import Dispatch

    assert wakeup.listen() is True
    message = Message.objects.create(cls='plain', context={}, dispatches_ready=True)
    with transaction.atomic():
        Dispatch.objects.bulk_create([Dispatch(message=message, messenger='fake', address='x')])
        assert wakeup.wait_for_work(0.2) is False  # not before the commit
    assert wakeup.wait_for_work(5) is True


# Wake-up channels (SITEMESSAGE_WAKEUP): Redis pub/sub, local sockets, NOTIFY --------------------------


@pytest.fixture(params=['local', 'redis', 'postgres'])
def wakeup_setting(request, tmp_path, monkeypatch):
    """Each channel in turn, isolated: its own socket directory, its own Redis channel name."""
    if request.param == 'postgres' and connection.vendor != 'postgresql':
        pytest.skip('SITEMESSAGE_TEST_DB=postgres: NOTIFY is PostgreSQL only')
    # Another checkout's suite may run beside this one, on the same Redis and the same ':memory:' name.
    monkeypatch.setattr(channels, 'database_key', lambda using: key)
    key = uuid.uuid4().hex[:12]
    value = redis_url() if request.param == 'redis' else request.param
    with override_settings(SITEMESSAGE_WAKEUP=value, SITEMESSAGE_WAKEUP_DIR=str(tmp_path / 'wakeup')):
        yield request.param


@pytest.fixture
def listener(wakeup_setting):
    listener = channels.get_channel().listen('default')
    assert listener is not None
    try:
        yield listener
    finally:
        listener.close()


@pytest.mark.django_db(transaction=True)
def test_a_committed_scheduling_wakes_a_listener_once(listener):
    for address in ('a', 'b'):
        with transaction.atomic():
            schedule_messages('text', recipients('fake', address))
    assert listener.wait(5) is True  # returns as soon as the wake-up is there: no real wait
    assert listener.wait(0) is False  # one wake-up for both schedulings: nothing left pending


@pytest.mark.django_db(transaction=True)
def test_a_rolled_back_scheduling_wakes_nobody(listener):
    with pytest.raises(ZeroDivisionError), transaction.atomic():
        schedule_messages('text', recipients('fake', 'a'))
        1 / 0
    assert listener.wait(0.3) is False
    assert not Message.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_scheduling_with_no_worker_listening_neither_blocks_nor_raises(wakeup_setting, caplog):
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, 'sitemessage.wakeup'):
        schedule_messages('text', recipients('fake', 'a'))
    assert time.monotonic() - started < 2
    assert [r for r in caplog.records if r.name == 'sitemessage.wakeup'] == []


def test_a_killed_workers_socket_is_removed_without_an_error(tmp_path):
    channel = channels.LocalChannel(str(tmp_path))
    stale = tmp_path / 'gone.sock'
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    dead.bind(str(stale))
    dead.close()  # as after SIGKILL: the file stays, nobody reads it
    live = channel.listen('default')
    try:
        channel.announce('default')
        assert not stale.exists()
        assert live.wait(5) is True
    finally:
        live.close()
    assert list(tmp_path.iterdir()) == []  # a worker that stops removes its socket


@pytest.mark.django_db
def test_the_last_worker_out_removes_the_directory_it_derived(monkeypatch):
    key = f'test-{uuid.uuid4().hex[:12]}'
    monkeypatch.setattr(channels, 'database_key', lambda using: key)
    channel = channels.LocalChannel()
    directory = channel.path('default')
    first, second = channel.listen('default'), channel.listen('default')
    first.close()
    assert directory.is_dir()  # the second worker still listens there
    second.close()
    assert not directory.exists()


def test_a_full_socket_does_not_block_the_announcement(tmp_path):
    channel = channels.LocalChannel(str(tmp_path))
    listener = channel.listen('default')
    try:
        started = time.monotonic()
        for _ in range(5000):  # far more than a datagram socket buffers
            channel.announce('default')
        assert time.monotonic() - started < 5
        assert listener.wait(0) is True
    finally:
        listener.close()


@pytest.mark.django_db(transaction=True)
def test_redis_down_is_logged_after_the_commit_not_raised(closed_port, caplog):
    pytest.importorskip('redis', reason='The Redis client is not installed: pip install "django-sitemessage[redis]"')
    with (
        override_settings(SITEMESSAGE_WAKEUP=f'redis://127.0.0.1:{closed_port}/0'),
        caplog.at_level(logging.WARNING, 'sitemessage.wakeup'),
    ):
        started = time.monotonic()
        schedule_messages('text', recipients('fake', 'a'))
        assert time.monotonic() - started < 3
    [record] = [r for r in caplog.records if r.name == 'sitemessage.wakeup']
    assert record.getMessage().startswith('Could not notify workers of new messages (ConnectionError:')
    assert Message.objects.count() == 1  # committed: the next poll sends it


def test_the_default_wakeup_follows_the_database():
    channel = channels.get_channel()
    if connection.vendor == 'postgresql':
        assert isinstance(channel, channels.PostgresChannel)
    elif connection.vendor == 'sqlite':  # the suite's ':memory:' database: no other process can share it
        assert type(channel) is channels.Channel and channel.listen('default') is None
    else:  # MariaDB/MySQL: sockets in a directory derived from the database's identity
        assert isinstance(channel, channels.LocalChannel)
        assert channel.path('default').name == f'sitemessage-wakeup-{channels.database_key("default")}'


@pytest.mark.parametrize(
    'value, error',
    [
        ('redis', "must be None, 'postgres', 'local', 'poll' or a redis:// URL, got 'redis'"),
        ('http://user:secret@host/', "got 'http://***@host/'"),  # no password in the error text
    ],
)
def test_a_bad_wakeup_setting_raises_before_anything_is_stored(value, error):
    with override_settings(SITEMESSAGE_WAKEUP=value):
        with pytest.raises(SiteMessageConfigurationError, match=re.escape(error)):
            schedule_messages('text', recipients('fake', 'a'))
    assert not Message.objects.exists()


@not_postgres
def test_postgres_wakeup_on_another_database_is_refused():
    with override_settings(SITEMESSAGE_WAKEUP='postgres'):
        with pytest.raises(SiteMessageConfigurationError, match="SITEMESSAGE_WAKEUP is 'postgres' but the database"):
            channels.get_channel()
