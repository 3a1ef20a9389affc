"""send_at and expires_at: scheduling, the claim honouring them, expiry, bad values (docs/send-later.rst)."""

from __future__ import annotations

import time
from datetime import datetime, timedelta
from datetime import timezone as dt_timezone

import pytest
from django.core.mail import EmailMessage, send_mail
from django.db import connection
from django.test.utils import CaptureQueriesContext, override_settings
from django.utils import timezone

from sitemessage.exceptions import SchedulingTypeError, SchedulingValueError
from sitemessage.messages.email import EmailTextMessage
from sitemessage.messages.plain import PlainTextMessage
from sitemessage.models import Dispatch, DispatchError, Message, Subscription
from sitemessage.sending import send_scheduled_messages
from sitemessage.shortcuts import schedule_email
from sitemessage.toolbox import prepare_dispatches, recipients, register_messenger_objects, schedule_messages
from tests.fakes import FakeMessenger

pytestmark = pytest.mark.django_db

PENDING = Dispatch.DISPATCH_STATUS_PENDING
SENT = Dispatch.DISPATCH_STATUS_SENT
ERROR = Dispatch.DISPATCH_STATUS_ERROR
FAILED = Dispatch.DISPATCH_STATUS_FAILED


def later(seconds: float) -> datetime:
    return timezone.now() + timedelta(seconds=seconds)


def statuses() -> dict:
    return dict(Dispatch.objects.values_list('address', 'dispatch_status'))


def errors_of(address: str) -> list:
    return list(DispatchError.objects.filter(dispatch__address=address).values_list('error_log', flat=True))


def wait_until(moment: datetime) -> None:
    time.sleep(max((moment - timezone.now()).total_seconds(), 0) + 0.05)


def test_dispatch_due_later_is_sent_only_after_its_time(fake_messenger):
    send_at = later(0.6)
    ((message, dispatches),) = schedule_messages('later', recipients('fake', ['a', 'b']), send_at=send_at)
    schedule_messages('now', recipients('fake', 'c'))
    assert message.send_at == send_at
    assert {d.next_attempt_at for d in Dispatch.objects.filter(message=message)} == {send_at}

    send_scheduled_messages()
    assert fake_messenger.delivered == [('c', 'now')]
    assert statuses() == {'a': PENDING, 'b': PENDING, 'c': SENT}

    wait_until(send_at)
    send_scheduled_messages()
    assert sorted(fake_messenger.delivered) == [('a', 'later'), ('b', 'later'), ('c', 'now')]
    assert set(statuses().values()) == {SENT}


def test_send_at_in_the_past_is_sent_at_once(fake_messenger):
    schedule_messages('late', recipients('fake', 'a'), send_at=later(-3600))
    send_scheduled_messages()
    assert fake_messenger.delivered == [('a', 'late')]


def test_expired_dispatch_fails_with_reason_expired_and_never_reaches_the_smtp_server(smtp_messenger, smtp_server):
    expires_at = later(0.4)
    schedule_email('Too late', 'late@example.com', 'Offer', expires_at=expires_at)
    schedule_email('In time', 'ok@example.com', 'Offer', expires_at=later(3600))
    wait_until(expires_at)

    send_scheduled_messages()

    assert [envelope.rcpt_tos for envelope in smtp_server.handler.envelopes] == [['ok@example.com']]
    assert statuses() == {'late@example.com': FAILED, 'ok@example.com': SENT}
    (reason,) = errors_of('late@example.com')
    assert reason.startswith('expired')
    assert expires_at.isoformat() in reason
    expired = Dispatch.objects.get(address='late@example.com')
    assert expired.retry_count == 0 and expired.claim_token is None

    send_scheduled_messages()  # stays failed, never sent, one reason
    assert len(smtp_server.handler.envelopes) == 1
    assert len(errors_of('late@example.com')) == 1


