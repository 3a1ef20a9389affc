"""Delivery with real processes: many senders on one queue, SIGKILL and SIGTERM, wake-ups, rate limits
shared by two processes, parallel connections, backoff, Celery, bulk scheduling.

Workers run as subprocesses (``python -m django ...`` with tests/process_settings.py) against a throw-away
database: an SQLite file, or PostgreSQL with ``SITEMESSAGE_TEST_DB=postgres``. They deliver to a slow SMTP
sink in this process (tests/processes.py). Tests named ``test_slow_*`` take seconds each.
"""

from __future__ import annotations

import math
import signal
import subprocess
import time
import uuid
from collections import Counter
from datetime import timedelta

import pytest
from django.core import mail
from django.db import connection
from django.test.utils import CaptureQueriesContext, override_settings
from django.utils import timezone

from sitemessage.messages.email import EmailTextMessage
from sitemessage.messages.plain import PlainTextMessage
from sitemessage.models import Dispatch, DispatchError, Message
from sitemessage.sending import send_scheduled_messages
from sitemessage.toolbox import recipients, register_message_types, schedule_messages
from tests.conftest import wait_for
from tests.processes import (
    ON_POSTGRES,
    REDIS_URL,
    address,
    redis_url,
)  # fixtures procs, sink: tests/processes.py via conftest

ALL_ZERO = {'pending': 0, 'sent': 0, 'error': 0, 'failed': 0, 'processing': 0}


def only(**counts):
    return {**ALL_ZERO, **counts}


def duplicates(counts: Counter) -> int:
    return sum(count - 1 for count in counts.values() if count > 1)


def expected_addresses(prefix: str, count: int) -> set:
    return {address(prefix, index) for index in range(count)}


# 1. Many processes on one queue ---------------------------------------------------------------------


def test_slow_three_send_processes_deliver_600_emails_each_exactly_once(procs, sink):
    sink.handler.delay = 0.004  # the senders overlap for a couple of seconds
    procs.use_sink(sink)
    procs.settings['SEND_BATCH_SIZE'] = 20
    procs.orm('schedule', count=600, prefix='many')

    senders = [procs.start('sitemessage_send_scheduled') for _ in range(3)]
    for sender in senders:
        assert sender.wait(60) == 0, sender.output()

    counts = sink.handler.counts()
    assert set(counts) == expected_addresses('many', 600)  # none lost
    assert duplicates(counts) == 0  # none sent twice
    assert procs.orm('status')['counts'] == only(sent=600)
    sent_by = [sum(summary[0] for summary in sender.summaries()) for sender in senders]
    assert sum(sent_by) == 600
    assert len([sent for sent in sent_by if sent]) >= 2, f'the queue was not shared: {sent_by}'


# 2. SIGKILL mid-batch ----------------------------------------------------------------------------------


def test_slow_sigkilled_sender_loses_nothing_and_resends_at_most_its_batch_after_the_lease(procs, sink):
    sink.handler.delay = 0.025
    sink.handler.hold_at = 15  # the 15th e-mail waits for its reply: the sender is mid-batch when killed
    procs.use_sink(sink)
    procs.settings.update(SEND_BATCH_SIZE=10, SEND_LEASE_SECONDS=2)
    procs.orm('schedule', count=60, prefix='kill')

    sender = procs.start('sitemessage_send_scheduled')
    assert sink.handler.holding.wait(30), sender.output()
    sender.signal(signal.SIGKILL)
    assert sender.wait(5) == -signal.SIGKILL
    killed_at = time.monotonic()

    right_after = procs.orm('status')['counts']
    # The killed sender's claims are still held: its batch on the wire and the next one, claimed
    # meanwhile (SMTP's one connection runs on a thread of its own, see deliver_on_own_thread).
    assert 1 <= right_after['processing'] <= 20, right_after
    assert right_after['sent'] == 10  # its first batch was stored
    sink.handler.release()

    time.sleep(max(0.0, killed_at + 2.3 - time.monotonic()))  # past the 2 s lease
    procs.django('sitemessage_send_scheduled')

    counts = sink.handler.counts()
    assert set(counts) == expected_addresses('kill', 60)  # none lost
    assert procs.orm('status')['counts'] == only(sent=60)  # none stuck in processing
    assert duplicates(counts) <= 10  # at most the killed sender's in-flight batch went twice


