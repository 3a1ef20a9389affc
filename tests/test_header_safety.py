"""Header safety: CR, LF and NUL never reach the wire as header lines, by any path (issue 9, item 3)."""

from __future__ import annotations

from email import message_from_bytes, policy
from email.utils import formataddr

import django
import pytest
from django.core.mail import EmailMessage
from django.core.mail.message import BadHeaderError
from hypothesis import HealthCheck, example, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from sitemessage.backends import EmailBackend, mime_bytes
from sitemessage.headers import UnsafeHeaderValueError
from sitemessage.messages.base import MessageBase
from sitemessage.messages.email import EmailHtmlMessage, EmailTextMessage
from sitemessage.models import Dispatch, DispatchError, Message
from sitemessage.sending import send_scheduled_messages
from sitemessage.shortcuts import schedule_email
from sitemessage.toolbox import recipients, schedule_messages
from sitemessage.utils import Recipient

pytestmark = pytest.mark.django_db

INJECTIONS = [
    'Order\r\nReply-To : x@evil.test',
    'Hi\r\n\r\nINJECTED BODY',
    'Hi\nBcc: evil@attacker.test',
    'Hi\rthere',
    'Hi\x00there',
    'Hi\x0cBcc: evil@attacker.test',
    'Hi\u2028there',
]
# Line breaks for SMTP (CR, LF), NUL, and what Python's email package also splits header lines at.
BREAKS = '\r\n\x00\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029'
UNSAFE_ADDRESSES = [
    'victim@x.test, evil@attacker.test',
    'victim@x.test\r\nBcc: evil@attacker.test',
    'victim@x.test\x00',
    'Victim <victim@x.test>; evil@attacker.test',
    'victim@x.test evil@attacker.test',
    'Victim <victim@x.test> evil@attacker.test',
]


def nothing_stored():
    return not Message.objects.exists() and not Dispatch.objects.exists()


# At the door: every scheduling path refuses, naming the field and the value ------------------------


@pytest.mark.parametrize('subject', INJECTIONS)
def test_schedule_email_refuses_an_unsafe_subject(smtp_messenger, subject):
    with pytest.raises(ValueError, match='Subject') as caught:
        schedule_email('text', 'ann@example.com', subject=subject)
    assert isinstance(caught.value, UnsafeHeaderValueError) and repr(subject) in str(caught.value)
    assert nothing_stored()


@pytest.mark.parametrize('message_cls', [EmailTextMessage, EmailHtmlMessage])
def test_schedule_messages_and_message_schedule_refuse_an_unsafe_subject(smtp_messenger, message_cls):
    to = recipients('smtp', 'ann@example.com')
    with pytest.raises(UnsafeHeaderValueError, match=r"Subject .*'Order\\r\\nReply-To : x@evil.test'"):
        schedule_messages(message_cls('Order\r\nReply-To : x@evil.test', 'text'), to)
    with pytest.raises(UnsafeHeaderValueError):
        message_cls('Hi\r\n\r\nINJECTED BODY', 'text').schedule(to)
    assert nothing_stored()


def test_bulk_scheduling_refuses_before_storing_anything(smtp_messenger):
    messages = [EmailTextMessage(f'Fine {i}', 'text') for i in range(5)] + [EmailTextMessage('Bad\nsubject', 'x')]
    with pytest.raises(UnsafeHeaderValueError, match="'Bad\\\\nsubject'"):
        schedule_messages(messages, recipients('smtp', ['ann@example.com', 'bob@example.com']))
    assert nothing_stored()


def test_a_custom_type_sent_by_email_gets_its_subject_checked(smtp_messenger):
    class Notice(MessageBase):
        alias = 'notice_for_header_test'

    with pytest.raises(UnsafeHeaderValueError, match='Subject'):
        schedule_messages(Notice({'subject': 'A\r\nB: c', 'text': 'x'}), recipients('smtp', 'ann@example.com'))
    # Not an e-mail: a subject with lines is just text.
    schedule_messages(Notice({'subject': 'two\nlines', 'text': 'x'}), recipients('fake', 'chat-1'))
    assert Message.objects.count() == 1


