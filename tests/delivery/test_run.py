"""The delivery engine: order, bounded batches, claims and leases, failures, retries."""

from __future__ import annotations

import os
import random
import threading
from datetime import timedelta

import pytest
from django.db import connection, connections
from django.test.utils import CaptureQueriesContext, override_settings
from django.utils import timezone

from sitemessage.delivery.outcomes import Attempt
from sitemessage.exceptions import SiteMessageConfigurationError, UnknownMessageTypeError, UnknownMessengerError
from sitemessage.messages.base import MessageBase
from sitemessage.messages.email import EmailTextMessage
from sitemessage.messages.plain import PlainTextMessage
from sitemessage.models import Dispatch, DispatchError, DispatchQuerySet, Message, MessageTuple, retry_delay
from sitemessage.sending import send_scheduled_messages
from sitemessage.toolbox import recipients, register_message_types, register_messenger_objects, schedule_messages
from sitemessage.utils import Recipient
from tests.fakes import FakeMessenger

pytestmark = pytest.mark.django_db

PENDING = Dispatch.DISPATCH_STATUS_PENDING
SENT = Dispatch.DISPATCH_STATUS_SENT
ERROR = Dispatch.DISPATCH_STATUS_ERROR
FAILED = Dispatch.DISPATCH_STATUS_FAILED
PROCESSING = Dispatch.DISPATCH_STATUS_PROCESSING


def schedule(text, addresses, priority=None, messenger='fake'):
    """Schedule one plain message to the addresses; return its dispatches."""
    message, _ = schedule_messages(text, recipients(messenger, addresses), priority=priority)[0]
    return list(message.dispatch_set.order_by('pk'))


def status_of(address):
    return Dispatch.objects.get(address=address).dispatch_status


def errors_of(address):
    return list(
        DispatchError.objects.filter(dispatch__address=address).order_by('pk').values_list('error_log', flat=True)
    )


def assert_nothing_processing():
    assert not Dispatch.objects.filter(dispatch_status=PROCESSING).exists()
    assert not Dispatch.objects.exclude(claim_token=None).exists()


class LimitedMessage(PlainTextMessage):
    alias = 'limited'
    send_retry_limit = 2


class BrokenTemplateMessage(MessageBase):
    alias = 'broken_template'
    template = 'sitemessage/messages/no_such_template.tpl'


# Order and batches ---------------------------------------------------------------------------


def test_dispatches_are_sent_oldest_first(fake_messenger):
    for number in range(5):
        schedule(f'text {number}', f'addr{number}')

    send_scheduled_messages()

    assert [address for address, _text in fake_messenger.delivered] == [f'addr{n}' for n in range(5)]


@override_settings(SITEMESSAGE_SEND_BATCH_SIZE=3)
def test_a_queue_bigger_than_the_batch_is_sent_over_several_batches(fake_messenger):
    for number in range(10):
        schedule(f'text {number}', f'addr{number}')

    report = send_scheduled_messages()

    assert report.batches == 4
    assert report.sent == 10
    assert len(fake_messenger.delivered) == 10
    assert Dispatch.objects.filter(dispatch_status=SENT).count() == 10


def _queries_to_send(count, one_message=False):
    """Schedule ``count`` dispatches, send them all; return the number of queries the run took."""
    Message.objects.all().delete()
    addresses = [f'q{number}' for number in range(count)]
    if one_message:
        schedule('one text', addresses)
    else:
        for address in addresses:
            schedule(f'text {address}', address)
    with CaptureQueriesContext(connection) as context:
        report = send_scheduled_messages()
    assert report.sent == count
    return len(context.captured_queries)


@override_settings(SITEMESSAGE_SEND_BATCH_SIZE=100)
@override_settings(SITEMESSAGE_OUTCOME_FLUSH_SIZE=1000)  # nothing recorded before the batch's store
def test_queries_of_one_batch_do_not_grow_with_its_size(django_assert_max_num_queries):
    for one_message in (False, True):
        one = _queries_to_send(1, one_message)
        many = _queries_to_send(40, one_message)
        assert many == one, f'40 dispatches took {many} queries, 1 dispatch took {one}'

    Message.objects.all().delete()
    schedule_messages([f'text {n}' for n in range(40)], recipients('fake', ['x', 'y']))
    with django_assert_max_num_queries(one):
        report = send_scheduled_messages()
    assert report.sent == 80
    assert Dispatch.objects.filter(dispatch_status=SENT).count() == 80


@override_settings(SITEMESSAGE_OUTCOME_FLUSH_SIZE=10)
def test_what_is_sent_is_recorded_every_flush_size_in_one_query_each(monkeypatch):
    records = []
    record_sent = DispatchQuerySet.record_sent

    def counted(queryset, sent):
        records.append(len(sent))
        return record_sent(queryset, sent)

    monkeypatch.setattr(DispatchQuerySet, 'record_sent', counted)
    with override_settings(SITEMESSAGE_OUTCOME_FLUSH_SIZE=1000):
        whole_batch = _queries_to_send(40)
    assert records == []

    queries = _queries_to_send(40)
    if connection.vendor == 'sqlite':  # the claiming thread records, after 10, 20 and 30; the store, all 40
        assert records == [10, 10, 10] and queries == whole_batch + 3
    else:  # a thread of its own records (its own connection) whatever gathered meanwhile, 10 or more, unless
        # the batch's store came first (this messenger is instant); tests/background/test_worker.py has it at work
        assert all(count >= 10 for count in records) and sum(records) <= 40
        assert queries == whole_batch