def test_a_claim_whose_whole_pick_expired_goes_on_to_the_sendable_ones(fake_messenger):
    expires_at = later(0.3)
    schedule_messages('stale', recipients('fake', [f'old{n}' for n in range(5)]), expires_at=expires_at)
    schedule_messages('fresh', recipients('fake', 'new'))
    wait_until(expires_at)
    with override_settings(SITEMESSAGE_SEND_BATCH_SIZE=2):
        batch = Dispatch.get_unsent()
    assert [d.address for d in batch] == ['new']
    Dispatch.objects.release(batch)
    assert Dispatch.objects.filter(dispatch_status=FAILED).count() == 5
    assert DispatchError.objects.count() == 5


def test_dispatch_in_error_expires_instead_of_being_retried(fake_messenger):
    expires_at = later(0.5)
    schedule_messages('flaky', recipients('fake', 'a'), expires_at=expires_at)
    fake_messenger.fail_addresses['a'] = 'temporarily down'
    with override_settings(SITEMESSAGE_RETRY_DELAY_SECONDS=0):
        send_scheduled_messages()
        assert statuses() == {'a': ERROR}
        fake_messenger.fail_addresses.clear()
        wait_until(expires_at)
        send_scheduled_messages()
    assert statuses() == {'a': FAILED}
    assert fake_messenger.delivered == []
    assert errors_of('a')[-1].startswith('expired')


def test_expiry_is_checked_on_the_rows_picked_in_bulk(fake_messenger):
    expires_at = later(0.3)
    schedule_messages('stale', recipients('fake', [f'old{n}' for n in range(30)]), expires_at=expires_at)
    wait_until(expires_at)
    with CaptureQueriesContext(connection) as queries:
        assert Dispatch.get_unsent() == []
    assert Dispatch.objects.filter(dispatch_status=FAILED).count() == 30
    assert len(queries) < 12  # a handful of queries for the batch, not one per dispatch


def test_several_messages_in_bulk_take_the_times(fake_messenger):
    send_at, expires_at = later(3600), later(7200)
    results = schedule_messages(
        [PlainTextMessage('one'), PlainTextMessage('two')],
        recipients('fake', ['a', 'b']),
        send_at=send_at,
        expires_at=expires_at,
    )
    ids = [message.pk for message, _dispatches in results]
    assert set(Message.objects.filter(pk__in=ids).values_list('send_at', 'expires_at')) == {(send_at, expires_at)}
    assert set(Dispatch.objects.values_list('next_attempt_at', 'expires_at')) == {(send_at, expires_at)}
    assert all(d.next_attempt_at == send_at for _m, dispatches in results for d in dispatches)
    send_scheduled_messages()
    assert fake_messenger.delivered == []


def test_grouped_message_takes_the_times(fake_messenger):
    class Grouped(PlainTextMessage):
        alias = 'grouped_later'
        group_mark = 'digest'

    from sitemessage.toolbox import register_message_types

    register_message_types(Grouped)
    send_at = later(3600)
    schedule_messages(Grouped('one'), recipients('fake', 'a'), send_at=send_at)
    schedule_messages(Grouped('two'), recipients('fake', 'a'), send_at=send_at)
    (message,) = Message.objects.all()
    assert message.send_at == send_at
    assert list(Dispatch.objects.values_list('next_attempt_at', flat=True)) == [send_at]


def test_prepare_dispatches_carries_the_times_to_subscribers(fake_messenger):
    send_at, expires_at = later(0.6), later(3600)
    Subscription.create('sub1', 'plain', 'fake')
    Subscription.create('sub2', 'plain', 'fake')
    schedule_messages('news', send_at=send_at, expires_at=expires_at)  # no recipients: subscribers later
    prepare_dispatches()
    assert set(Dispatch.objects.values_list('next_attempt_at', 'expires_at')) == {(send_at, expires_at)}
    send_scheduled_messages()
    assert fake_messenger.delivered == []
    wait_until(send_at)
    send_scheduled_messages()
    assert sorted(address for address, _text in fake_messenger.delivered) == ['sub1', 'sub2']