@pytest.mark.parametrize('connections', [1, 3])
def test_what_a_sigkilled_sender_sent_is_recorded_as_it_goes_so_little_is_sent_twice(procs, sink, connections):
    """Sent e-mails are recorded every OUTCOME_FLUSH_SIZE, not when the batch of 100 ends."""
    sink.handler.delay = 0.005
    sink.handler.hold_at = 45  # the 45th e-mail waits for its reply when the sender is killed
    procs.use_sink(sink, connections=connections)
    procs.settings.update(SEND_BATCH_SIZE=100, SEND_LEASE_SECONDS=2, OUTCOME_FLUSH_SIZE=10)
    procs.orm('schedule', count=100, prefix='flush')

    sender = procs.start('sitemessage_send_scheduled')
    assert sink.handler.holding.wait(30), sender.output()
    if connections > 1:
        time.sleep(0.5)  # the other connections go on meanwhile; what they send is recorded too
    else:  # on PostgreSQL and MariaDB a thread of its own records: let it finish the last record
        wait_for(lambda: procs.orm('status')['counts']['sent'] >= 40, timeout=5)
    sender.signal(signal.SIGKILL)
    assert sender.wait(5) == -signal.SIGKILL
    killed_at = time.monotonic()
    received_before_kill = sum(sink.handler.counts().values())

    recorded = procs.orm('status')['counts']['sent']
    if connections == 1:  # units of 10, each recorded before the next starts: e-mails 1 to 40
        assert recorded == 40, procs.orm('status')
    else:  # at most one flush (10) and the three connections' units in flight not recorded
        assert received_before_kill - recorded <= 10 + 3 * 3, (received_before_kill, recorded)
    sink.handler.release()

    time.sleep(max(0.0, killed_at + 2.3 - time.monotonic()))  # past the 2 s lease
    procs.django('sitemessage_send_scheduled')

    counts = sink.handler.counts()
    assert set(counts) == expected_addresses('flush', 100)  # none lost
    assert procs.orm('status')['counts'] == only(sent=100)  # none stuck in processing
    # Only what was not recorded went twice (with several connections, the sink may still finish an
    # e-mail whose content was on the wire when the sender died).
    assert duplicates(counts) >= received_before_kill - recorded
    assert duplicates(counts) <= (5 if connections == 1 else 19)
    if connections == 1:
        assert duplicates(counts) == 5  # e-mails 41 to 45


# 3. SIGTERM --------------------------------------------------------------------------------------------


def test_slow_worker_delivers_new_messages_and_stops_cleanly_on_sigterm(procs, sink):
    sink.handler.delay = 0.02
    procs.use_sink(sink)
    procs.settings['SEND_BATCH_SIZE'] = 10

    worker = procs.start('sitemessage_worker', '--idle', '0.2')
    assert worker.wait_for_output('Worker started.'), worker.output()

    procs.orm('schedule', count=5, prefix='early')  # scheduled while the worker runs
    assert sink.handler.wait_for(5, timeout=15), worker.output()

    procs.orm('schedule', count=40, prefix='late')
    assert sink.handler.wait_for(5 + 15, timeout=15), worker.output()
    worker.signal(signal.SIGTERM)  # in the middle of the queue
    signalled = time.monotonic()
    assert worker.wait(10) == 0, worker.output()
    assert time.monotonic() - signalled < 3
    assert 'Worker stopped.' in worker.output()

    counts = sink.handler.counts()
    assert duplicates(counts) == 0
    state = procs.orm('status')
    assert state['counts']['processing'] == 0  # the batch in hand was finished and stored
    assert set(state['addresses']['sent']) == set(counts)  # what went out is recorded as sent, nothing else
    assert expected_addresses('early', 5) <= set(counts)
    assert state['counts']['pending'] == 45 - len(counts) > 0  # it stopped before the queue was done


# 4. LISTEN/NOTIFY ---------------------------------------------------------------------------------------


@pytest.mark.skipif(not ON_POSTGRES, reason='LISTEN/NOTIFY needs PostgreSQL: run with SITEMESSAGE_TEST_DB=postgres')
def test_slow_idle_worker_wakes_at_once_on_postgresql_notify(procs, sink):
    procs.use_sink(sink)
    worker = procs.start('sitemessage_worker', '--idle', '30')
    assert worker.wait_for_output('Worker started.'), worker.output()
    time.sleep(1.0)  # its first pass found nothing: it now sleeps for up to 30 s

    for round_ in range(2):
        procs.orm('schedule', count=1, prefix=f'wake{round_}')  # committed in another process
        scheduled = time.monotonic()
        assert sink.handler.wait_for(round_ + 1, timeout=3), f'round {round_}: no wake-up\n{worker.output()}'
        assert time.monotonic() - scheduled < 3
    assert set(sink.handler.counts()) == {address('wake0', 0), address('wake1', 0)}