@override_settings(SITEMESSAGE_SEND_BATCH_SIZE=3)
def test_queries_grow_per_batch_never_per_dispatch():
    one_batch = _queries_to_send(3)
    two_batches = _queries_to_send(6)
    per_batch = two_batches - one_batch
    assert 0 < per_batch <= 9  # claim, its suppression look-up, texts, provider ids, outcomes...

    ten = _queries_to_send(10)  # 4 batches
    forty = _queries_to_send(40)  # 14 batches
    assert forty <= ten + 10 * per_batch  # 10 more batches, whatever their size


# Priority ------------------------------------------------------------------------------------


@pytest.mark.parametrize('priority', [10, '10'])
def test_priority_filter_sends_only_that_priority(fake_messenger, priority):
    schedule('urgent', 'urgent', priority=10)
    schedule('normal', 'normal')

    report = send_scheduled_messages(priority=priority)

    assert report.sent == 1
    assert fake_messenger.delivered == [('urgent', 'urgent')]
    assert status_of('normal') == PENDING


def test_bad_priority_is_rejected_naming_the_value(fake_messenger):
    schedule('normal', 'normal')

    with pytest.raises(ValueError, match="'abc'"):
        send_scheduled_messages(priority='abc')

    assert status_of('normal') == PENDING
    assert fake_messenger.delivered == []


# Claims and leases ---------------------------------------------------------------------------


def test_two_claims_never_return_the_same_dispatch():
    schedule('text', [f'a{n}' for n in range(5)])

    first = Dispatch.objects.claim(3, 600)
    second = Dispatch.objects.claim(3, 600)
    third = Dispatch.objects.claim(3, 600)

    assert len(first) == 3
    assert len(second) == 2
    assert third == []
    assert not {d.pk for d in first} & {d.pk for d in second}


def test_a_claimed_dispatch_is_processing_under_a_token_and_lease():
    schedule('text', 'a')
    before = timezone.now()

    [claimed] = Dispatch.objects.claim(5, 600)

    stored = Dispatch.objects.get(pk=claimed.pk)
    assert stored.dispatch_status == PROCESSING
    assert stored.claim_token and stored.claim_token == claimed.claim_token
    assert before + timedelta(seconds=590) < stored.lease_until <= timezone.now() + timedelta(seconds=600)


def test_dispatch_with_an_expired_lease_is_sent_by_the_next_run(fake_messenger):
    [expired] = schedule('expired', 'expired')
    [leased] = schedule('leased', 'leased')
    now = timezone.now()
    Dispatch.objects.filter(pk=expired.pk).update(
        dispatch_status=PROCESSING, claim_token='a' * 32, lease_until=now - timedelta(seconds=1)
    )
    Dispatch.objects.filter(pk=leased.pk).update(
        dispatch_status=PROCESSING, claim_token='b' * 32, lease_until=now + timedelta(minutes=5)
    )

    report = send_scheduled_messages()

    assert report.sent == 1
    assert fake_messenger.delivered == [('expired', 'expired')]
    assert status_of('expired') == SENT
    assert status_of('leased') == PROCESSING  # its worker is still within its lease


def test_legacy_processing_dispatch_without_a_lease_is_sent(fake_messenger):
    [legacy] = schedule('legacy', 'legacy')
    Dispatch.objects.filter(pk=legacy.pk).update(dispatch_status=PROCESSING)

    send_scheduled_messages()

    assert fake_messenger.delivered == [('legacy', 'legacy')]
    assert status_of('legacy') == SENT
    assert_nothing_processing()


# Failures leave nothing in processing ----------------------------------------------------------


def test_send_raising_keeps_sent_dispatch_sent_and_errors_the_others(fake_messenger):
    fake_messenger.raise_in_send = RuntimeError('connection reset mid-way')
    schedule('text', ['first', 'second', 'third'])

    report = send_scheduled_messages()

    assert status_of('first') == SENT
    assert errors_of('first') == []
    for address in ('second', 'third'):
        assert status_of(address) == ERROR
        [error] = errors_of(address)
        assert 'connection reset mid-way' in error
    assert (report.sent, report.errors) == (1, 2)
    assert_nothing_processing()
    assert Dispatch.objects.get(address='first').retry_count == 0


def test_after_send_raising_keeps_marked_outcomes(fake_messenger):
    fake_messenger.raise_in_after_send = OSError('QUIT failed')
    fake_messenger.fail_addresses = {'bad': 'mailbox full'}
    schedule('text', ['good', 'bad'])

    send_scheduled_messages()

    assert status_of('good') == SENT
    assert status_of('bad') == ERROR
    assert errors_of('bad') == ['mailbox full']
    assert errors_of('good') == []
    assert_nothing_processing()


def test_warm_up_failure_errors_all_and_they_are_retried_later(fake_messenger):
    fake_messenger.warmup_error = 'server unreachable'
    schedule('one', ['a', 'b'])
    schedule('two', 'c')

    report = send_scheduled_messages()

    assert report.errors == 3
    assert 'send' not in fake_messenger.calls
    for address in ('a', 'b', 'c'):
        assert status_of(address) == ERROR
        [error] = errors_of(address)
        assert 'warm-up' in error and 'server unreachable' in error
    assert_nothing_processing()

    fake_messenger.warmup_error = None
    report = send_scheduled_messages()

    assert report.sent == 3
    assert sorted(address for address, _text in fake_messenger.delivered) == ['a', 'b', 'c']


