"""List-Id, List-Unsubscribe and List-Unsubscribe-Post on the e-mails a real SMTP server receives."""

from __future__ import annotations

import threading

import pytest
from django.db import connection
from django.db.backends.utils import CursorWrapper
from django.db.models import Q
from django.test import override_settings
from django.test.utils import CaptureQueriesContext

from sitemessage.list_id import default_list_id
from sitemessage.messages.email import EmailHtmlMessage, EmailTextMessage
from sitemessage.messengers.smtp import SMTPMessenger
from sitemessage.models import Dispatch, DispatchError, Subscription
from sitemessage.sending import send_scheduled_messages
from sitemessage.toolbox import (
    recipients,
    register_message_types,
    register_messenger_objects,
    schedule_messages,
    send_test_message,
)

pytestmark = pytest.mark.django_db

ONE_CLICK = 'List-Unsubscribe=One-Click'


def mails_by_recipient(smtp_server):
    return {str(mail['To']): mail for mail in smtp_server.handler.messages()}


@pytest.fixture
def users(django_user_model):
    return [django_user_model.objects.create_user(name, email=f'{name}@example.com') for name in ('ann', 'bob')]


@override_settings(SITEMESSAGE_SITE_URL='https://shop.example.com')
@pytest.mark.parametrize(
    'message_type, text',
    [
        (EmailTextMessage, 'Plain ASCII news'),  # the fast path for plain e-mails
        (EmailTextMessage, 'Grüße: news that needs encoding'),  # the MIME classes
        (EmailHtmlMessage, '<p>HTML news</p>'),
    ],
)
def test_one_click_only_for_recipients_holding_a_subscription(smtp_server, smtp_messenger, users, message_type, text):
    ann, bob = users
    alias = message_type.get_alias()
    Subscription.create(ann, alias, 'smtp')
    Subscription.create('sub@example.com', alias, 'smtp')
    Subscription.create(bob, 'greeting', 'smtp')  # another (registered) type: create() refuses unknown ones
    schedule_messages(
        message_type('News', text), recipients('smtp', [ann, bob, 'sub@example.com', 'explicit@example.com'])
    )

    send_scheduled_messages()

    mails = mails_by_recipient(smtp_server)
    assert {to: mail['List-Unsubscribe-Post'] for to, mail in mails.items()} == {
        'ann@example.com': ONE_CLICK,
        'sub@example.com': ONE_CLICK,
        'bob@example.com': None,
        'explicit@example.com': None,
    }
    for to, mail in mails.items():
        dispatch = Dispatch.objects.get(address=to)
        assert mail['List-Unsubscribe'].startswith(
            f'<https://shop.example.com/messages/unsubscribe/{dispatch.message_id}/{dispatch.pk}/'
        )
        assert mail['List-Id'] == f'Email notification <{alias}.shop.example.com>'


@override_settings(SITEMESSAGE_SITE_URL='http://shop.example.com')
def test_no_one_click_with_an_http_uri_rfc_8058_3_1(smtp_server, smtp_messenger, users):
    Subscription.create(users[0], 'email_plain', 'smtp')
    schedule_messages(EmailTextMessage('News', 'Hello'), recipients('smtp', users[0]))

    send_scheduled_messages()

    (mail,) = smtp_server.handler.messages()
    assert mail['List-Unsubscribe'].startswith('<http://shop.example.com/messages/unsubscribe/')
    assert mail['List-Unsubscribe-Post'] is None


@override_settings(SITEMESSAGE_SITE_URL='https://shop.example.com')
def test_no_one_click_for_a_type_users_cannot_subscribe_to(smtp_server, smtp_messenger, users):

    class Receipt(EmailTextMessage):
        alias = 'receipt'
        allow_user_subscription = False

    register_message_types(Receipt)
    Subscription.create(users[0], 'receipt', 'smtp')  # left over from before the type changed
    schedule_messages(Receipt('Your receipt', 'Thank you'), recipients('smtp', users[0]))

    send_scheduled_messages()

    (mail,) = smtp_server.handler.messages()
    assert mail['List-Unsubscribe-Post'] is None


@override_settings(SITEMESSAGE_SITE_URL='https://shop.example.com')
@pytest.mark.parametrize('shape', ['one message', 'a message each'])
def test_subscriptions_are_looked_up_once_per_batch_not_per_dispatch(
    smtp_server, smtp_messenger, django_user_model, shape
):
    people = [django_user_model.objects.create_user(f'u{n}', email=f'u{n}@example.com') for n in range(30)]
    for person in people[::2]:
        Subscription.create(person, 'email_plain', 'smtp')
    Subscription.create(people[1], 'email_html', 'smtp')  # another type: no one-click for email_plain
    if shape == 'one message':
        schedule_messages(EmailTextMessage('News', 'Hello'), recipients('smtp', people))
    else:
        for person in people:
            schedule_messages(EmailTextMessage('News', f'Hello {person}'), recipients('smtp', person))

    with CaptureQueriesContext(connection) as queries:
        send_scheduled_messages()

    lookups = [q['sql'] for q in queries.captured_queries if 'sitemessage_subscription' in q['sql']]
    assert len(lookups) == 1
    posts = {str(mail['To']): mail['List-Unsubscribe-Post'] for mail in smtp_server.handler.messages()}
    assert posts == {person.email: ONE_CLICK if index % 2 == 0 else None for index, person in enumerate(people)}


