"""The suppression list: a suppressed address is never attempted, permanent refusals suppress it after N."""

from __future__ import annotations

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext, override_settings
from django.urls import reverse

from sitemessage.exceptions import SiteMessageConfigurationError
from sitemessage.models import Dispatch, DispatchError, Subscription, Suppression
from sitemessage.toolbox import recipients, schedule_messages, send_scheduled_messages

pytestmark = pytest.mark.django_db

FAILED, SENT = Dispatch.DISPATCH_STATUS_FAILED, Dispatch.DISPATCH_STATUS_SENT


def outcome(address):
    dispatch = Dispatch.objects.filter(address=address).latest('pk')
    errors = list(DispatchError.objects.filter(dispatch=dispatch).values_list('error_log', flat=True))
    return dispatch.dispatch_status, errors


def rcpts(smtp_server):
    return [address for env in smtp_server.handler.envelopes for address in env.rcpt_tos]


def test_a_dispatch_suppressed_after_scheduling_never_reaches_the_smtp_server(smtp_messenger, smtp_server):
    schedule_messages('Hi', recipients('smtp', ['gone@example.com', 'ann@example.com']))
    Suppression.objects.create(messenger='smtp', address='gone@example.com', reason=Suppression.REASON_COMPLAINT)

    report = send_scheduled_messages()

    assert rcpts(smtp_server) == ['ann@example.com']
    assert [log[0] for log in smtp_server.handler.rcpt_log] == [smtp_server.handler.rcpt_log[0][0]]  # one RCPT only
    assert outcome('gone@example.com') == (FAILED, ['suppressed: complaint'])
    assert outcome('ann@example.com') == (SENT, [])
    assert (report.sent, report.failed) == (1, 1)


def test_scheduling_to_a_suppressed_address_fails_its_dispatch_at_once_with_the_reason(smtp_messenger, smtp_server):
    Suppression.objects.create(messenger='smtp', address='gone@example.com', reason=Suppression.REASON_BOUNCE)

    for message in ('one', 'two'):  # the bulk path (several messages) and the one-message path
        schedule_messages([f'{message} a', f'{message} b'], recipients('smtp', ['gone@example.com', 'ann@example.com']))
    schedule_messages('three', recipients('smtp', ['gone@example.com']))

    suppressed = Dispatch.objects.filter(address='gone@example.com')
    assert set(suppressed.values_list('dispatch_status', flat=True)) == {FAILED}
    assert set(DispatchError.objects.values_list('error_log', flat=True)) == {'suppressed: bounce'}
    assert DispatchError.objects.count() == suppressed.count() == 5
    send_scheduled_messages()
    assert rcpts(smtp_server) == ['ann@example.com'] * 4


def test_a_suppression_is_per_messenger_and_inactive_rows_only_count(fake_messenger):
    Suppression.objects.create(messenger='smtp', address='ann', reason=Suppression.REASON_BOUNCE)
    Suppression.objects.create(messenger='fake', address='bob', active=False, failures=1)

    schedule_messages('Hi', recipients('fake', ['ann', 'bob']))
    send_scheduled_messages()

    assert sorted(address for address, _text in fake_messenger.delivered) == ['ann', 'bob']


def test_scheduling_checks_the_suppression_list_in_one_query_whatever_the_recipients():
    Suppression.objects.create(messenger='fake', address='gone', reason=Suppression.REASON_MANUAL)

    def queries(count):
        with CaptureQueriesContext(connection) as captured:
            schedule_messages('Hi', recipients('fake', [f'user{n}' for n in range(count)]))
        return [q['sql'] for q in captured.captured_queries if 'sitemessage_suppression' in q['sql']]

    queries(1)  # the first also asks, once a second at most, whether the list holds anything
    assert len(queries(3)) == len(queries(300)) == 1


def test_scheduling_looks_nothing_up_while_the_list_is_empty_and_sees_a_new_entry_at_once():
    def lookups(address):
        with CaptureQueriesContext(connection) as captured:
            [(_message, [dispatch])] = schedule_messages('Hi', recipients('fake', address))
        return len([q for q in captured.captured_queries if 'sitemessage_suppression' in q['sql']]), dispatch

    lookups('first')
    assert lookups('second')[0] == 0  # known empty: no query
    Suppression.objects.create(messenger='fake', address='gone', reason=Suppression.REASON_MANUAL)
    count, dispatch = lookups('gone')
    assert count == 2 and dispatch.dispatch_status == Dispatch.DISPATCH_STATUS_FAILED


def test_a_claim_checks_the_suppression_list_in_one_query_per_batch(fake_messenger):
    schedule_messages('Hi', recipients('fake', [f'user{n}' for n in range(120)]))
    Suppression.objects.create(messenger='fake', address='user7', reason=Suppression.REASON_MANUAL)

    with override_settings(SITEMESSAGE_SEND_BATCH_SIZE=50), CaptureQueriesContext(connection) as captured:
        report = send_scheduled_messages()

    lookups = [q['sql'] for q in captured.captured_queries if 'sitemessage_suppression' in q['sql']]
    assert report.batches == 3 and len(lookups) == 3
    assert (report.sent, report.failed) == (119, 1)