def test_dispatch_left_unmarked_by_the_messenger_is_an_error_with_a_reason(fake_messenger):
    fake_messenger.leave_unmarked = True
    schedule('text', 'forgotten')

    report = send_scheduled_messages()

    assert report.errors == 1
    assert status_of('forgotten') == ERROR
    [error] = errors_of('forgotten')
    assert 'did not report an outcome' in error
    assert_nothing_processing()


def test_compile_failure_is_an_error_and_send_is_not_called(fake_messenger):
    register_message_types(BrokenTemplateMessage)
    BrokenTemplateMessage({'name': 'x'}).schedule(recipients('fake', ['x', 'y']))
    schedule('fine', 'fine')

    report = send_scheduled_messages()

    assert fake_messenger.delivered == [('fine', 'fine')]
    for address in ('x', 'y'):
        assert status_of(address) == ERROR
        [error] = errors_of(address)  # one row: the compile error is not overwritten by a send error
        assert 'TemplateDoesNotExist' in error and 'no_such_template' in error
    assert (report.sent, report.errors) == (1, 2)
    assert_nothing_processing()


# Unknown messengers and message types ----------------------------------------------------------


def _ghost_dispatch():
    message, dispatches = Message.create(
        'plain', PlainTextMessage('boo').get_context(), recipients=Recipient('ghost', None, 'spirit')
    )
    return dispatches[0]


def test_unknown_messenger_reaches_the_caller_and_others_in_the_batch_are_delivered(fake_messenger):
    schedule('before', 'before')
    _ghost_dispatch()
    schedule('after', 'after')

    with pytest.raises(UnknownMessengerError, match='ghost'):
        send_scheduled_messages()

    assert sorted(fake_messenger.delivered) == [('after', 'after'), ('before', 'before')]
    ghost = Dispatch.objects.get(address='spirit')
    assert ghost.dispatch_status == PENDING
    assert ghost.retry_count == 0
    assert_nothing_processing()

    class GhostMessenger(FakeMessenger):
        alias = 'ghost'

    ghost_messenger = GhostMessenger()
    register_messenger_objects(ghost_messenger)
    send_scheduled_messages()  # still sendable once the messenger is known

    assert ghost_messenger.delivered == [('spirit', 'boo')]
    assert status_of('spirit') == SENT


def test_unknown_messenger_ignored_leaves_its_dispatches_pending(fake_messenger):
    _ghost_dispatch()
    schedule('other', 'other')

    report = send_scheduled_messages(ignore_unknown_messengers=True)

    assert report.sent == 1
    assert fake_messenger.delivered == [('other', 'other')]
    assert status_of('spirit') == PENDING
    assert_nothing_processing()


def _unknown_type_dispatch():
    message, dispatches = Message.create(
        'vanished_type', {'stext_': 'lost', 'use_tpl': False}, recipients=Recipient('fake', None, 'orphan')
    )
    return dispatches[0]


def test_unknown_message_type_reaches_the_caller_and_other_messages_are_delivered(fake_messenger):
    schedule('before', 'before')
    _unknown_type_dispatch()
    schedule('after', 'after')

    with pytest.raises(UnknownMessageTypeError, match='vanished_type'):
        send_scheduled_messages()

    assert sorted(fake_messenger.delivered) == [('after', 'after'), ('before', 'before')]
    assert status_of('orphan') == PENDING
    assert errors_of('orphan') == []
    assert_nothing_processing()


def test_unknown_message_type_ignored_stays_sendable(fake_messenger):
    _unknown_type_dispatch()
    schedule('other', 'other')

    report = send_scheduled_messages(ignore_unknown_message_types=True)

    assert report.sent == 1
    assert status_of('orphan') == PENDING
    assert_nothing_processing()

    class VanishedType(PlainTextMessage):
        alias = 'vanished_type'

    register_message_types(VanishedType)
    send_scheduled_messages()

    assert ('orphan', 'lost') in fake_messenger.delivered
    assert status_of('orphan') == SENT


# Retries ---------------------------------------------------------------------------------------


def test_retry_limit_fails_the_dispatch_and_it_is_never_picked_again(fake_messenger):
    register_message_types(LimitedMessage)
    fake_messenger.fail_addresses = {'flaky': 'try later'}
    LimitedMessage('text').schedule(recipients('fake', 'flaky'))

    send_scheduled_messages()
    dispatch = Dispatch.objects.get(address='flaky')
    assert (dispatch.dispatch_status, dispatch.retry_count) == (ERROR, 1)

    send_scheduled_messages()
    dispatch = Dispatch.objects.get(address='flaky')
    assert (dispatch.dispatch_status, dispatch.retry_count) == (FAILED, 2)

    fake_messenger.fail_addresses = {}
    report = send_scheduled_messages()
    dispatch = Dispatch.objects.get(address='flaky')
    assert (dispatch.dispatch_status, dispatch.retry_count) == (FAILED, 2)
    assert report.batches == 0
    assert fake_messenger.delivered == []
    assert len(errors_of('flaky')) == 2


# Backoff: retry_delay() --------------------------------------------------------------------------