@pytest.mark.parametrize('address', UNSAFE_ADDRESSES)
def test_recipients_refuse_an_unsafe_email_address(smtp_messenger, address):
    with pytest.raises(UnsafeHeaderValueError, match='Address') as caught:
        recipients('smtp', address)
    assert repr(address) in str(caught.value)
    with pytest.raises(UnsafeHeaderValueError):  # a Recipient made by hand is checked when scheduled
        schedule_messages(EmailTextMessage('Hi', 'text'), [Recipient('smtp', None, address)])
    with pytest.raises(UnsafeHeaderValueError):
        schedule_email('text', address, subject='Hi')
    assert nothing_stored()


def test_one_address_in_its_usual_forms_is_accepted(smtp_messenger):
    fine = [
        'ann@example.com',
        'Ann Smith <ann@example.com>',
        '"Smith, Ann" <ann@example.com>',
        'user@bücher.example',
        '"odd local"@example.com',
    ]
    schedule_email('text', fine, subject='Hi')
    assert list(Dispatch.objects.order_by('pk').values_list('address', flat=True)) == fine


def test_other_messengers_addresses_get_only_the_line_break_check(fake_messenger):
    schedule_messages('Hi', recipients('fake', ['@channel, news', '12345678', 'me@jabber.example/res']))
    assert Dispatch.objects.count() == 3
    for address in ('chat\n1', 'chat\r1', 'chat\x001'):
        with pytest.raises(UnsafeHeaderValueError, match='messenger `fake`'):
            recipients('fake', address)


# EmailBackend: Django's BadHeaderError ------------------------------------------------------------


@pytest.mark.parametrize(
    'build',
    [
        lambda: EmailMessage('Hi\r\nBcc: evil@attacker.test', 'text', 'from@example.com', ['ann@example.com']),
        lambda: EmailMessage('Hi\x00', 'text', 'from@example.com', ['ann@example.com']),
        lambda: EmailMessage('Hi', 'text', 'from@example.com\r\nBcc: e@x.test', ['ann@example.com']),
        lambda: EmailMessage('Hi', 'text', 'from@example.com', ['victim@x.test, evil@attacker.test']),
        lambda: EmailMessage('Hi', 'text', 'from@example.com', ['ann@example.com'], cc=['c@x.test\nBcc: e@x.test']),
        lambda: EmailMessage('Hi', 'text', 'from@example.com', ['ann@example.com'], reply_to=['r@x.test\r\n']),
        lambda: EmailMessage('Hi', 'text', 'from@example.com', ['ann@example.com'], headers={'X-Tag': 'a\r\nBcc: e'}),
        lambda: EmailMessage('Hi', 'text', 'from@example.com', ['ann@example.com'], headers={'X-Tag\r\nBcc': 'a'}),
        lambda: EmailMessage('Hi', 'text', 'from@example.com', ['ann@example.com'], headers={'Bad Name': 'a'}),
    ],
    ids=['subject', 'nul', 'from', 'two-in-to', 'cc', 'reply-to', 'header-value', 'header-name', 'space-in-name'],
)
def test_email_backend_raises_bad_header_error(smtp_messenger, build):
    with pytest.raises(BadHeaderError):
        EmailBackend().send_messages([build()])
    assert nothing_stored()


# At the wire: rows written before the door existed are failed, never sent --------------------------


@pytest.mark.parametrize('subject', INJECTIONS[:3])
def test_a_stored_unsafe_subject_fails_and_sends_nothing(smtp_server, smtp_messenger, subject):
    message = Message.objects.create(
        cls='email_plain', dispatches_ready=True, context={'subject': subject, 'type': 'plain', 'stext_': 'text'}
    )
    Dispatch.objects.create(message=message, messenger='smtp', address='ann@example.com')

    report = send_scheduled_messages()

    assert report.failed == 1 and smtp_server.handler.envelopes == []
    [log] = DispatchError.objects.values_list('error_log', flat=True)
    assert repr(subject) in log


# Duplicates (item 7b) ----------------------------------------------------------------------------


