"""Faults (issue 9, item 6): a database that goes away under a worker, a broker that is down when
a message is scheduled, a message row that cannot be read, secrets in third-party debug logs.

Worker tests run real worker processes (tests/processes.py) against a real database: on SQLite
the database is locked by this process for a while (a real ``OperationalError`` in the worker),
on PostgreSQL (``SITEMESSAGE_TEST_DB=postgres``) the worker's backends are terminated with
``pg_terminate_backend()``, as a server restart or a fail-over does.
"""

from __future__ import annotations

import logging
import re
import sqlite3
import time

import pytest

from tests.conftest import wait_for as wait_until
from tests.processes import ON_POSTGRES, _pg_connect, address

# 1. The worker survives a database that goes away --------------------------------------------------


def _cut_database(procs, meanwhile=lambda: None) -> str:
    """Take the database away from the worker for a moment, calling ``meanwhile`` while it is away."""
    if ON_POSTGRES:
        name = procs.db_env['SITEMESSAGE_PROCESS_PG']
        with _pg_connect() as connection:
            killed = connection.execute(
                'SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()',
                [name],
            ).fetchall()
        assert killed, 'the worker had no connection to terminate'
        meanwhile()
        return f'terminated {len(killed)} backend(s)'
    # SQLite has no server to restart: an exclusive lock held past the worker's busy timeout
    # makes its queries fail with a real OperationalError ("database is locked").
    lock = sqlite3.connect(procs.db_env['SITEMESSAGE_PROCESS_SQLITE'], isolation_level=None, timeout=5)
    lock.execute('BEGIN EXCLUSIVE')
    meanwhile()
    time.sleep(2.5)
    lock.execute('COMMIT')
    lock.close()
    return 'held an exclusive lock for 2.5 s'


def test_slow_worker_reconnects_after_losing_its_database_and_keeps_delivering(procs, sink):
    procs.use_sink(sink)
    procs.settings['SEND_BATCH_SIZE'] = 10
    worker = procs.start('sitemessage_worker', '--idle', '0.2', extra_env={'SITEMESSAGE_PROCESS_SQLITE_TIMEOUT': '0.2'})
    assert worker.wait_for_output('Worker started.'), worker.output()

    procs.orm('schedule', count=3, prefix='before')
    assert sink.handler.wait_for(3, timeout=15), worker.output()

    for round_ in range(2):  # twice: the backoff resets and listening resumes after a reconnect
        done = _cut_database(procs)
        assert wait_until(lambda seen=round_: worker.output().count('Database connection lost') > seen), (
            f'{done}\n{worker.output()}'
        )
        procs.orm('schedule', count=4, prefix=f'after{round_}')
        assert sink.handler.wait_for(3 + 4 * (round_ + 1), timeout=30), f'{done}\n{worker.output()}'
        assert worker.popen.poll() is None, worker.output()

    assert 'reconnecting in' in worker.output()
    counts = sink.handler.counts()
    assert set(counts) == (
        {address('before', i) for i in range(3)}
        | {address('after0', i) for i in range(4)}
        | {address('after1', i) for i in range(4)}
    )
    assert max(counts.values()) == 1
    # The sink has them; the worker stores the outcomes right after.
    assert wait_until(lambda: procs.orm('status')['counts']['sent'] == 11, timeout=15), procs.orm('status')


def test_slow_outcomes_of_mail_sent_while_the_database_is_away_are_stored_once_it_is_back(procs, sink):
    sink.handler.hold_at = 1  # the first e-mail is on the wire when the database goes away
    procs.use_sink(sink)
    worker = procs.start('sitemessage_worker', '--idle', '0.2', extra_env={'SITEMESSAGE_PROCESS_SQLITE_TIMEOUT': '0.2'})
    assert worker.wait_for_output('Worker started.'), worker.output()
    procs.orm('schedule', count=2, prefix='held')
    assert sink.handler.holding.wait(30), worker.output()

    done = _cut_database(procs, meanwhile=sink.handler.release)

    assert wait_until(lambda: procs.orm('status')['counts']['sent'] == 2, timeout=30), f'{done}\n{worker.output()}'
    assert 'Database connection lost while storing delivery outcomes' in worker.output()
    assert sink.handler.counts() == {address('held', 0): 1, address('held', 1): 1}  # nothing sent twice
    assert worker.popen.poll() is None, worker.output()


# 2. A broker that is down when a message is scheduled ------------------------------------------------


@pytest.fixture
def celery_app_with_broker_down(closed_port):
    """A Celery app (the current one) whose broker is a closed port on loopback, with short timeouts."""
    pytest.importorskip('celery', reason='Celery is not installed: pip install "celery[redis]"')
    from celery import Celery

    app = Celery(
        'sitemessage-broker-down',
        broker=f'amqp://guest:s3cret-broker-pw@127.0.0.1:{closed_port}//',
        set_as_current=True,
    )
    app.conf.update(
        broker_connection_timeout=0.5,
        broker_connection_retry=False,
        broker_connection_max_retries=1,
        task_publish_retry=True,
        task_publish_retry_policy={'max_retries': 1, 'interval_start': 0, 'interval_step': 0.1, 'interval_max': 0.1},
    )
    try:
        yield app
    finally:
        app.close()