def delay_of(retry_count, retry_after=None):
    dispatch = Dispatch(retry_count=retry_count)
    dispatch.attempt = Attempt(retry_count, None, marked=True, retry_after=retry_after)
    return retry_delay(dispatch).total_seconds()


@pytest.fixture
def jitter_at(monkeypatch):
    """``jitter_at('high')`` makes the jitter draw its upper bound, ``'low'`` its lower one."""
    draws = []

    def choose(end):
        def uniform(low, high):
            draws.append((low, high))
            return high if end == 'high' else low

        monkeypatch.setattr(random, 'uniform', uniform)
        return draws

    return choose


@override_settings(SITEMESSAGE_RETRY_DELAY_SECONDS=30, SITEMESSAGE_RETRY_DELAY_MAX_SECONDS=10**6)
def test_retry_delay_doubles_with_each_failed_attempt(jitter_at):
    jitter_at('high')
    # retry_count already counts the attempt that just failed: the first retry waits the base delay.
    assert [delay_of(count) for count in range(0, 7)] == [30, 30, 60, 120, 240, 480, 960]
    jitter_at('low')
    assert [delay_of(count) for count in range(1, 5)] == [15, 30, 60, 120]


@override_settings(SITEMESSAGE_RETRY_DELAY_SECONDS=30, SITEMESSAGE_RETRY_DELAY_MAX_SECONDS=100)
def test_retry_delay_is_capped_before_the_jitter(jitter_at):
    draws = jitter_at('high')
    assert [delay_of(count) for count in (3, 4, 10, 60)] == [100, 100, 100, 100]
    assert draws[-1] == (50, 100)  # jitter of the capped delay: still between half and all of it
    jitter_at('low')
    assert delay_of(60) == 50


@override_settings(SITEMESSAGE_RETRY_DELAY_SECONDS=30, SITEMESSAGE_RETRY_DELAY_MAX_SECONDS=10**6)
def test_retry_delay_jitter_stays_between_half_and_all_of_the_delay(monkeypatch):
    monkeypatch.setattr(random, 'uniform', random.Random(2024).uniform)  # seeded: the same draws every run
    for count, full in ((1, 30), (2, 60), (5, 480)):
        delays = [delay_of(count) for _ in range(500)]
        assert all(full / 2 <= delay <= full for delay in delays), (count, min(delays), max(delays))
        # Spread over the range, not one fixed value: retries of a burst do not come back together.
        assert min(delays) < full * 0.55 and max(delays) > full * 0.95
        assert len(set(delays)) > 400


@override_settings(SITEMESSAGE_RETRY_DELAY_SECONDS=30, SITEMESSAGE_RETRY_DELAY_MAX_SECONDS=100)
def test_retry_after_hint_is_a_floor_of_the_delay(jitter_at):
    jitter_at('high')
    assert delay_of(1, retry_after=500) == 500  # longer than the backoff, and than the cap
    assert delay_of(1, retry_after='45') == 45  # a Retry-After header value as it came
    assert delay_of(3, retry_after=10) == 100  # shorter: the backoff wins
    jitter_at('low')
    assert delay_of(1, retry_after=20) == 20  # above the jittered 15
    assert delay_of(1, retry_after=0) == 15  # no hint


@override_settings(SITEMESSAGE_RETRY_DELAY_SECONDS=0)
def test_no_retry_delay_setting_waits_only_for_the_hint(jitter_at):
    draws = jitter_at('high')
    assert delay_of(5) == 0
    assert delay_of(5, retry_after=90) == 90
    assert draws == []  # nothing to spread


@override_settings(SITEMESSAGE_RETRY_DELAY_SECONDS=30, SITEMESSAGE_RETRY_DELAY_MAX_SECONDS=10**6)
def test_next_attempt_of_a_stored_error_follows_the_backoff_and_the_hint(fake_messenger, jitter_at):
    jitter_at('high')
    first, second = schedule('text', ['first', 'second'])
    for dispatch in (first, second):
        dispatch.retry_count = 3  # three attempts failed before this one
        dispatch.start_attempt()
    fake_messenger.mark_error(first, 'try later', PlainTextMessage)
    fake_messenger.mark_error(second, 'slow down', PlainTextMessage, retry_after=3600)
    before = timezone.now()

    Dispatch.objects.store_outcomes([first, second])

    after = timezone.now()
    first.refresh_from_db()
    second.refresh_from_db()
    assert (first.dispatch_status, first.retry_count) == (ERROR, 4)
    assert before + timedelta(seconds=240) <= first.next_attempt_at <= after + timedelta(seconds=240)
    assert before + timedelta(seconds=3600) <= second.next_attempt_at <= after + timedelta(seconds=3600)


class ThreeTriesEmail(EmailTextMessage):
    alias = 'three_tries_email'
    send_retry_limit = 3