def test_email_backend_reads_attributes_and_headers_and_never_sends_the_headers(smtp_messenger, smtp_server, settings):
    settings.EMAIL_BACKEND = 'sitemessage.backends.EmailBackend'
    send_at = later(0.6)
    by_attribute = EmailMessage('Later', 'body', 'from@example.com', ['attr@example.com'])
    by_attribute.send_at = send_at
    by_header = EmailMessage(
        'Expiring',
        'body',
        'from@example.com',
        ['header@example.com'],
        headers={'X-Sitemessage-Expires-At': later(-1).isoformat(), 'X-Custom': 'kept'},
    )
    plain = EmailMessage('Now', 'body', 'from@example.com', ['now@example.com'])
    from django.core.mail import get_connection

    assert get_connection().send_messages([by_attribute, by_header, plain]) == 3
    assert by_header.extra_headers['X-Sitemessage-Expires-At']  # the caller's e-mail is left as it was

    send_scheduled_messages()
    assert [envelope.rcpt_tos for envelope in smtp_server.handler.envelopes] == [['now@example.com']]
    assert errors_of('header@example.com')[0].startswith('expired')
    wait_until(send_at)
    send_scheduled_messages()
    delivered = smtp_server.handler.messages()
    assert [m['To'] for m in delivered] == ['now@example.com', 'attr@example.com']
    assert all(m['X-Sitemessage-Send-At'] is None and m['X-Sitemessage-Expires-At'] is None for m in delivered)
    send_mail('Plain', 'body', 'from@example.com', ['x@example.com'])  # send_mail() works as before
    assert Dispatch.objects.filter(address='x@example.com').exists()


def test_email_backend_refuses_a_bad_header_time_naming_it(smtp_messenger, settings):
    settings.EMAIL_BACKEND = 'sitemessage.backends.EmailBackend'
    message = EmailMessage('S', 'b', 'from@example.com', ['a@example.com'], headers={'X-Sitemessage-Send-At': 'soon'})
    with pytest.raises(SchedulingValueError, match="X-Sitemessage-Send-At must be an ISO 8601 time, got 'soon'"):
        message.send()
    assert not Message.objects.exists()
    from django.core.mail import get_connection

    assert get_connection(fail_silently=True).send_messages([message]) == 0


@pytest.mark.parametrize(
    'options, error, text',
    [
        ({'send_at': datetime(2030, 1, 1, 12, 0)}, SchedulingValueError, 'send_at must be an aware datetime'),
        ({'expires_at': '2030-01-01'}, SchedulingTypeError, "expires_at must be a datetime, got '2030-01-01'"),
        ({'send_at': 1700000000}, SchedulingTypeError, 'send_at must be a datetime, got 1700000000'),
        (
            {'send_at': timezone.now() + timedelta(hours=2), 'expires_at': timezone.now() + timedelta(hours=1)},
            SchedulingValueError,
            'must be later than send_at',
        ),
    ],
)
def test_bad_times_are_refused_before_anything_is_stored(smtp_messenger, options, error, text):
    with pytest.raises(error, match=text):
        schedule_messages('x', recipients('fake', 'a'), **options)
    with pytest.raises(error, match=text):
        schedule_email('x', 'a@example.com', 'S', **options)
    assert not Message.objects.exists() and not Dispatch.objects.exists()
    assert issubclass(error, ValueError)


def test_naive_times_are_accepted_without_use_tz(settings, fake_messenger):
    settings.USE_TZ = False
    send_at = datetime.now() + timedelta(hours=1)
    ((message, _dispatches),) = schedule_messages(EmailTextMessage('S', 'x'), recipients('fake', 'a'), send_at=send_at)
    assert Message.objects.get(pk=message.pk).send_at == send_at.replace(microsecond=send_at.microsecond)


def test_claim_query_uses_the_queue_index_not_a_sequential_scan():
    if connection.vendor != 'postgresql':
        pytest.skip('The plan is checked on PostgreSQL: run with SITEMESSAGE_TEST_DB=postgres (claim_plan.py: 1M rows)')
    from benchmarks.claim_plan import claim_plan, fill

    fill(connection, 20000)
    plan = claim_plan(connection)
    assert 'Seq Scan on sitemessage_dispatch' not in plan, plan
    assert 'Index' in plan, plan