@pytest.mark.django_db(transaction=True)
def test_scheduling_with_the_celery_broker_down_logs_and_the_next_run_sends(
    celery_app_with_broker_down, smtp_messenger, smtp_server, caplog, settings
):
    from kombu.exceptions import OperationalError as KombuOperationalError

    from sitemessage.messages.email import EmailTextMessage
    from sitemessage.models import Dispatch
    from sitemessage.sending import send_scheduled_messages
    from sitemessage.tasks import enqueue_send
    from sitemessage.toolbox import recipients, schedule_messages

    settings.SITEMESSAGE_ENQUEUE_ON_SCHEDULE = 'celery'
    with pytest.raises(KombuOperationalError):  # the broker is really down: publishing fails
        enqueue_send('celery')

    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger='sitemessage'):
        schedule_messages(EmailTextMessage('Hi', 'Body'), recipients('smtp', 'queued@example.com'))  # no raise
    assert time.monotonic() - started < 10

    (record,) = [r for r in caplog.records if 'Could not enqueue a send task' in r.getMessage()]
    assert record.levelno == logging.ERROR
    assert 'on celery (OperationalError: ' in record.getMessage()  # names the broker error
    assert 's3cret-broker-pw' not in caplog.text
    assert Dispatch.objects.get().dispatch_status == Dispatch.DISPATCH_STATUS_PENDING  # committed, queued

    report = send_scheduled_messages()  # the next run
    assert report.sent == 1
    assert [env.rcpt_tos for env in smtp_server.handler.envelopes] == [['queued@example.com']]


@pytest.mark.django_db(transaction=True)
def test_a_misconfigured_enqueue_target_raises_before_anything_is_stored(settings):
    from sitemessage.exceptions import SiteMessageConfigurationError
    from sitemessage.messages.plain import PlainTextMessage
    from sitemessage.models import Message
    from sitemessage.toolbox import recipients, schedule_messages

    settings.SITEMESSAGE_ENQUEUE_ON_SCHEDULE = 'rq'
    with pytest.raises(SiteMessageConfigurationError, match="got 'rq'"):
        schedule_messages(PlainTextMessage('text'), recipients('fake', 'someone'))
    assert not Message.objects.exists()  # raised before the commit: a retry duplicates nothing


# 3. A message row that cannot be read --------------------------------------------------------------

BROKEN_CONTEXTS = {
    'invalid JSON': ('{"subject": "Hi", "stext_": "unterminated', r'not valid JSON \(JSONDecodeError: '),
    # RecursionError up to Python 3.12; 3.13 parses it (a list: not an object, so unreadable all the same)
    'nested 1,000 levels': ('[' * 1000 + ']' * 1000, 'nested too deeply to parse|a JSON object was expected'),
    'nested 100,000 levels': ('{"a":' * 100000 + '1' + '}' * 100000, 'nested too deeply to parse'),
    'not an object': ('[1, 2, 3]', r'a JSON object was expected, got \[1, 2, 3\]'),
}


def _break_context(message_id: int, raw: str) -> None:
    from django.db import connection

    with connection.cursor() as cursor:  # the ORM would not write it: only raw SQL (or another program) can
        cursor.execute('UPDATE sitemessage_message SET context = %s WHERE id = %s', [raw, message_id])


@pytest.mark.django_db
@pytest.mark.parametrize('broken', BROKEN_CONTEXTS, ids=list(BROKEN_CONTEXTS))
def test_an_unreadable_message_row_fails_alone_and_the_rest_of_its_batch_is_delivered(
    broken, smtp_messenger, smtp_server, settings
):
    from sitemessage.messages.email import EmailTextMessage
    from sitemessage.models import Dispatch, DispatchError
    from sitemessage.sending import send_scheduled_messages
    from sitemessage.toolbox import recipients, schedule_messages

    settings.SITEMESSAGE_SEND_BATCH_SIZE = 50
    scheduled = [
        schedule_messages(
            EmailTextMessage(f'Subject {n}', f'Body {n}'),
            recipients('smtp', [f'r{n}a@example.com', f'r{n}b@example.com']),
        )[0]
        for n in range(3)
    ]
    bad_message = scheduled[1].message
    raw, expected_reason = BROKEN_CONTEXTS[broken]
    _break_context(bad_message.pk, raw)

    report = send_scheduled_messages()  # twice the same batch: the row is read in every claim
    again = send_scheduled_messages()

    assert (report.sent, report.errors, report.failed) == (4, 0, 2)
    assert (again.sent, again.errors, again.failed) == (0, 0, 0)  # failed for good, not retried
    delivered = sorted(rcpt for env in smtp_server.handler.envelopes for rcpt in env.rcpt_tos)
    assert delivered == ['r0a@example.com', 'r0b@example.com', 'r2a@example.com', 'r2b@example.com']
    for dispatch in Dispatch.objects.filter(message=bad_message):
        assert dispatch.dispatch_status == Dispatch.DISPATCH_STATUS_FAILED
        (error,) = DispatchError.objects.filter(dispatch=dispatch).values_list('error_log', flat=True)
        assert error.startswith(f'The context of message {bad_message.pk} cannot be read: ')
        assert re.search(expected_reason, error), error
        assert len(error) < 500  # truncated: never the whole row