@override_settings(SITEMESSAGE_RETRY_DELAY_SECONDS=60)
def test_retry_limit_over_smtp_fails_a_temporarily_refused_dispatch_with_the_reply(smtp_server, smtp_messenger):
    register_message_types(ThreeTriesEmail)
    smtp_server.handler.refuse['busy@example.com'] = '451 Mailbox busy, try later'
    schedule_messages(ThreeTriesEmail('Subject', 'text'), recipients('smtp', ['busy@example.com', 'ok@example.com']))

    outcomes = []
    for _run in range(4):
        report = send_scheduled_messages()
        busy = Dispatch.objects.get(address='busy@example.com')
        outcomes.append((report.errors, report.failed, busy.dispatch_status, busy.retry_count))
        if busy.dispatch_status == ERROR:
            assert busy.next_attempt_at > timezone.now()  # not due yet: the backoff
            # Make it due again instead of waiting out the delay.
            Dispatch.objects.filter(pk=busy.pk).update(next_attempt_at=timezone.now() - timedelta(seconds=1))

    assert outcomes == [(1, 0, ERROR, 1), (1, 0, ERROR, 2), (0, 1, FAILED, 3), (0, 0, FAILED, 3)]
    assert busy.next_attempt_at is None
    reasons = errors_of('busy@example.com')
    assert len(reasons) == 3
    assert all('451' in reason and 'Mailbox busy, try later' in reason for reason in reasons)
    assert status_of('ok@example.com') == SENT
    rcpt = [env.rcpt_tos for env in smtp_server.handler.envelopes]
    assert rcpt == [['ok@example.com']]  # three refused attempts, no fourth once failed

    smtp_server.handler.refuse.clear()
    assert send_scheduled_messages().batches == 0
    assert status_of('busy@example.com') == FAILED


@pytest.mark.parametrize(
    'limit, attempts_before, expected',
    [
        (3, 0, (ERROR, 1)),
        (3, 1, (ERROR, 2)),
        (3, 2, (FAILED, 3)),  # the third failed attempt reaches the limit
        (3, 7, (FAILED, 8)),  # past it (the limit was lowered since)
        (1, 0, (FAILED, 1)),  # one attempt only
        (None, 50, (ERROR, 51)),  # no limit: retried for ever
    ],
)
def test_mark_error_fails_the_attempt_that_reaches_the_retry_limit(fake_messenger, limit, attempts_before, expected):
    class Limited(PlainTextMessage):
        send_retry_limit = limit

    [dispatch] = schedule('text', 'flaky')
    Dispatch.objects.filter(pk=dispatch.pk).update(retry_count=attempts_before, dispatch_status=ERROR)
    [dispatch] = Dispatch.objects.claim(10, 60)

    fake_messenger.mark_error(dispatch, 'Server says: try later', Limited, retry_after=30)
    Dispatch.objects.store_outcomes([dispatch])

    dispatch.refresh_from_db()
    assert (dispatch.dispatch_status, dispatch.retry_count) == expected
    assert errors_of('flaky') == ['Server says: try later']  # the reason is kept either way
    assert (dispatch.next_attempt_at is None) == (expected[0] == FAILED)


def test_mark_error_counts_from_the_attempt_not_from_earlier_marks(fake_messenger):
    """Marking one attempt twice (error, then error again) is one failed attempt, not two."""

    class Limited(PlainTextMessage):
        send_retry_limit = 2

    [dispatch] = schedule('text', 'flaky')
    [dispatch] = Dispatch.objects.claim(10, 60)
    fake_messenger.mark_error(dispatch, 'first', Limited)
    fake_messenger.mark_error(dispatch, 'again', Limited)
    assert (dispatch.dispatch_status, dispatch.retry_count) == (ERROR, 1)


def test_retry_count_is_not_incremented_on_success(fake_messenger):
    fake_messenger.fail_addresses = {'flaky': 'try later'}
    schedule('text', ['ok', 'flaky'])

    send_scheduled_messages()
    fake_messenger.fail_addresses = {}
    send_scheduled_messages()

    ok = Dispatch.objects.get(address='ok')
    flaky = Dispatch.objects.get(address='flaky')
    assert (ok.dispatch_status, ok.retry_count) == (SENT, 0)
    assert (flaky.dispatch_status, flaky.retry_count) == (SENT, 1)


@override_settings(SITEMESSAGE_SEND_BATCH_SIZE=1)
def test_a_dispatch_failed_in_a_run_is_not_attempted_again_in_that_run(fake_messenger):
    fake_messenger.fail_addresses = {'flaky': 'try later'}
    schedule('text', ['flaky', 'a', 'b'])

    report = send_scheduled_messages()

    assert (report.sent, report.errors, report.batches) == (2, 1, 3)
    assert len(errors_of('flaky')) == 1
    assert Dispatch.objects.get(address='flaky').retry_count == 1


@override_settings(SITEMESSAGE_RETRY_DELAY_SECONDS=60)
def test_retry_delay_postpones_the_next_attempt_until_due(fake_messenger):
    fake_messenger.fail_addresses = {'flaky': 'try later'}
    schedule('text', 'flaky')
    before = timezone.now()

    send_scheduled_messages()

    dispatch = Dispatch.objects.get(address='flaky')
    assert dispatch.dispatch_status == ERROR
    assert dispatch.next_attempt_at >= before + timedelta(seconds=29)

    fake_messenger.fail_addresses = {}
    report = send_scheduled_messages()
    assert report.batches == 0
    assert status_of('flaky') == ERROR
    assert fake_messenger.delivered == []

    Dispatch.objects.filter(pk=dispatch.pk).update(next_attempt_at=timezone.now() - timedelta(seconds=1))
    report = send_scheduled_messages()

    assert report.sent == 1
    assert fake_messenger.delivered == [('flaky', 'text')]
    dispatch.refresh_from_db()
    assert (dispatch.dispatch_status, dispatch.next_attempt_at) == (SENT, None)


