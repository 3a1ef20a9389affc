"""Idempotency keys of schedule_messages() and the shortcuts (docs/idempotency.rst)."""

from __future__ import annotations

import threading
import time
from datetime import timedelta

import pytest
from django.core.mail import EmailMessage, get_connection
from django.core.management import call_command
from django.utils import timezone

from sitemessage.exceptions import SchedulingTypeError, SchedulingValueError
from sitemessage.maintenance import cleanup_idempotency_keys
from sitemessage.messages.plain import PlainTextMessage
from sitemessage.models import IDEMPOTENCY_KEY_LENGTH, Dispatch, IdempotencyKey, Message
from sitemessage.sending import send_scheduled_messages
from sitemessage.shortcuts import schedule_email
from sitemessage.toolbox import recipients, schedule_messages

pytestmark = pytest.mark.django_db


def test_second_call_with_the_same_key_schedules_nothing_and_returns_the_first_result(fake_messenger):
    first = schedule_messages('Order 42 paid', recipients('fake', ['a', 'b']), idempotency_key='order-42-paid')
    second = schedule_messages('Order 42 paid', recipients('fake', ['a', 'b']), idempotency_key='order-42-paid')

    assert Message.objects.count() == 1 and Dispatch.objects.count() == 2
    assert [message.pk for message, _dispatches in second] == [message.pk for message, _dispatches in first]
    assert [d.pk for d in second[0].dispatches] == [d.pk for d in first[0].dispatches]
    assert Message.objects.get().idempotency_key == 'order-42-paid'
    send_scheduled_messages()
    assert sorted(fake_messenger.delivered) == [('a', 'Order 42 paid'), ('b', 'Order 42 paid')]

    schedule_messages('Order 42 paid', recipients('fake', ['a', 'b']), idempotency_key='order-42-paid')
    send_scheduled_messages()
    assert len(fake_messenger.delivered) == 2  # a repeat after sending still sends nothing


def test_key_applies_to_the_whole_call_of_several_messages(fake_messenger):
    messages = [PlainTextMessage('one'), PlainTextMessage('two'), PlainTextMessage('three')]
    first = schedule_messages(messages, recipients('fake', 'a'), idempotency_key='batch-7')
    again = schedule_messages([PlainTextMessage('other')], recipients('fake', 'z'), idempotency_key='batch-7')
    assert [m.pk for m, _d in again] == [m.pk for m, _d in first]
    assert Message.objects.count() == 3
    assert set(Message.objects.values_list('idempotency_key', flat=True)) == {'batch-7'}


def test_different_keys_and_no_key_schedule_each_time():
    schedule_messages('x', recipients('fake', 'a'), idempotency_key='k1')
    schedule_messages('x', recipients('fake', 'a'), idempotency_key='k2')
    schedule_messages('x', recipients('fake', 'a'))
    schedule_messages('x', recipients('fake', 'a'))
    assert Message.objects.count() == 4


def test_shortcut_takes_the_key(smtp_messenger):
    schedule_email('Paid', 'buyer@example.com', 'Receipt', idempotency_key='receipt-42')
    schedule_email('Paid', 'buyer@example.com', 'Receipt', idempotency_key='receipt-42')
    assert Dispatch.objects.filter(address='buyer@example.com').count() == 1


def test_email_backend_key_by_header_or_attribute_counts_a_repeat_as_queued(smtp_messenger, settings):
    settings.EMAIL_BACKEND = 'sitemessage.backends.EmailBackend'

    def mail(**kwargs):
        return EmailMessage('Receipt', 'body', 'shop@example.com', ['buyer@example.com'], **kwargs)

    by_header = mail(headers={'X-Sitemessage-Idempotency-Key': 'mail-1'})
    by_attribute = mail()
    by_attribute.idempotency_key = 'mail-1'
    assert get_connection().send_messages([by_header, by_attribute, mail()]) == 3
    assert Message.objects.count() == 2
    assert Message.objects.filter(idempotency_key='mail-1').count() == 1
    assert b'X-Sitemessage' not in Message.objects.get(idempotency_key='mail-1').context['mime'].encode()


def test_key_may_be_used_again_after_the_retention(settings):
    settings.SITEMESSAGE_IDEMPOTENCY_RETENTION = 60
    ((first, _d),) = schedule_messages('x', recipients('fake', 'a'), idempotency_key='daily-report')
    IdempotencyKey.objects.update(time_created=timezone.now() - timedelta(seconds=61))
    ((second, _d),) = schedule_messages('x', recipients('fake', 'a'), idempotency_key='daily-report')
    assert second.pk != first.pk
    ((third, _d),) = schedule_messages('x', recipients('fake', 'a'), idempotency_key='daily-report')
    assert third.pk == second.pk
    assert IdempotencyKey.objects.count() == 1


def test_cleanup_deletes_expired_keys_only(settings):
    settings.SITEMESSAGE_IDEMPOTENCY_RETENTION = 60
    schedule_messages('x', recipients('fake', 'a'), idempotency_key='old')
    IdempotencyKey.objects.update(time_created=timezone.now() - timedelta(seconds=61))
    schedule_messages('x', recipients('fake', 'a'), idempotency_key='new')
    assert cleanup_idempotency_keys() == 1
    assert list(IdempotencyKey.objects.values_list('key', flat=True)) == ['new']
    IdempotencyKey.objects.update(time_created=timezone.now() - timedelta(seconds=61))
    call_command('sitemessage_cleanup')
    assert not IdempotencyKey.objects.exists()
    assert Message.objects.count() == 2  # the messages stay