@pytest.mark.parametrize('wakeup', ['default', 'local', 'redis'])
def test_slow_idle_worker_wakes_at_once_on_each_wakeup_channel(procs, sink, wakeup, tmp_path):
    """SITEMESSAGE_WAKEUP: the default (NOTIFY on PostgreSQL, local sockets on an SQLite file), sockets, Redis."""
    if wakeup == 'redis':
        procs.settings['WAKEUP'] = redis_url()
    elif wakeup == 'local':
        procs.settings.update(WAKEUP='local', WAKEUP_DIR=str(tmp_path / 'wakeup'))
    procs.use_sink(sink)
    worker = procs.start('sitemessage_worker', '--idle', '30')
    assert worker.wait_for_output('Worker started.'), worker.output()
    time.sleep(1.0)  # its first pass found nothing: it now sleeps for up to 30 s

    for round_ in range(2):
        procs.orm('schedule', count=1, prefix=f'wake{round_}', mode='each')  # committed in another process
        assert sink.handler.wait_for(round_ + 1, timeout=3), f'round {round_}: no wake-up\n{worker.output()}'
    assert set(sink.handler.counts()) == {address('wake0', 0), address('wake1', 0)}
    worker.signal(signal.SIGTERM)
    assert worker.wait(10) == 0, worker.output()
    if wakeup == 'local':
        assert list((tmp_path / 'wakeup').iterdir()) == []  # the stopped worker removed its socket


# 5. Rate limit shared by two processes ----------------------------------------------------------------


def test_slow_rate_limit_is_shared_by_two_sending_processes(procs, sink):
    procs.use_sink(sink)
    procs.settings.update(RATE_LIMITS={'smtp': 10}, SEND_BATCH_SIZE=5, CACHE='db')  # DatabaseCache is shared
    procs.orm('schedule', count=40, prefix='rate')

    senders = [procs.start('sitemessage_send_scheduled') for _ in range(2)]
    for sender in senders:
        assert sender.wait(60) == 0, sender.output()

    counts = sink.handler.counts()
    assert set(counts) == expected_addresses('rate', 40)
    assert duplicates(counts) == 0
    assert all(sum(s[0] for s in sender.summaries()) for sender in senders), [s.output() for s in senders]
    stamps = sorted(at for at, _rcpt in sink.handler.received)
    per_second = Counter(math.floor(at) for at in stamps)
    assert max(per_second.values()) <= 10 + 1, sorted(per_second.items())  # +1: a reply crossing a boundary
    assert len(per_second) >= 4, sorted(per_second.items())
    assert stamps[-1] - stamps[0] > 2.0
    print('\nper-second windows:', sorted(per_second.values()))


# 6. Parallel connections -------------------------------------------------------------------------------


def test_slow_four_smtp_connections_send_faster_with_exact_outcomes(procs, sink):
    sink.handler.delay = 0.05
    refused = {address('one', 7), address('four', 7)}
    sink.handler.refuse.update(dict.fromkeys(refused, '550 5.1.1 No such user'))

    seconds = {}
    for prefix, connections in (('one', 1), ('four', 4)):
        procs.use_sink(sink, connections=connections)
        procs.orm('schedule', count=40, prefix=prefix)
        result = procs.django('sitemessage_send_scheduled', '--ok-on-errors')  # one refused: exit 4 without it
        (summary,) = [line for line in result.stdout.splitlines() if line.startswith('Sent:')]
        assert summary.startswith('Sent: 39, errors: 0, failed: 1, '), result.stdout
        seconds[connections] = float(summary.rpartition('seconds: ')[2])

    assert seconds[1] / seconds[4] >= 2, seconds
    counts = sink.handler.counts()
    assert set(counts) == (expected_addresses('one', 40) | expected_addresses('four', 40)) - refused
    assert duplicates(counts) == 0
    state = procs.orm('status')
    assert state['counts'] == only(sent=78, failed=2)
    assert set(state['addresses']['failed']) == refused
    print(
        f'\nparallel sending, 40 e-mails at 50 ms: 1 connection {seconds[1]:.2f} s, '
        f'4 connections {seconds[4]:.2f} s, x{seconds[1] / seconds[4]:.1f}'
    )


# 7. Backoff timing (in-process) --------------------------------------------------------------------------