def test_one_address_named_10000_times_is_sent_once(smtp_server, smtp_messenger, user):
    schedule_email('text', ['ann@example.com'] * 10_000 + [user, user, 'bob@example.com'], subject='Hi')
    assert list(Dispatch.objects.order_by('pk').values_list('address', flat=True)) == [
        'ann@example.com',
        'user1@example.com',
        'bob@example.com',
    ]
    send_scheduled_messages()
    assert sorted(e.rcpt_tos[0] for e in smtp_server.handler.envelopes) == [
        'ann@example.com',
        'bob@example.com',
        'user1@example.com',
    ]


def test_duplicates_are_dropped_per_messenger_in_bulk_too(smtp_messenger, fake_messenger):
    to = recipients('smtp', ['a@example.com', 'a@example.com']) + recipients('fake', ['a@example.com', 'x'])
    schedule_messages(['one', 'two'], to + to)
    rows = list(Dispatch.objects.order_by('pk').values_list('message_id', 'messenger', 'address'))
    first, second = sorted({row[0] for row in rows})
    per_message = [('smtp', 'a@example.com'), ('fake', 'a@example.com'), ('fake', 'x')]
    assert rows == [(first, *r) for r in per_message] + [(second, *r) for r in per_message]


def test_page_posts_without_an_address_are_not_duplicates(fake_messenger):
    schedule_messages('Hi', recipients('fake', ['', '']))
    assert Dispatch.objects.count() == 2


# Property: whatever the text, it is refused, or exactly the intended headers arrive --------------

SETTINGS = hsettings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)
TEXT = st.text(st.characters(blacklist_categories=('Cs',)), max_size=40)
NASTY = st.sampled_from(
    [
        '\r',
        '\n',
        '\r\n',
        '\x00',
        ': ',
        ',',
        ';',
        '<',
        '>',
        '"',
        ' ',
        '\t',
        'Bcc: e@x.test',
        '\u2028',
        '\x85',
        '\x0b',
        '=?utf-8?q?x?=',
        'é',
        '😀',
    ]
)
HOSTILE = st.lists(st.one_of(TEXT, NASTY), max_size=6).map(''.join)
LOCAL = st.text(st.sampled_from('abcxyz.+-_\r\n\x00,; "<>'), min_size=1, max_size=12)  # UTF-8 local parts: item 2


def fresh(smtp_server):
    Message.objects.all().delete()
    smtp_server.handler.envelopes.clear()


def arrived(smtp_server):
    [envelope] = smtp_server.handler.envelopes
    return envelope, message_from_bytes(envelope.content, policy=policy.default)


# Headers the package itself may add (List-* when the type has an unsubscribe link).
OPTIONAL = {'content-transfer-encoding', 'list-unsubscribe', 'list-unsubscribe-post', 'list-id'}


def assert_headers(mail, expected_names):
    """Each intended header exactly once, none other: nothing injected, nothing pushed into the body."""
    names = [name.lower() for name in mail.keys()]
    assert len(names) == len(set(names)), names
    assert set(expected_names) - OPTIONAL <= set(names) <= set(expected_names) | OPTIONAL, names


def decoded(value) -> str:
    return ' '.join(str(value).split())


@SETTINGS
@given(subject=HOSTILE)
def test_property_schedule_email_subject(smtp_server, smtp_messenger, subject):
    fresh(smtp_server)
    try:
        schedule_email('Body line.', 'ann@example.com', subject=subject)
    except UnsafeHeaderValueError as error:
        assert any(char in subject for char in BREAKS) and repr(subject) in str(error)
        return
    assert not any(char in subject for char in BREAKS)
    send_scheduled_messages()
    envelope, mail = arrived(smtp_server)
    assert envelope.rcpt_tos == ['ann@example.com']
    assert_headers(
        mail,
        ['from', 'to', 'subject', 'date', 'message-id', 'content-type', 'mime-version', 'content-transfer-encoding'],
    )
    if '=?' not in subject:  # text that looks like an RFC 2047 encoded word is decoded by the reader
        assert decoded(mail['Subject']) == decoded(subject or 'No Subject')
    assert mail.get_content().rstrip('\r\n') == 'Body line.'