@override_settings(SITEMESSAGE_SUPPRESS_AFTER_FAILURES=2)
def test_an_address_the_smtp_server_refuses_twice_is_suppressed_and_never_tried_again(smtp_messenger, smtp_server):
    smtp_server.handler.refuse['gone@example.com'] = '550 5.1.1 No such user'

    for attempt in (1, 2):
        schedule_messages(f'Hi {attempt}', recipients('smtp', ['gone@example.com']))
        send_scheduled_messages()
        entry = Suppression.objects.get()
        assert (entry.failures, entry.active) == (attempt, attempt == 2)
        assert outcome('gone@example.com')[0] == FAILED
    assert entry.reason == Suppression.REASON_BOUNCE and '550' in entry.note
    refused_rcpts = len(smtp_server.handler.rcpt_log)

    schedule_messages('Hi 3', recipients('smtp', ['gone@example.com', 'ann@example.com']))
    send_scheduled_messages()

    assert len(smtp_server.handler.rcpt_log) == refused_rcpts + 1  # only ann's RCPT
    assert outcome('gone@example.com') == (FAILED, ['suppressed: bounce'])


def test_refusals_suppress_nothing_by_default(smtp_messenger, smtp_server):
    smtp_server.handler.refuse['gone@example.com'] = '550 No such user'

    for _attempt in range(3):
        schedule_messages('Hi', recipients('smtp', ['gone@example.com']))
        send_scheduled_messages()

    assert len(smtp_server.handler.rcpt_log) == 3  # tried every time, as 1.4.0 did
    assert not Suppression.objects.exists()


@override_settings(SITEMESSAGE_SUPPRESS_AFTER_FAILURES=1)
def test_a_permanent_failure_that_is_not_a_refusal_of_the_address_does_not_count(fake_messenger):
    fake_messenger.fail_addresses['ann'] = 'permanent'  # a plain reason: the message's problem, not the address'

    schedule_messages('Hi', recipients('fake', ['ann']))
    send_scheduled_messages()

    assert outcome('ann')[0] == FAILED
    assert not Suppression.objects.exists()


@override_settings(SITEMESSAGE_SUPPRESS_AFTER_FAILURES=0)
def test_a_bad_threshold_is_named_before_anything_is_sent(fake_messenger):
    schedule_messages('Hi', recipients('fake', ['ann']))

    with pytest.raises(SiteMessageConfigurationError, match='SITEMESSAGE_SUPPRESS_AFTER_FAILURES'):
        send_scheduled_messages()

    assert fake_messenger.delivered == []


# Admin -----------------------------------------------------------------------------------------------


@pytest.fixture
def admin_user(django_user_model):
    return django_user_model.objects.create_superuser('admin', email='admin@example.com')


def test_an_address_added_in_the_admin_is_suppressed_and_removing_it_sends_again(admin_client, fake_messenger):
    response = admin_client.post(
        reverse('admin:sitemessage_suppression_add'),
        {'address': 'ann', 'messenger': 'fake', 'reason': 'manual', 'active': 'on', 'note': 'asked by phone'},
    )
    assert response.status_code == 302
    schedule_messages('first', recipients('fake', ['ann']))
    assert outcome('ann') == (FAILED, ['suppressed: manual'])

    entry = Suppression.objects.get()
    response = admin_client.post(reverse('admin:sitemessage_suppression_delete', args=[entry.pk]), {'post': 'yes'})
    assert response.status_code == 302
    schedule_messages('second', recipients('fake', ['ann']))
    send_scheduled_messages()
    assert fake_messenger.delivered == [('ann', 'second')]


def test_the_admin_lists_suppressions_filtered_by_reason_and_messenger(admin_client):
    Suppression.objects.create(messenger='smtp', address='a@example.com', reason='bounce')
    Suppression.objects.create(messenger='smtp', address='b@example.com', reason='complaint')
    Suppression.objects.create(messenger='fake', address='c', reason='complaint', note='<script>x</script>')
    url = reverse('admin:sitemessage_suppression_changelist')

    def listed(**query):
        return sorted(s.address for s in admin_client.get(url, query).context['cl'].result_list)

    assert listed(reason='complaint') == ['b@example.com', 'c']
    assert listed(reason='complaint', messenger='smtp') == ['b@example.com']
    assert listed(q='a@example.com') == ['a@example.com']
    assert '<script>x' not in admin_client.get(url).content.decode()


def test_prepare_dispatches_fails_the_dispatch_of_a_suppressed_subscriber(fake_messenger):
    from sitemessage.toolbox import prepare_dispatches

    Subscription.create('ann', 'plain', 'fake')
    Subscription.create('gone', 'plain', 'fake')
    Suppression.objects.suppress([('fake', 'gone')], Suppression.REASON_UNSUBSCRIBE)
    schedule_messages('News')  # no recipients: the subscribers get it

    prepare_dispatches()
    send_scheduled_messages()

    assert outcome('gone') == (FAILED, ['suppressed: unsubscribe'])
    assert fake_messenger.delivered == [('ann', 'News')]


def test_a_custom_messenger_reports_a_refused_address_with_recipient_refused_error(fake_messenger, monkeypatch):
    # The docs' example (docs/suppression.rst): mark_failed(dispatch, RecipientRefusedError(...)).
    from sitemessage.exceptions import RecipientRefusedError

    def send(message_cls, message_model, dispatch_models):
        for dispatch in dispatch_models:
            fake_messenger.mark_failed(dispatch, RecipientRefusedError(f'{dispatch.address}: no such user'))

    monkeypatch.setattr(fake_messenger, 'send', send)  # the registered instance is shared by every test
    schedule_messages('Hi', recipients('fake', ['gone']))
    with override_settings(SITEMESSAGE_SUPPRESS_AFTER_FAILURES=1):
        send_scheduled_messages()

    entry = Suppression.objects.get()
    assert (entry.address, entry.reason, entry.active, entry.note) == ('gone', 'bounce', True, 'gone: no such user')


def test_the_suppression_list_speaks_russian():
    from django.utils import translation

    with translation.override('ru'):
        assert str(Suppression._meta.verbose_name_plural) == 'Заблокированные адреса'
        assert str(Suppression(reason='complaint').get_reason_display()) == 'Жалоба'