def test_no_retry_delay_makes_the_dispatch_due_on_the_next_run(fake_messenger):
    fake_messenger.fail_addresses = {'flaky': 'try later'}
    schedule('text', 'flaky')
    send_scheduled_messages()
    fake_messenger.fail_addresses = {}

    report = send_scheduled_messages()

    assert report.sent == 1


def test_message_cache_is_persisted_for_sent_dispatches(fake_messenger):
    schedule('cached text', 'a')

    send_scheduled_messages()

    dispatch = Dispatch.objects.get(address='a')
    assert dispatch.dispatch_status == SENT
    assert dispatch.message_cache == 'cached text'


def test_one_error_row_per_failed_attempt(fake_messenger):
    fake_messenger.fail_addresses = {'flaky': 'try later', 'gone': 'permanent'}
    schedule('text', ['flaky', 'gone'])

    send_scheduled_messages()
    send_scheduled_messages()

    assert errors_of('flaky') == ['try later', 'try later']
    assert errors_of('gone') == ['gone refused for good']
    assert Dispatch.objects.get(address='gone').dispatch_status == FAILED
    assert Dispatch.objects.get(address='flaky').retry_count == 2


# Dispatch helpers (SPEC 2.3) -------------------------------------------------------------------


@override_settings(SITEMESSAGE_SEND_BATCH_SIZE=3)
def test_get_unsent_claims_at_most_a_batch_oldest_first():
    dispatches = schedule('text', [f'a{n}' for n in range(5)])

    unsent = Dispatch.get_unsent()

    assert [d.pk for d in unsent] == [d.pk for d in dispatches[:3]]
    assert set(Dispatch.objects.filter(dispatch_status=PROCESSING).values_list('pk', flat=True)) == {
        d.pk for d in unsent
    }
    assert [d.pk for d in Dispatch.get_unsent()] == [d.pk for d in dispatches[3:]]
    assert Dispatch.get_unsent() == []


def test_get_unsent_filters_by_priority():
    schedule('urgent', 'urgent', priority=7)
    schedule('normal', 'normal')

    assert [d.address for d in Dispatch.get_unsent(priority='7')] == ['urgent']
    assert status_of('normal') == PENDING


def test_set_dispatches_statuses_counts_failed_attempts_only():
    sent, error, failed, pending = schedule('text', ['s', 'e', 'f', 'p'])
    Dispatch.objects.filter(pk=pending.pk).update(dispatch_status=ERROR, retry_count=3)

    Dispatch.set_dispatches_statuses(sent=[sent], error=[error], failed=[failed], pending=[pending])

    rows = {d.address: d for d in Dispatch.objects.all()}
    assert (rows['s'].dispatch_status, rows['s'].retry_count) == (SENT, 0)
    assert (rows['e'].dispatch_status, rows['e'].retry_count) == (ERROR, 1)
    assert (rows['f'].dispatch_status, rows['f'].retry_count) == (FAILED, 1)
    assert (rows['p'].dispatch_status, rows['p'].retry_count) == (PENDING, 3)
    assert all(d.time_dispatched is not None for d in rows.values())

    with pytest.raises(ValueError, match='sending'):
        Dispatch.set_dispatches_statuses(sending=[sent])


def test_log_dispatches_errors_stores_reasons_and_caches():
    first, second = schedule('text', ['a', 'b'])
    first.error_log = ValueError('bad address')
    first.message_cache = 'compiled a'
    second.error_log = 'timeout'
    second.message_cache = 'compiled b'

    Dispatch.log_dispatches_errors([first, second])

    assert errors_of('a') == ['bad address']
    assert errors_of('b') == ['timeout']
    assert Dispatch.objects.get(address='a').message_cache == 'compiled a'
    Dispatch.log_dispatches_errors([])
    assert DispatchError.objects.count() == 2


def test_group_by_messengers_groups_by_alias_then_message_keeping_order():
    class OtherMessenger(FakeMessenger):
        alias = 'other'

    register_messenger_objects(OtherMessenger())
    first = schedule('one', ['a', 'b'])
    second = schedule('two', 'c')
    third = schedule('three', 'd', messenger='other')

    grouped = Dispatch.group_by_messengers([second[0], third[0], first[0], first[1]])

    assert list(grouped) == ['fake', 'other']
    assert list(grouped['fake']) == [second[0].message_id, first[0].message_id]
    model, dispatches = grouped['fake'][first[0].message_id]
    assert isinstance(grouped['fake'][first[0].message_id], MessageTuple)
    assert model.pk == first[0].message_id
    assert dispatches == [first[0], first[1]]
    assert grouped['other'][third[0].message_id].dispatches == [third[0]]


# Real concurrency ------------------------------------------------------------------------------


@pytest.mark.skipif(
    os.environ.get('SITEMESSAGE_TEST_DB') not in ('postgres', 'mysql'),
    reason='needs row locks of a real server: run with SITEMESSAGE_TEST_DB=postgres or mysql',
)
@pytest.mark.django_db(transaction=True)
def test_concurrent_workers_never_claim_the_same_dispatch():
    message = Message.objects.create(cls='plain', context={'stext_': 'x'}, dispatches_ready=True)
    Dispatch.objects.bulk_create([Dispatch(message=message, messenger='fake', address=f'a{n}') for n in range(200)])
    all_ids = set(Dispatch.objects.values_list('pk', flat=True))
    start = threading.Barrier(2)
    claimed = [[], []]
    failures = []

    def worker(index):
        try:
            start.wait()
            while True:
                batch = Dispatch.objects.claim(7, 600)
                if not batch:
                    break
                claimed[index].extend(d.pk for d in batch)
        except Exception as error:  # reported by the main thread
            failures.append(error)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)

    assert failures == []
    first, second = set(claimed[0]), set(claimed[1])
    assert len(claimed[0]) == len(first) and len(claimed[1]) == len(second)
    assert first | second == all_ids
    assert not first & second
    assert Dispatch.objects.filter(dispatch_status=PROCESSING).count() == 200