@override_settings(SITEMESSAGE_SITE_URL='https://shop.example.com')
def test_with_several_connections_subscriptions_are_found_by_the_claiming_thread(
    smtp_server, django_user_model, monkeypatch
):
    # Connection threads that queried the database would wait for the claiming thread's writes on SQLite.
    register_messenger_objects(
        SMTPMessenger('robot@example.com', host='127.0.0.1', port=smtp_server.port, timeout=5, connections=4)
    )
    people = [django_user_model.objects.create_user(f'u{n}', email=f'u{n}@example.com') for n in range(40)]
    for person in people[::2]:
        Subscription.create(person, 'email_plain', 'smtp')
    schedule_messages(EmailTextMessage('News', 'Hello'), recipients('smtp', people))
    looked_up_by = []
    execute = CursorWrapper.execute

    def spying_execute(cursor, sql, params=None):
        if 'sitemessage_subscription' in sql:
            looked_up_by.append(threading.current_thread().name)
        return execute(cursor, sql, params)

    monkeypatch.setattr(CursorWrapper, 'execute', spying_execute)
    send_scheduled_messages()

    assert looked_up_by == [threading.current_thread().name]
    posts = {str(mail['To']): mail['List-Unsubscribe-Post'] for mail in smtp_server.handler.messages()}
    assert posts == {person.email: ONE_CLICK if index % 2 == 0 else None for index, person in enumerate(people)}


@override_settings(SITEMESSAGE_SITE_URL='https://shop.example.com')
def test_a_failing_prepare_batch_is_logged_and_the_e_mails_still_go_right(smtp_server, users, caplog):

    class Unprepared(SMTPMessenger):
        def prepare_batch(self, items):
            raise RuntimeError('lookup went wrong')

    register_messenger_objects(Unprepared('robot@example.com', host='127.0.0.1', port=smtp_server.port, timeout=5))
    Subscription.create(users[0], 'email_plain', 'smtp')
    schedule_messages(EmailTextMessage('News', 'Hello'), recipients('smtp', users))

    send_scheduled_messages()

    assert 'prepare_batch() raised' in caplog.text and 'lookup went wrong' in caplog.text
    posts = {str(mail['To']): mail['List-Unsubscribe-Post'] for mail in smtp_server.handler.messages()}
    assert posts == {'ann@example.com': ONE_CLICK, 'bob@example.com': None}
    assert set(Dispatch.objects.values_list('dispatch_status', flat=True)) == {Dispatch.DISPATCH_STATUS_SENT}


def test_subscribers_found_by_the_claim_and_by_note_subscribers_agree(smtp_messenger, users):
    ann, bob = users
    Subscription.create(ann, 'email_plain', 'smtp')
    Subscription.create('sub@example.com', 'email_plain', 'smtp')
    Subscription.create('bob@example.com', 'email_plain', 'smtp')  # an address: not bob the user's subscription
    Subscription.create(bob, 'email_html', 'smtp')  # another type
    message, _ = schedule_messages(
        EmailTextMessage('News', 'Hello'), recipients('smtp', [ann, bob, 'sub@example.com', 'explicit@example.com'])
    )[0]
    expected = {dispatch.pk for dispatch in Dispatch.objects.filter(Q(recipient=ann) | Q(address='sub@example.com'))}

    unclaimed = list(Dispatch.objects.filter(message=message))
    assert {dispatch.recipient_subscribes for dispatch in unclaimed} == {None}  # not known yet
    with CaptureQueriesContext(connection) as queries:
        Dispatch.objects.note_subscribers(unclaimed)
    assert len(queries) == 1
    assert {dispatch.pk for dispatch in unclaimed if dispatch.recipient_subscribes} == expected
    assert {dispatch.recipient_subscribes for dispatch in unclaimed} == {True, False}

    with CaptureQueriesContext(connection) as queries:
        claimed = Dispatch.objects.claim(100, 60)  # found in the query that loads the batch
    assert sum('sitemessage_subscription' in query['sql'] for query in queries.captured_queries) == 1
    assert {dispatch.pk for dispatch in claimed if dispatch.recipient_subscribes} == expected


@override_settings(SITEMESSAGE_SITE_URL='https://shop.example.com')
def test_dispatches_a_project_hands_to_process_messages_are_looked_up_too(smtp_server, smtp_messenger, users):
    ann, bob = users
    Subscription.create(ann, 'email_plain', 'smtp')
    message, _ = schedule_messages(EmailTextMessage('News', 'Hello'), recipients('smtp', users))[0]
    dispatches = list(Dispatch.objects.filter(message=message))  # not claimed: nothing known of subscriptions

    smtp_messenger.process_messages({message.pk: (message, dispatches)})

    posts = {str(mail['To']): mail['List-Unsubscribe-Post'] for mail in smtp_server.handler.messages()}
    assert posts == {'ann@example.com': ONE_CLICK, 'bob@example.com': None}