@pytest.mark.django_db
@override_settings(SITEMESSAGE_RETRY_DELAY_SECONDS=60)
def test_temporary_smtp_failure_waits_out_a_jittered_exponential_backoff(smtp_messenger, smtp_server):
    smtp_server.handler.refuse['later@example.com'] = '451 4.3.0 Try again later'
    schedule_messages(EmailTextMessage('Hi', 'Body'), recipients('smtp', ['later@example.com', 'ok@example.com']))

    before = timezone.now()
    report = send_scheduled_messages()
    after = timezone.now()
    assert (report.sent, report.errors, report.failed) == (1, 1, 0)
    dispatch = Dispatch.objects.get(address='later@example.com')
    assert (dispatch.dispatch_status, dispatch.retry_count) == (Dispatch.DISPATCH_STATUS_ERROR, 1)
    assert before + timedelta(seconds=30) <= dispatch.next_attempt_at <= after + timedelta(seconds=60)
    assert '451' in DispatchError.objects.get(dispatch=dispatch).error_log

    report = send_scheduled_messages()  # right away: not due yet
    assert (report.sent, report.errors, report.failed) == (0, 0, 0)
    again = Dispatch.objects.get(pk=dispatch.pk)
    assert (again.retry_count, again.next_attempt_at) == (1, dispatch.next_attempt_at)
    assert DispatchError.objects.filter(dispatch=dispatch).count() == 1

    Dispatch.objects.filter(pk=dispatch.pk).update(next_attempt_at=timezone.now() - timedelta(seconds=1))
    before = timezone.now()
    report = send_scheduled_messages()  # once due, it is retried; the next delay doubles
    after = timezone.now()
    assert report.errors == 1
    again = Dispatch.objects.get(pk=dispatch.pk)
    assert again.retry_count == 2
    assert before + timedelta(seconds=60) <= again.next_attempt_at <= after + timedelta(seconds=120)
    assert DispatchError.objects.filter(dispatch=dispatch).count() == 2


# 8. Celery with a real worker ----------------------------------------------------------------------------


@pytest.fixture
def celery_worker_process(procs, sink):
    """A real ``celery worker`` (solo pool) consuming a queue of its own on the local Redis."""
    pytest.importorskip('celery', reason='Celery is not installed: pip install "celery[redis]"')
    redis_url()  # skips without the client or the server
    import redis
    from celery import Celery

    queue = f'sitemessage-test-{uuid.uuid4().hex[:12]}'
    procs.use_sink(sink)
    procs.extra_env.update({'SITEMESSAGE_CELERY_BROKER': REDIS_URL, 'SITEMESSAGE_CELERY_QUEUE': queue})
    worker = procs.start(
        '-A',
        'tests.celery_app',
        'worker',
        '--pool=solo',
        '--concurrency=1',
        '-Q',
        queue,
        '--without-heartbeat',
        '--without-gossip',
        '--without-mingle',
        '--loglevel=INFO',
        module='celery',
    )
    client = Celery('sitemessage-test-client', broker=REDIS_URL, backend=REDIS_URL)
    try:
        assert worker.wait_for_output(' ready.', timeout=30), worker.output()
        yield client, queue, worker
    finally:
        if worker.popen.poll() is None:
            worker.signal(signal.SIGTERM)  # a warm shutdown; procs' teardown kills it if that hangs
            try:
                worker.wait(5)
            except subprocess.TimeoutExpired:
                pass
        client.close()
        connection_ = redis.Redis.from_url(REDIS_URL)
        leftovers = list(connection_.scan_iter(match=f'*{queue}*'))  # the queue and kombu's bindings of it
        if leftovers:
            connection_.delete(*leftovers)
        connection_.close()


def test_slow_celery_worker_runs_the_send_task(procs, sink, celery_worker_process):
    client, queue, worker = celery_worker_process
    procs.orm('schedule', count=5, prefix='celery')

    result = client.send_task('sitemessage.send_scheduled', queue=queue)
    outcome = result.get(timeout=30)
    result.forget()

    assert {key: outcome[key] for key in ('sent', 'errors', 'failed')} == {'sent': 5, 'errors': 0, 'failed': 0}
    assert set(sink.handler.counts()) == expected_addresses('celery', 5)
    assert duplicates(sink.handler.counts()) == 0
    assert procs.orm('status')['counts'] == only(sent=5)


def test_slow_scheduling_enqueues_a_celery_send_after_commit(procs, sink, celery_worker_process):
    _client, _queue, worker = celery_worker_process
    procs.orm('schedule', count=1, prefix='enqueued', settings={'ENQUEUE_ON_SCHEDULE': 'celery'})

    assert sink.handler.wait_for(1, timeout=20), worker.output()
    assert worker.wait_for_output('Task sitemessage.send_scheduled[', timeout=5)  # delivered by the Celery task
    assert set(sink.handler.counts()) == {address('enqueued', 0)}
    assert procs.orm('status')['counts'] == only(sent=1)