def test_default_backoff_delays_a_retry_by_15_to_30_seconds(fake_messenger, settings):
    del settings.SITEMESSAGE_RETRY_DELAY_SECONDS  # back to the shipped default
    fake_messenger.fail_addresses['flaky'] = 'temporary trouble'
    schedule('text', 'flaky')

    before = timezone.now()
    send_scheduled_messages()
    dispatch = Dispatch.objects.get()

    assert dispatch.dispatch_status == Dispatch.DISPATCH_STATUS_ERROR
    assert before + timedelta(seconds=15) <= dispatch.next_attempt_at <= timezone.now() + timedelta(seconds=30)
    assert send_scheduled_messages().sent == 0  # not due yet


class _FlakyWarmUpMessenger(FakeMessenger):
    """Several connections; the first ``broken`` warm-ups fail (e.g. the server's connection limit)."""

    alias = 'flaky_warm_up'

    def __init__(self, broken):
        super().__init__()
        self.parallel_connections = 3
        self.broken = broken
        self.lock = threading.Lock()

    def before_send(self):
        with self.lock:
            self.broken -= 1
            if self.broken >= 0:
                raise RuntimeError('too many connections')

    def after_send(self):
        pass


def test_parallel_connections_that_fail_to_warm_up_leave_work_to_the_others():
    messenger = _FlakyWarmUpMessenger(broken=1)
    register_messenger_objects(messenger)
    schedule_messages([f'text {n}' for n in range(12)], recipients('flaky_warm_up', ['a', 'b']))

    send_scheduled_messages()

    statuses = list(Dispatch.objects.values_list('dispatch_status', flat=True))
    errors = statuses.count(Dispatch.DISPATCH_STATUS_ERROR)
    assert statuses.count(Dispatch.DISPATCH_STATUS_SENT) + errors == 24
    assert errors <= 2  # only the chunk the failing connection had pulled
    assert sorted(messenger.delivered) == sorted(set(messenger.delivered))  # none twice


def test_parallel_connections_all_failing_to_warm_up_record_the_reason_on_every_dispatch():
    messenger = _FlakyWarmUpMessenger(broken=100)
    register_messenger_objects(messenger)
    schedule_messages([f'text {n}' for n in range(12)], recipients('flaky_warm_up', ['a', 'b']))

    send_scheduled_messages()

    assert set(Dispatch.objects.values_list('dispatch_status', flat=True)) == {Dispatch.DISPATCH_STATUS_ERROR}
    logs = list(DispatchError.objects.values_list('error_log', flat=True))
    assert len(logs) == 24
    assert all('warm-up failed' in log and 'too many connections' in log for log in logs)


# Delivery sessions: connections kept for a run, the next batch handed over early ------------------


class _SlowMessenger(FakeMessenger):
    """Takes a while per dispatch and counts the dispatches being sent right now (any thread)."""

    alias = 'slow'

    def __init__(self, connections, seconds=0.02):
        super().__init__()
        self.parallel_connections = connections
        self.seconds = seconds
        self.active = 0
        self.guard = threading.Lock()
        self.connected = 0

    def before_send(self):
        with self.guard:
            self.connected += 1

    def send(self, message_cls, message_model, dispatch_models):
        for dispatch in dispatch_models:
            with self.guard:
                self.active += 1
            threading.Event().wait(self.seconds)
            with self.guard:
                self.active -= 1
                self.delivered.append((dispatch.address, dispatch.message_cache))
            self.mark_sent(dispatch)


def _record_claims(monkeypatch, messenger):
    """Record, for each claim, how many dispatches the messenger was sending at that moment."""
    claims = []
    original = type(Dispatch.objects.get_queryset()).claim

    def claim(queryset, *args, **kwargs):
        claims.append(messenger.active)
        return original(queryset, *args, **kwargs)

    monkeypatch.setattr(type(Dispatch.objects.get_queryset()), 'claim', claim)
    return claims


@override_settings(SITEMESSAGE_SEND_BATCH_SIZE=4)
def test_with_several_connections_the_next_batch_is_claimed_while_the_last_is_on_the_wire(monkeypatch):
    messenger = _SlowMessenger(connections=2)
    register_messenger_objects(messenger)
    schedule_messages([f'text {n}' for n in range(12)], recipients('slow', ['a']))
    claims = _record_claims(monkeypatch, messenger)

    report = send_scheduled_messages()

    assert (report.sent, report.batches) == (12, 3)
    assert any(claims), f'every claim waited for the connections to go idle: {claims}'
    assert messenger.connected == 2  # once per connection for the whole run, not per batch
    assert_nothing_processing()