@pytest.mark.django_db
@pytest.mark.parametrize('broken', BROKEN_CONTEXTS, ids=list(BROKEN_CONTEXTS))
def test_links_of_an_unreadable_message_row_do_not_answer_5xx(broken, client, settings):
    from urllib.parse import urlsplit

    from sitemessage.models import Dispatch, Subscription
    from sitemessage.toolbox import recipients, schedule_messages
    from tests.testapp.sitemessages import GreetingMessage

    Subscription.create('reader', GreetingMessage, 'fake')
    message, (dispatch,) = schedule_messages(GreetingMessage({'name': 'Ann'}), recipients('fake', 'reader'))[0]
    unsubscribe = urlsplit(GreetingMessage.get_unsubscribe_directive(message, dispatch)).path
    mark_read = urlsplit(GreetingMessage.get_mark_read_directive(message, dispatch)).path
    _break_context(message.pk, BROKEN_CONTEXTS[broken][0])

    assert client.get(unsubscribe).status_code == 200  # the confirmation page
    assert client.post(unsubscribe).status_code == 302
    assert client.get(mark_read).status_code == 302
    assert not Subscription.objects.exists()  # the link acted: it needs no context
    assert Dispatch.objects.get().is_read()


# 4. Secrets in urllib3's DEBUG log ------------------------------------------------------------------


def test_facebook_token_exchange_keeps_secrets_out_of_urllib3_debug_log(api_server, caplog):
    from sitemessage.messengers.facebook import FacebookMessenger
    from tests.http_api import Reply

    secret, user_token, long_lived = 'app0secret0exchange', 'short0user0token0x', 'long0lived0token0x'
    next_url = f'{api_server.url}/v24.0/me/accounts?access_token={long_lived}&after=b'
    api_server.routes[('GET', '/v24.0/oauth/access_token')] = Reply(200, {'access_token': long_lived})
    api_server.routes[('GET', '/v24.0/me/accounts')] = [
        Reply(200, {'data': [{'name': 'One', 'access_token': 'page0token0one0x'}], 'paging': {'next': next_url}}),
        Reply(200, {'data': [{'name': 'Two', 'access_token': 'page0token0two0x'}], 'paging': {}}),
    ]

    with caplog.at_level(logging.DEBUG, logger='urllib3'):
        tokens = FacebookMessenger('', api_url=api_server.url).get_page_access_token('app-id', secret, user_token)

    assert tokens == {'One': 'page0token0one0x', 'Two': 'page0token0two0x'}
    requests_logged = [
        r.getMessage() for r in caplog.records if r.name == 'urllib3.connectionpool' and '"GET ' in r.getMessage()
    ]
    assert len(requests_logged) == 3, caplog.text  # the log is really written: exchange, two pages
    assert requests_logged[0].endswith('=***&fb_exchange_token=*** HTTP/1.1" 200 38'), requests_logged[0]
    for value in (secret, user_token, long_lived):
        assert value not in caplog.text


@pytest.mark.skipif(
    not ON_POSTGRES, reason='a server-side kill needs PostgreSQL: run with SITEMESSAGE_TEST_DB=postgres'
)
@pytest.mark.django_db(transaction=True)
def test_worker_retry_loop_recovers_from_a_connection_killed_by_the_server(smtp_messenger, smtp_server, caplog):
    from django.db import connection

    from sitemessage.messages.email import EmailTextMessage
    from sitemessage.toolbox import recipients, schedule_messages
    from sitemessage.worker import Worker

    schedule_messages(EmailTextMessage('Hi', 'Body'), recipients('smtp', ['one@example.com', 'two@example.com']))
    with connection.cursor() as cursor:
        cursor.execute('SELECT pg_backend_pid()')
        ((pid,),) = cursor.fetchall()
    with _pg_connect() as admin:
        admin.execute('SELECT pg_terminate_backend(%s)', [pid])  # as a server restart does

    worker = Worker(idle_seconds=0, max_passes=1, reconnect_base=0.05, reconnect_max=0.1)
    with caplog.at_level(logging.WARNING, logger='sitemessage.worker'):
        totals = worker.run()

    assert worker.reconnects == 1
    assert (totals.sent, totals.errors, totals.failed) == (2, 0, 0)
    (record,) = [r for r in caplog.records if r.name == 'sitemessage.worker']
    assert 'Database connection lost (OperationalError: ' in record.getMessage()
    assert 'terminating connection due to administrator command' in record.getMessage()
    assert sorted(rcpt for env in smtp_server.handler.envelopes for rcpt in env.rcpt_tos) == [
        'one@example.com',
        'two@example.com',
    ]