@SETTINGS
@given(name=HOSTILE, local=LOCAL)
@example(name='.', local='x')  # an unquoted special as the whole display name: quoted on the wire
@example(name='"0', local=',')  # an unbalanced quote: all of it parsed as the address, split in two by readers
def test_property_schedule_email_address(smtp_server, smtp_messenger, name, local):
    fresh(smtp_server)
    address = f'{local}@example.com'
    to = f'{name} <{address}>' if name else address
    try:
        schedule_email('Body line.', to, subject='Hello')
    except UnsafeHeaderValueError as error:
        assert repr(to) in str(error)
        assert 'Address' in str(error)
        return
    send_scheduled_messages()
    if not smtp_server.handler.envelopes:  # not an address the messenger can send to: not sent, with a reason
        [log] = DispatchError.objects.values_list('error_log', flat=True)
        assert Dispatch.objects.get().dispatch_status in Dispatch.ERROR_STATUSES and log
        return
    envelope, mail = arrived(smtp_server)
    assert len(envelope.rcpt_tos) == 1
    assert_headers(
        mail,
        ['from', 'to', 'subject', 'date', 'message-id', 'content-type', 'mime-version', 'content-transfer-encoding'],
    )
    assert len(mail['To'].addresses) == 1 and mail['Subject'] == 'Hello'
    assert mail.get_content().rstrip('\r\n') == 'Body line.'


@SETTINGS
@given(subject=HOSTILE, name=HOSTILE, header=HOSTILE)
def test_property_email_backend(smtp_server, smtp_messenger, subject, name, header):
    fresh(smtp_server)
    sender = formataddr((name, 'from@example.com'))  # a display name quoted as a careful caller does
    message = EmailMessage(subject, 'Body line.', sender, ['ann@example.com'], headers={'X-Note': header})
    try:
        EmailBackend().send_messages([message])
    except ValueError:  # BadHeaderError, or Django/Python refusing the value while building the MIME
        assert not Message.objects.exists()
        return
    assert not any(char in subject + sender + header for char in BREAKS)  # a name may be RFC 2047-encoded
    send_scheduled_messages()
    envelope, mail = arrived(smtp_server)
    assert (envelope.mail_from, envelope.rcpt_tos) == ('from@example.com', ['ann@example.com'])
    assert_headers(
        mail,
        [
            'from',
            'to',
            'subject',
            'date',
            'message-id',
            'content-type',
            'mime-version',
            'content-transfer-encoding',
            'x-note',
        ],
    )
    if '=?' not in subject:
        assert decoded(mail['Subject']) == decoded(subject)
    if django.VERSION < (6, 1):  # 6.1's modern policy may write a ';' of an encoded name raw (its own backend too)
        assert len(mail['From'].addresses) == 1 and mail['From'].addresses[0].addr_spec == 'from@example.com'
    # The header block is what Django builds for this e-mail (Date and Message-ID are made anew each time).
    built = message_from_bytes(mime_bytes(message), policy=policy.default)
    assert [(k, v) for k, v in mail.items() if k not in ('Date', 'Message-ID')] == [
        (k, v) for k, v in built.items() if k not in ('Date', 'Message-ID')
    ]
    assert mail.get_content().rstrip('\r\n') == 'Body line.'


def test_a_stored_unsafe_subscriber_address_is_left_out_of_the_others_dispatches(smtp_messenger, caplog):
    from sitemessage.models import Subscription
    from sitemessage.toolbox import prepare_dispatches

    Subscription.create('ann@example.com', 'email_plain', 'smtp')
    Subscription.objects.create(message_cls='email_plain', messenger_cls='smtp', address='x@y.test\r\nBcc: e@z.test')
    schedule_messages(EmailTextMessage('Hi', 'text'))

    prepare_dispatches()

    assert list(Dispatch.objects.values_list('address', flat=True)) == ['ann@example.com']
    assert "'x@y.test\\r\\nBcc: e@z.test'" in caplog.text


def test_several_messages_one_by_one_are_all_checked_before_any_is_stored(smtp_messenger):
    class Grouped(EmailTextMessage):  # grouped types are scheduled one by one, not in bulk
        alias = 'grouped_for_header_test'
        group_mark = 'g'

    with pytest.raises(UnsafeHeaderValueError):
        schedule_messages([Grouped('Fine', 'a'), Grouped('Bad\r\nX: y', 'b')], recipients('smtp', 'ann@example.com'))
    assert nothing_stored()