@override_settings(SITEMESSAGE_SITE_URL='https://shop.example.com')
def test_a_failed_subscriber_lookup_is_logged_and_offers_no_one_click(
    smtp_server, smtp_messenger, users, caplog, monkeypatch
):
    Subscription.create(users[0], 'email_plain', 'smtp')
    message, _ = schedule_messages(EmailTextMessage('News', 'Hello'), recipients('smtp', users))[0]
    dispatches = list(Dispatch.objects.filter(message=message))

    def broken(self, found):
        raise RuntimeError('the database went away')

    monkeypatch.setattr(type(Dispatch.objects.all()), 'note_subscribers', broken)
    smtp_messenger.process_messages({message.pk: (message, dispatches)})

    assert 'Could not find which recipients subscribe' in caplog.text and 'the database went away' in caplog.text
    posts = {str(mail['To']): mail['List-Unsubscribe-Post'] for mail in smtp_server.handler.messages()}
    assert posts == {'ann@example.com': None, 'bob@example.com': None}  # delivered, without a one-click
    assert set(Dispatch.objects.values_list('dispatch_status', flat=True)) == {Dispatch.DISPATCH_STATUS_SENT}


def test_no_list_headers_on_a_test_message(smtp_server, smtp_messenger):
    send_test_message('smtp', to='probe@example.com')

    (mail,) = smtp_server.handler.messages()
    assert (mail['List-Id'], mail['List-Unsubscribe'], mail['List-Unsubscribe-Post']) == (None, None, None)


# List-Id (RFC 2919) --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    'site, title, alias, expected',
    [
        ('https://shop.example.com', 'News', 'news', 'News <news.shop.example.com>'),
        ('https://shop.example.com:8443/sub/', 'News', 'News Letter!', 'News <news-letter!.shop.example.com>'),
        ('https://bücher.example', 'Bücher', 'books', '=?utf-8?q?B=C3=BCcher?= <books.xn--bcher-kva.example>'),
        ('http://127.0.0.1:8000', 'A "quoted" title', 'x', '"A \\"quoted\\" title" <x.localhost>'),
        (
            'https://shop.example.com',
            'Evil\r\nBcc: x@evil.test',
            'evil\r\nx',
            '"Evil Bcc: x@evil.test" <evil-x.shop.example.com>',
        ),
        ('https://shop.example.com', '', '<>', '<sitemessage.shop.example.com>'),
    ],
)
def test_default_list_id_is_always_one_valid_ascii_line(site, title, alias, expected):
    with override_settings(SITEMESSAGE_SITE_URL=site):
        assert default_list_id(title, alias) == expected


@override_settings(SITEMESSAGE_SITE_URL='https://shop.example.com')
def test_a_message_type_names_its_own_list_or_none(smtp_server, smtp_messenger):

    class Digest(EmailTextMessage):
        alias = 'digest'

        @classmethod
        def get_list_id(cls):
            return 'Weekly digest <weekly.lists.example.com>'

    class Quiet(EmailTextMessage):
        alias = 'quiet'

        @classmethod
        def get_list_id(cls):
            return ''

    register_message_types(Digest, Quiet)
    schedule_messages(Digest('Digest', 'Hello'), recipients('smtp', 'a@example.com'))
    schedule_messages(Quiet('Quiet', 'Hello'), recipients('smtp', 'b@example.com'))

    send_scheduled_messages()

    mails = mails_by_recipient(smtp_server)
    assert mails['a@example.com']['List-Id'] == 'Weekly digest <weekly.lists.example.com>'
    assert mails['b@example.com']['List-Id'] is None


@override_settings(SITEMESSAGE_SITE_URL='https://shop.example.com')
def test_a_list_id_that_could_inject_headers_fails_its_dispatches_alone(smtp_server, smtp_messenger):

    class Broken(EmailTextMessage):
        alias = 'broken'

        @classmethod
        def get_list_id(cls):
            return 'x <a.b>\r\nBcc: victim@example.com'

    register_message_types(Broken)
    schedule_messages(Broken('Broken', 'Hello'), recipients('smtp', 'a@example.com'))
    schedule_messages(EmailTextMessage('Fine', 'Hello'), recipients('smtp', 'b@example.com'))

    send_scheduled_messages()

    assert list(mails_by_recipient(smtp_server)) == ['b@example.com']
    broken = Dispatch.objects.get(address='a@example.com')
    assert broken.dispatch_status == Dispatch.DISPATCH_STATUS_ERROR
    (error,) = DispatchError.objects.filter(dispatch=broken).values_list('error_log', flat=True)
    assert "broken.get_list_id() returned 'x <a.b>\\r\\nBcc: victim@example.com'" in error