# 9. Bulk scheduling (in-process) ---------------------------------------------------------------------------


def insert_queries(model, rows: int) -> int:
    """INSERT statements Django needs for ``rows`` rows: 1, unless the database caps parameters (SQLite)."""
    fields = [field for field in model._meta.concrete_fields if not field.primary_key]
    per_query = connection.ops.bulk_batch_size(fields, [model()] * rows) or rows
    return math.ceil(rows / per_query)


@pytest.mark.django_db
def test_scheduling_1000_emails_takes_a_handful_of_queries(smtp_messenger):
    messages = [EmailTextMessage(f'Subject {index}', f'Text {index}') for index in range(1000)]
    to = recipients('smtp', ['a@example.com', 'b@example.com'])

    with CaptureQueriesContext(connection) as queries:
        scheduled = schedule_messages(messages, to)

    inserts = [q for q in queries.captured_queries if q['sql'].lstrip().upper().startswith('INSERT')]
    others = len(queries) - len(inserts)
    # One INSERT per table; SQLite's 999 parameters per query split it further, PostgreSQL does not.
    # Besides: the transaction's savepoints and one look-up of the suppression list.
    assert len(inserts) == insert_queries(Message, 1000) + insert_queries(Dispatch, 2000)
    assert len(queries) <= 7 + len(inserts) - 2
    assert others <= 5
    if ON_POSTGRES:
        assert len(queries) <= 7
    print(f'\nscheduling 1000 e-mails x 2 recipients: {len(queries)} queries ({len(inserts)} INSERTs)')
    assert Message.objects.count() == 1000
    assert Dispatch.objects.count() == 2000
    assert [len(tuple_.dispatches) for tuple_ in scheduled] == [2] * 1000
    assert {d.address for d in scheduled[999].dispatches} == {'a@example.com', 'b@example.com'}
    assert scheduled[999].message.context['subject'] == 'Subject 999'


class Digest(PlainTextMessage):
    alias = 'test_digest'
    group_mark = 'digest'


@pytest.mark.django_db
def test_bulk_scheduling_still_merges_grouped_messages(smtp_messenger):
    register_message_types(Digest)
    to = recipients('smtp', ['a@example.com'])
    schedule_messages(
        [
            Digest('first'),
            EmailTextMessage('S1', 'one'),
            Digest('second'),
            EmailTextMessage('S2', 'two'),
            EmailTextMessage('S3', 'three'),
        ],
        to,
    )

    digest = Message.objects.get(cls='test_digest')  # one message: the second was merged into the first
    assert digest.context[Digest.SIMPLE_TEXT_ID] == 'first\nsecond'
    assert digest.dispatch_set.count() == 1
    assert Message.objects.filter(cls='email_plain').count() == 3
    assert Dispatch.objects.count() == 4


@pytest.mark.django_db
def test_email_backend_schedules_50_mails_in_a_handful_of_queries(smtp_messenger, django_assert_max_num_queries):
    emails = [
        mail.EmailMessage(f'Subject {index}', f'Body {index}', 'robot@example.com', [address('backend', index)])
        for index in range(50)
    ]
    backend = mail.get_connection('sitemessage.backends.EmailBackend')

    with django_assert_max_num_queries(6):
        assert backend.send_messages(emails) == 50

    assert Message.objects.count() == 50
    assert set(Dispatch.objects.values_list('address', flat=True)) == expected_addresses('backend', 50)


# The loop in-process -------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_a_pass_that_only_put_dispatches_back_is_followed_by_idling(fake_messenger):
    """Dispatches a messenger gives back untouched (a provider's pause) are not claimed again at once."""
    from sitemessage.background.worker import Worker
    from tests.fakes import FakeMessenger

    class Pausing(FakeMessenger):
        def send(self, message_cls, message_model, dispatch_models):
            self.sends = getattr(self, 'sends', 0) + 1
            for dispatch in dispatch_models:
                self.mark_pending(dispatch)  # the service asked us to wait: back to the queue, no attempt

    from sitemessage.toolbox import register_messenger_objects

    pausing = Pausing()
    register_messenger_objects(pausing)
    schedule_messages('wait for me', recipients('fake', 'someone'))
    worker = Worker(max_passes=2, idle_seconds=0)
    idles = []
    worker.idle = idles.append  # count the idle waits, and wait none

    totals = worker.run()

    assert (totals.sent, totals.released, pausing.sends) == (0, 2, 2)
    assert len(idles) == 1  # after the first pass (the second is the last)
    assert Dispatch.objects.get().dispatch_status == Dispatch.DISPATCH_STATUS_PENDING