def test_no_retention_keeps_keys(settings):
    settings.SITEMESSAGE_IDEMPOTENCY_RETENTION = None
    schedule_messages('x', recipients('fake', 'a'), idempotency_key='forever')
    IdempotencyKey.objects.update(time_created=timezone.now() - timedelta(days=3650))
    schedule_messages('x', recipients('fake', 'a'), idempotency_key='forever')
    assert cleanup_idempotency_keys() == 0
    assert Message.objects.count() == 1


def test_a_failed_scheduling_leaves_the_key_free():
    with pytest.raises(ValueError):
        schedule_messages(
            'x', recipients('fake', 'a'), idempotency_key='k', send_at=timezone.now().replace(tzinfo=None)
        )
    with pytest.raises(TypeError):
        schedule_messages([PlainTextMessage('ok'), 42], recipients('fake', 'a'), idempotency_key='k')
    assert not IdempotencyKey.objects.exists() and not Message.objects.exists()
    schedule_messages('x', recipients('fake', 'a'), idempotency_key='k')
    assert Message.objects.count() == 1


@pytest.mark.parametrize(
    'key, error, text',
    [
        ('', SchedulingValueError, "idempotency_key must not be empty, got ''"),
        (
            'k' * (IDEMPOTENCY_KEY_LENGTH + 1),
            SchedulingValueError,
            f'at most {IDEMPOTENCY_KEY_LENGTH} characters, got 201',
        ),
        (42, SchedulingTypeError, 'idempotency_key must be a string, got 42'),
    ],
)
def test_bad_keys_are_refused_before_anything_is_stored(key, error, text):
    with pytest.raises(error, match=text):
        schedule_messages('x', recipients('fake', 'a'), idempotency_key=key)
    assert not Message.objects.exists() and not IdempotencyKey.objects.exists()


def test_a_key_of_the_column_length_is_accepted():
    key = 'k' * IDEMPOTENCY_KEY_LENGTH
    schedule_messages('x', recipients('fake', 'a'), idempotency_key=key)
    schedule_messages('x', recipients('fake', 'a'), idempotency_key=key)
    assert Message.objects.count() == 1


def test_two_processes_racing_with_one_key_schedule_once(procs):
    """Two real processes: the second tries the key while the first's transaction holds it uncommitted."""
    start_at = time.time() + 4  # both are past Django's set-up by then
    results = {}

    def run(name, hold):
        results[name] = procs.orm('schedule_once', key='order-42-paid', start_at=start_at, hold=hold, timeout=90)

    threads = [threading.Thread(target=run, args=(name, 1.5)) for name in ('one', 'two')]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert results['one']['messages'] == results['two']['messages']
    status = procs.orm('status')
    assert status['counts']['pending'] == 1
    assert status['addresses']['pending'] == ['buyer@example.com']
    # Both returned only after the winner's commit (it holds its transaction 1.5 s): the loser waited for it.
    assert all(result['finished'] >= start_at + 1.5 for result in results.values())


def test_docs_idempotency_example_runs_as_written(smtp_messenger, smtp_server):
    class Order:
        pk = 42
        email = 'buyer@example.com'

    order = Order()

    # docs/idempotency.rst
    def order_paid(order):
        schedule_email(
            f'Thank you! Order {order.pk} is paid.',
            order.email,
            'Payment received',
            idempotency_key=f'order-{order.pk}-paid',
        )

    order_paid(order)
    order_paid(order)  # a webhook delivered twice
    first = schedule_messages(
        'Order 42 shipped', recipients('smtp', 'buyer@example.com'), idempotency_key='order-42-shipped'
    )
    again = schedule_messages(
        'Order 42 shipped', recipients('smtp', 'buyer@example.com'), idempotency_key='order-42-shipped'
    )
    assert [message.pk for message, _ in again] == [message.pk for message, _ in first]

    send_scheduled_messages()
    subjects = sorted(message['Subject'] or '' for message in smtp_server.handler.messages())
    assert len(smtp_server.handler.envelopes) == 2
    assert 'Payment received' in subjects


def test_admin_lists_keys_and_finds_messages_by_key(admin_client):
    from django.urls import reverse

    schedule_messages('x', recipients('fake', 'a'), idempotency_key='order-42-paid')
    schedule_messages('y', recipients('fake', 'b'), idempotency_key='order-43-paid')
    found = admin_client.get(reverse('admin:sitemessage_message_changelist'), {'q': 'order-42-paid'})
    assert [m.idempotency_key for m in found.context['cl'].result_list] == ['order-42-paid']
    keys = admin_client.get(reverse('admin:sitemessage_idempotencykey_changelist'), {'q': 'order-43-paid'})
    assert [k.key for k in keys.context['cl'].result_list] == ['order-43-paid']
    key = IdempotencyKey.objects.get(key='order-43-paid')
    assert admin_client.get(reverse('admin:sitemessage_idempotencykey_change', args=[key.pk])).status_code == 200
