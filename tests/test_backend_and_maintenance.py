"""The Django e-mail backend, cleanup of sent messages, and the scheduling shortcuts."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.core.mail import EmailMessage, EmailMultiAlternatives, send_mail
from django.db import connection
from django.test.utils import CaptureQueriesContext, override_settings
from django.utils import timezone

from sitemessage.backends import EmailBackend
from sitemessage.maintenance import cleanup_sent_messages
from sitemessage.models import Dispatch, Message
from sitemessage.sending import send_scheduled_messages
from sitemessage.shortcuts import (
    schedule_facebook_message,
    schedule_jabber_message,
    schedule_telegram_message,
    schedule_tweet,
    schedule_vkontakte_message,
)
from sitemessage.toolbox import recipients, register_messenger_objects, schedule_messages
from tests.fakes import FakeMessenger

pytestmark = pytest.mark.django_db

SENT = Dispatch.DISPATCH_STATUS_SENT
BACKEND = override_settings(EMAIL_BACKEND='sitemessage.backends.EmailBackend')
# The 1.4.0 way (a type named by SITEMESSAGE_SHORTCUT_EMAIL_MESSAGE_TYPE, one dispatch per recipient) is kept
# for projects that set it; the default queues Django's own MIME (tests/test_email_backend.py).
LEGACY = override_settings(SITEMESSAGE_SHORTCUT_EMAIL_MESSAGE_TYPE='email_html')


def content_of(part):
    return part.get_content().replace('\r\n', '\n')


# EmailBackend ------------------------------------------------------------------------------------


@LEGACY
@BACKEND
def test_send_mail_schedules_an_html_email(smtp_messenger):
    count = send_mail('Welcome', 'Hello there', 'from@example.com', ['to@example.com'])

    assert count == 1
    [message] = Message.objects.all()
    assert message.cls == 'email_html'
    assert message.context['subject'] == 'Welcome'
    assert message.context['contents'] == '<p>Hello there</p>'
    assert list(message.dispatch_set.values_list('messenger', 'address')) == [('smtp', 'to@example.com')]


@LEGACY
@BACKEND
def test_plain_text_body_is_escaped_and_keeps_line_breaks(smtp_messenger):
    send_mail('Hi', 'Dear <script>alert(1)</script> & co,\nsecond line', 'from@example.com', ['to@example.com'])

    contents = Message.objects.get().context['contents']
    assert '<script>' not in contents
    assert '&lt;script&gt;alert(1)&lt;/script&gt; &amp; co,' in contents
    assert '<br>second line' in contents


@LEGACY
@BACKEND
def test_html_message_alternative_is_used_as_is(smtp_messenger):
    html = '<p>Hi <b>there</b></p>'
    send_mail('Hi', 'Hi there', 'from@example.com', ['to@example.com'], html_message=html)

    assert Message.objects.get().context['contents'] == html


@LEGACY
@BACKEND
def test_html_body_is_used_as_is(smtp_messenger):
    message = EmailMessage('Hi', '<p>Already <i>html</i></p>', to=['to@example.com'])
    message.content_subtype = 'html'
    message.send()

    assert Message.objects.get().context['contents'] == '<p>Already <i>html</i></p>'


def test_no_messages_return_zero(smtp_messenger):
    assert EmailBackend().send_messages([]) == 0
    assert EmailBackend().send_messages(None) == 0
    assert EmailBackend().send_messages([EmailMessage('No one', 'text')]) == 0
    assert not Message.objects.exists()


@LEGACY
@BACKEND
def test_cc_and_bcc_are_recipients_too(smtp_messenger):
    EmailMultiAlternatives(
        'Hi', 'text', 'from@example.com', ['to@example.com'], cc=['cc@example.com'], bcc=['bcc@example.com']
    ).send()

    assert sorted(Dispatch.objects.values_list('address', flat=True)) == [
        'bcc@example.com',
        'cc@example.com',
        'to@example.com',
    ]


@override_settings(SITEMESSAGE_EMAIL_BACKEND_MESSAGES_PRIORITY=7)
@BACKEND
def test_backend_uses_the_configured_priority(smtp_messenger):
    send_mail('Hi', 'text', 'from@example.com', ['to@example.com'])

    assert Message.objects.get().priority == 7


@LEGACY
@BACKEND
def test_mail_from_the_backend_is_delivered_by_the_queue(smtp_server, smtp_messenger):
    send_mail('Password reset', 'Hello <Mallory>,\nclick below.', 'from@example.com', ['to@example.com'])

    report = send_scheduled_messages()

    assert report.sent == 1
    [message] = smtp_server.handler.messages()
    assert message['Subject'] == 'Password reset'
    assert message['To'] == 'to@example.com'
    html = content_of(message.get_body(('html',)))
    assert 'Hello &lt;Mallory&gt;,<br>click below.' in html
    assert '<Mallory>' not in html
    text = content_of(message.get_body(('plain',)))
    assert 'Hello <Mallory>,\nclick below.' in text


# cleanup_sent_messages ---------------------------------------------------------------------------


def scheduled(text, addresses):
    message, _ = schedule_messages(text, recipients('fake', addresses))[0]
    return message


def mark_sent(message, days_ago=0, **filters):
    message.dispatch_set.filter(**filters).update(
        dispatch_status=SENT, time_dispatched=timezone.now() - timedelta(days=days_ago)
    )


def test_cleanup_deletes_sent_dispatches_and_messages_left_empty():
    sent = scheduled('sent', ['a', 'b'])
    mark_sent(sent)
    partly = scheduled('partly', ['c', 'd'])
    mark_sent(partly, address='c')
    errors = scheduled('errors', ['e', 'f'])
    errors.dispatch_set.filter(address='e').update(dispatch_status=Dispatch.DISPATCH_STATUS_ERROR)
    errors.dispatch_set.filter(address='f').update(dispatch_status=Dispatch.DISPATCH_STATUS_FAILED)

    deleted = cleanup_sent_messages()

    assert deleted == 3
    assert set(Message.objects.values_list('pk', flat=True)) == {partly.pk, errors.pk}
    assert sorted(Dispatch.objects.values_list('address', flat=True)) == ['d', 'e', 'f']


def test_cleanup_ago_keeps_recent_dispatches():
    old = scheduled('old', 'old')
    mark_sent(old, days_ago=10)
    recent = scheduled('recent', 'recent')
    mark_sent(recent, days_ago=1)

    assert cleanup_sent_messages(ago=5) == 1

    assert list(Dispatch.objects.values_list('address', flat=True)) == ['recent']
    assert list(Message.objects.values_list('pk', flat=True)) == [recent.pk]
    assert cleanup_sent_messages(ago='0') == 1


def test_cleanup_rejects_a_bad_ago():
    with pytest.raises(ValueError, match="'soon'"):
        cleanup_sent_messages(ago='soon')


def test_cleanup_dispatches_only_keeps_messages():
    sent = scheduled('sent', ['a', 'b'])
    mark_sent(sent)

    assert cleanup_sent_messages(dispatches_only=True) == 2

    assert not Dispatch.objects.exists()
    assert list(Message.objects.values_list('pk', flat=True)) == [sent.pk]


@override_settings(SITEMESSAGE_CLEANUP_BATCH_SIZE=2)
def test_cleanup_works_in_batches():
    messages = [scheduled(f'text {n}', [f'a{n}', f'b{n}']) for n in range(3)]
    for message in messages:
        mark_sent(message)
    keeper = scheduled('keeper', ['sent', 'pending'])
    mark_sent(keeper, address='sent')

    assert cleanup_sent_messages() == 7

    assert list(Message.objects.values_list('pk', flat=True)) == [keeper.pk]
    assert list(Dispatch.objects.values_list('address', flat=True)) == ['pending']


@override_settings(SITEMESSAGE_CLEANUP_BATCH_SIZE=2)
def test_cleanup_deletes_one_bounded_batch_at_a_time():
    for n in range(5):
        mark_sent(scheduled(f'text {n}', f'a{n}'))

    with CaptureQueriesContext(connection) as context:
        assert cleanup_sent_messages() == 5

    deletes = [
        q['sql']
        for q in context.captured_queries
        if q['sql'].replace('`', '"').startswith('DELETE FROM "sitemessage_dispatch" ')
    ]
    assert len(deletes) == 3  # batches of 2, 2 and 1
    assert not Dispatch.objects.exists() and not Message.objects.exists()


# Shortcuts ---------------------------------------------------------------------------------------


@pytest.fixture
def social_messengers():
    aliases = ['xmppsleek', 'twitter', 'telegram', 'fb', 'vk']
    messengers = [type(f'Fake_{alias}', (FakeMessenger,), {'alias': alias})() for alias in aliases]
    register_messenger_objects(*messengers)
    return {messenger.get_alias(): messenger for messenger in messengers}


@pytest.mark.parametrize(
    'shortcut, args, alias, address',
    [
        (schedule_jabber_message, ('someone@jabber.example',), 'xmppsleek', 'someone@jabber.example'),
        (schedule_tweet, (), 'twitter', ''),
        (schedule_tweet, ('@idle',), 'twitter', '@idle'),
        (schedule_telegram_message, ('12345',), 'telegram', '12345'),
        (schedule_facebook_message, (), 'fb', ''),
        (schedule_vkontakte_message, ('-1234',), 'vk', '-1234'),
    ],
)
def test_shortcuts_schedule_to_their_messenger(social_messengers, shortcut, args, alias, address):
    assert shortcut('Hello world', *args, priority=3) is None

    [dispatch] = Dispatch.objects.select_related('message')
    assert (dispatch.messenger, dispatch.address) == (alias, address)
    assert dispatch.message.cls == 'plain'
    assert dispatch.message.priority == 3

    send_scheduled_messages()

    assert social_messengers[alias].delivered == [(address, 'Hello world')]


def test_shortcut_accepts_a_list_of_messages(social_messengers):
    schedule_telegram_message(['one', 'two'], '42')

    assert sorted(Message.objects.values_list('context', flat=True), key=str) == [
        {'stext_': 'one', 'tpl': None, 'use_tpl': False},
        {'stext_': 'two', 'tpl': None, 'use_tpl': False},
    ]
    assert Dispatch.objects.filter(messenger='telegram', address='42').count() == 2