@override_settings(SITEMESSAGE_SEND_BATCH_SIZE=4)
def test_with_one_connection_a_batch_is_stored_before_the_next_is_claimed(monkeypatch):
    messenger = _SlowMessenger(connections=1, seconds=0.005)
    register_messenger_objects(messenger)
    schedule_messages([f'text {n}' for n in range(12)], recipients('slow', ['a']))
    seen_by_claims = []  # (dispatches being sent, dispatches stored as sent) at each claim
    original = type(Dispatch.objects.get_queryset()).claim

    def claim(queryset, *args, **kwargs):
        seen_by_claims.append((messenger.active, Dispatch.objects.filter(dispatch_status=SENT).count()))
        return original(queryset, *args, **kwargs)

    monkeypatch.setattr(type(Dispatch.objects.get_queryset()), 'claim', claim)

    report = send_scheduled_messages()

    assert (report.sent, report.batches) == (12, 3)
    # At most one batch in hand, the crash window of one connection.
    assert seen_by_claims == [(0, 0), (0, 4), (0, 8), (0, 12)]
    assert messenger.connected == 1


@override_settings(SITEMESSAGE_SEND_BATCH_SIZE=4)
def test_smtp_with_one_connection_sends_on_its_own_thread_while_the_next_batch_is_claimed(monkeypatch, smtp_server):
    """Built-in messengers (``deliver_on_own_thread``): the database work overlaps the server's replies."""
    import asyncio
    import smtplib

    from sitemessage.messengers.smtp import SMTPMessenger

    handler = smtp_server.handler
    original_data = type(handler).handle_DATA

    async def slow_data(server, session, envelope):
        await asyncio.sleep(0.02)
        return await original_data(handler, server, session, envelope)

    monkeypatch.setattr(handler, 'handle_DATA', slow_data)
    opened_on = []

    def connect(*args, **kwargs):
        opened_on.append(threading.current_thread())
        return smtplib.SMTP(*args, **kwargs)

    register_messenger_objects(
        SMTPMessenger('robot@example.com', host='127.0.0.1', port=smtp_server.port, timeout=5, connection_class=connect)
    )
    schedule_messages([EmailTextMessage('Hi', f'text {n}') for n in range(12)], recipients('smtp', 'a@example.com'))
    arrived_at_claims = []
    original = type(Dispatch.objects.get_queryset()).claim

    def claim(queryset, *args, **kwargs):
        arrived_at_claims.append(len(handler.envelopes))
        return original(queryset, *args, **kwargs)

    monkeypatch.setattr(type(Dispatch.objects.get_queryset()), 'claim', claim)

    report = send_scheduled_messages()

    assert (report.sent, report.batches) == (12, 3)
    assert len(handler.envelopes) == 12
    assert any(count % 4 for count in arrived_at_claims), f'each claim waited for its batch: {arrived_at_claims}'
    assert len(opened_on) == 1 and opened_on[0] is not threading.current_thread()  # one connection, its own thread
    assert_nothing_processing()


@override_settings(SITEMESSAGE_SEND_BATCH_SIZE=4)
def test_a_run_that_breaks_off_stores_what_was_sent_and_gives_back_the_rest_untouched():
    messenger = _SlowMessenger(connections=2)
    register_messenger_objects(messenger)
    schedule_messages([f'text {n}' for n in range(12)], recipients('slow', ['a']))
    asked = []

    def should_stop():
        asked.append(1)
        if len(asked) == 2:  # while the first batch is on the wire, the second just handed over
            raise KeyboardInterrupt
        return False

    with pytest.raises(KeyboardInterrupt):
        send_scheduled_messages(should_stop=should_stop)

    assert_nothing_processing()
    statuses = list(Dispatch.objects.values_list('dispatch_status', flat=True))
    assert len(statuses) == 12 and set(statuses) <= {SENT, PENDING}
    assert statuses.count(SENT) == len(messenger.delivered)  # what went out is recorded, the rest waits
    assert not DispatchError.objects.exists()  # nothing counted as a failed attempt


def test_record_sent_marks_only_rows_still_held_by_their_claim():
    schedule('one text', ['a', 'b', 'c'])
    claimed = Dispatch.objects.claim(10, 60)
    stolen = claimed[2]
    Dispatch.objects.filter(pk=stolen.pk).update(claim_token='another-worker')  # our lease expired, it was taken

    assert Dispatch.objects.record_sent(claimed) == 2

    rows = {row.address: row for row in Dispatch.objects.all()}
    assert (rows['a'].dispatch_status, rows['b'].dispatch_status) == (SENT, SENT)
    assert rows['a'].time_dispatched is not None and rows['a'].lease_until is None
    assert rows['a'].claim_token == claimed[0].claim_token  # the batch's store completes it
    assert rows['c'].dispatch_status == Dispatch.DISPATCH_STATUS_PROCESSING
    assert Dispatch.objects.record_sent([]) == 0


@pytest.mark.parametrize('value', [0, -5, True, '20', 2.5])
def test_a_bad_outcome_flush_size_is_named_before_any_attempt(value):
    schedule('text', 'someone')
    with override_settings(SITEMESSAGE_OUTCOME_FLUSH_SIZE=value):
        with pytest.raises(SiteMessageConfigurationError, match=rf'SITEMESSAGE_OUTCOME_FLUSH_SIZE must be .*{value!r}'):
            send_scheduled_messages()
    dispatch = Dispatch.objects.get()
    assert dispatch.retry_count == 0 and not DispatchError.objects.exists()  # no attempt was counted