class TelegramStandIn(FakeMessenger):
    """Takes the ``telegram`` alias, so the documented example is delivered without Telegram."""

    alias = 'telegram'


def test_docs_send_later_examples_run_as_written(smtp_messenger, smtp_server, settings):
    register_messenger_objects(TelegramStandIn())
    # docs/send-later.rst, first example
    tomorrow_morning = timezone.now().replace(hour=8, minute=0, second=0, microsecond=0) + timedelta(days=1)
    schedule_email('Your trial ends today.', 'user@example.com', 'Trial', send_at=tomorrow_morning)
    schedule_messages(
        'Your code: 913 442',
        recipients('telegram', '12345678'),
        expires_at=timezone.now() + timedelta(minutes=10),
    )
    # docs/send-later.rst, EmailBackend
    settings.EMAIL_BACKEND = 'sitemessage.backends.EmailBackend'
    email = EmailMessage('Weekly digest', 'Hello!', 'news@example.com', ['reader@example.com'])
    email.send_at = timezone.now() + timedelta(hours=1)
    email.send()
    EmailMessage(
        'Flash sale',
        'Today only.',
        'shop@example.com',
        ['buyer@example.com'],
        headers={'X-Sitemessage-Expires-At': '2026-12-01T23:59:00+00:00'},
    ).send()

    send_scheduled_messages()
    code = Dispatch.objects.get(address='12345678')
    assert code.dispatch_status == SENT and code.expires_at is not None
    assert Dispatch.objects.get(address='user@example.com').next_attempt_at == tomorrow_morning
    assert Dispatch.objects.get(address='reader@example.com').dispatch_status == PENDING
    sale = Dispatch.objects.get(address='buyer@example.com')
    assert sale.expires_at == datetime(2026, 12, 1, 23, 59, tzinfo=dt_timezone.utc)
    sent_to = [envelope.rcpt_tos for envelope in smtp_server.handler.envelopes]
    assert ['user@example.com'] not in sent_to and ['reader@example.com'] not in sent_to
    if timezone.now() < sale.expires_at:
        assert sent_to == [['buyer@example.com']]
    else:
        assert sale.dispatch_status == FAILED and sent_to == []


def test_admin_shows_and_filters_the_times_and_its_retry_sends_an_expired_dispatch_now(admin_client, fake_messenger):
    from django.urls import reverse

    expires_at = later(0.3)
    schedule_messages('late', recipients('fake', 'late'), expires_at=expires_at)
    schedule_messages('later', recipients('fake', 'later'), send_at=later(3600))
    schedule_messages('plain', recipients('fake', 'plain'))
    messages_url = reverse('admin:sitemessage_message_changelist')
    dispatches_url = reverse('admin:sitemessage_dispatch_changelist')

    timed = admin_client.get(messages_url, {'send_at__isnull': 'False'})
    (message,) = timed.context['cl'].result_list
    assert message.context['stext_'] == 'later'
    page = admin_client.get(reverse('admin:sitemessage_message_change', args=[message.pk])).content.decode()
    assert 'field-send_at' in page and 'field-expires_at' in page and 'field-idempotency_key' in page
    expiring = admin_client.get(dispatches_url, {'expires_at__isnull': 'False'})
    (dispatch,) = expiring.context['cl'].result_list
    assert dispatch.address == 'late'
    page = admin_client.get(reverse('admin:sitemessage_dispatch_change', args=[dispatch.pk])).content.decode()
    assert 'field-expires_at' in page and 'field-next_attempt_at' in page

    wait_until(expires_at)
    send_scheduled_messages()
    expired = Dispatch.objects.get(address='late')
    assert expired.dispatch_status == FAILED
    admin_client.post(dispatches_url, {'action': 'schedule_failed', '_selected_action': [expired.pk]})
    expired.refresh_from_db()
    assert (expired.dispatch_status, expired.expires_at) == (PENDING, None)
    send_scheduled_messages()
    assert ('late', 'late') in fake_messenger.delivered
