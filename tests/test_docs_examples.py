"""Every example of the user documentation, run as written.

Each test repeats the documented code: the same imports, calls and keyword names. Where the docs
leave a placeholder (``user1_model = ...``, ``host='smtp.host.com'``) the test puts a real user or
the local SMTP server in its place. Examples for a messenger whose module does not exist yet are
skipped, naming the module.
"""

from __future__ import annotations

import importlib.util
import re
import ssl
from datetime import timedelta
from io import StringIO
from urllib.parse import urlsplit

import pytest
from django.core.management import call_command
from django.test import override_settings
from django.utils import timezone

from sitemessage.exceptions import SiteMessageConfigurationError, UnknownMessageTypeError, UnknownMessengerError
from sitemessage.messengers.base import MessengerBase
from sitemessage.models import Dispatch, Message, Subscription
from sitemessage.toolbox import get_sitemessage_urls
from sitemessage.utils import Recipient
from tests.certificates import self_signed
from tests.fakes import FakeMessenger
from tests.smtp_handlers import loopback_controller

pytestmark = pytest.mark.django_db

SENT = Dispatch.DISPATCH_STATUS_SENT
PENDING = Dispatch.DISPATCH_STATUS_PENDING

# "Bundled views": the docs attach the URLs to a project's urls.py exactly like this.
urlpatterns = []
urlpatterns += get_sitemessage_urls()  # Attaching sitemessage URLs.


def needs_messenger(module: str):
    """Skip a test whose documented example uses ``sitemessage.messengers.<module>`` while it is missing."""
    missing = importlib.util.find_spec(f'sitemessage.messengers.{module}') is None
    return pytest.mark.skipif(missing, reason=f'sitemessage.messengers.{module} does not exist yet')


def construct(factory):
    """Build a messenger; skip when only its optional third-party library is missing here."""
    try:
        return factory()
    except SiteMessageConfigurationError as error:
        pytest.skip(f'optional library of the messenger is not installed: {error}')


class JabberStandIn(FakeMessenger):
    """Takes the ``xmppsleek`` alias where no XMPP server runs, so XMPP examples can be delivered."""

    alias = 'xmppsleek'
    title = 'XMPP'
    address_attr = 'jabber'


def html_of(mail) -> str:
    return mail.get_body(('html',)).get_content()


def text_of(mail) -> str:
    return mail.get_body(('plain',)).get_content()


def mails_by_recipient(smtp_server) -> dict:
    return {mail['To']: mail for mail in smtp_server.handler.messages()}


def statuses() -> list:
    return list(Dispatch.objects.order_by('pk').values_list('address', 'dispatch_status'))


# A STARTTLS server with AUTH, for the examples that configure ``use_tls=True`` and a login ---------


class AuthMailbox:
    def __init__(self):
        self.envelopes = []  # (authenticated login, TLS used, envelope)
        self.logins = []

    async def handle_DATA(self, server, session, envelope):
        self.envelopes.append((self.logins[-1] if session.authenticated else None, session.ssl is not None, envelope))
        return '250 Message accepted for delivery'


@pytest.fixture(scope='module')
def tls_smtp_server(tmp_path_factory):
    from aiosmtpd.smtp import AuthResult, LoginPassword

    folder = tmp_path_factory.mktemp('tls')
    cert, key = self_signed(folder, 'server', '127.0.0.1', san='IP:127.0.0.1')
    tls_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls_context.load_cert_chain(cert, key)
    mailbox = AuthMailbox()

    def authenticator(server, session, envelope, mechanism, auth_data):
        valid = isinstance(auth_data, LoginPassword) and (auth_data.login, auth_data.password) == (
            b'user1',
            b'user1password',
        )
        if valid:
            mailbox.logins.append(auth_data.login.decode())
        return AuthResult(success=valid)

    controller = loopback_controller(
        mailbox, tls_context=tls_context, require_starttls=True, authenticator=authenticator, auth_require_tls=True
    )
    controller.start()
    controller.cert_file = str(cert)
    yield controller
    controller.stop()


@pytest.fixture
def tls_smtp(tls_smtp_server, monkeypatch):
    """The STARTTLS server, with its self-signed certificate trusted by this test's TLS clients."""
    monkeypatch.setenv('SSL_CERT_FILE', tls_smtp_server.cert_file)
    tls_smtp_server.handler.envelopes.clear()
    tls_smtp_server.handler.logins.clear()
    return tls_smtp_server


# 3.1 Quickstart ------------------------------------------------------------------------------------


def quickstart_message_type():
    from sitemessage.messages.base import MessageBase
    from sitemessage.toolbox import register_message_types

    # Or you may want to define your own message type for further usage.
    class MyMessage(MessageBase):
        alias = 'myxmpp'
        supported_messengers = ['xmppsleek']

        @classmethod
        def create(cls, message: str):
            cls(message).schedule(
                cls.recipients(
                    'xmppsleek',
                    [
                        'a@some.tld',
                        'b@some.tld',
                    ],
                )
            )

    register_message_types(MyMessage)
    return MyMessage


def test_quickstart_smtp_messenger_logs_in_over_starttls_and_delivers(tls_smtp, user):
    from sitemessage.messengers.smtp import SMTPMessenger
    from sitemessage.shortcuts import schedule_email
    from sitemessage.toolbox import register_messenger_objects, send_scheduled_messages

    register_messenger_objects(
        SMTPMessenger('user1@host.com', 'user1', 'user1password', host='127.0.0.1', port=tls_smtp.port, use_tls=True),
    )
    schedule_email('Email from sitemessage.', [user, 'user2@host.com'])

    report = send_scheduled_messages()

    assert report.sent == 2
    received = sorted((login, tls, env.mail_from, env.rcpt_tos) for login, tls, env in tls_smtp.handler.envelopes)
    assert received == [
        ('user1', True, 'user1@host.com', ['user1@example.com']),
        ('user1', True, 'user1@host.com', ['user2@host.com']),
    ]
    assert all(b'Email from sitemessage.' in env.content for _login, _tls, env in tls_smtp.handler.envelopes)


@needs_messenger('xmpp')
def test_quickstart_registers_smtp_and_xmpp_messengers():
    from sitemessage.messengers.smtp import SMTPMessenger
    from sitemessage.messengers.xmpp import XMPPSleekMessenger
    from sitemessage.toolbox import get_registered_messenger_object, register_messenger_objects

    xmpp = construct(lambda: XMPPSleekMessenger('user1@jabber.host.com', 'user1password', 'jabber.host.com'))
    # We register two messengers to deliver emails and jabber messages.
    register_messenger_objects(
        SMTPMessenger('user1@host.com', 'user1', 'user1password', host='smtp.host.com', use_tls=True),
        xmpp,
    )

    assert get_registered_messenger_object('xmppsleek') is xmpp
    assert get_registered_messenger_object('smtp').host == 'smtp.host.com'


def test_quickstart_own_message_type_create_schedules_and_delivers_to_both_addresses():
    from sitemessage.toolbox import register_messenger_objects, send_scheduled_messages

    jabber = JabberStandIn()
    register_messenger_objects(jabber)
    MyMessage = quickstart_message_type()

    MyMessage.create('Hi there!')
    send_scheduled_messages()

    assert Message.objects.get().cls == 'myxmpp'
    assert sorted(jabber.delivered) == [('a@some.tld', 'Hi there!'), ('b@some.tld', 'Hi there!')]


def test_quickstart_view_schedules_email_jabber_and_own_type(smtp_messenger, smtp_server, user, rf):
    from sitemessage.shortcuts import schedule_email, schedule_jabber_message
    from sitemessage.toolbox import register_messenger_objects, send_scheduled_messages

    jabber = JabberStandIn()
    register_messenger_objects(jabber)
    MyMessage = quickstart_message_type()

    def send_messages_view(request):
        # Suppose `user_model` is a recipient User Model instance.
        user1_model = user

        # Schedule both email and jabber messages to delivery.
        schedule_email('Email from sitemessage.', [user1_model, 'user2@host.com'])
        schedule_jabber_message('Jabber message from sitetree', ['user1@jabber.host.com', 'user2@jabber.host.com'])

        # Or if you want to send your message type:
        MyMessage.create('Hi there!')

    send_messages_view(rf.get('/'))
    report = send_scheduled_messages()

    assert report.sent == 6
    mails = mails_by_recipient(smtp_server)
    assert sorted(mails) == ['user1@example.com', 'user2@host.com']
    assert text_of(mails['user2@host.com']).strip() == 'Email from sitemessage.'
    assert sorted(jabber.delivered) == [
        ('a@some.tld', 'Hi there!'),
        ('b@some.tld', 'Hi there!'),
        ('user1@jabber.host.com', 'Jabber message from sitetree'),
        ('user2@jabber.host.com', 'Jabber message from sitetree'),
    ]


# 3.2 Toolbox -----------------------------------------------------------------------------------------


@needs_messenger('xmpp')
def test_toolbox_recipients_by_alias_and_class_add_up(smtp_messenger, user):
    from sitemessage.messengers.smtp import SMTPMessenger
    from sitemessage.messengers.xmpp import XMPPSleekMessenger
    from sitemessage.toolbox import recipients

    # The first argument could be Messenger alias:
    my_smtp_recipients = (recipients('smtp', ['user1@host.com', 'user2@host.com']),)

    # or a Messenger class itself:
    my_jabber_recipients = (recipients(XMPPSleekMessenger, ['user1@jabber.host.com', 'user2@jabber.host.com']),)

    # Second arguments accepts either Django User model instance or an actual address:
    user1_model = user
    my_smtp_recipients = recipients(SMTPMessenger, [user1_model, 'user2@host.com'])

    # You can also merge recipients from several messengers:
    my_recipients = my_smtp_recipients + my_jabber_recipients

    assert list(my_recipients) == [
        Recipient('smtp', user, 'user1@example.com'),
        Recipient('smtp', None, 'user2@host.com'),
        Recipient('xmppsleek', None, 'user1@jabber.host.com'),
        Recipient('xmppsleek', None, 'user2@jabber.host.com'),
    ]


def test_toolbox_trailing_comma_recipients_schedule_and_merge_with_plus(smtp_messenger, user):
    from sitemessage.messengers.smtp import SMTPMessenger
    from sitemessage.toolbox import recipients, schedule_messages

    # The docs write these with a trailing comma, which makes 1-tuples.
    my_smtp_recipients = (recipients('smtp', ['user1@host.com', 'user2@host.com']),)
    my_fake_recipients = (recipients(FakeMessenger, ['fake-1', 'fake-2']),)
    assert isinstance(my_smtp_recipients, tuple)
    ((first, _dispatches),) = schedule_messages('to a tuple', my_smtp_recipients)

    my_smtp_recipients = recipients(SMTPMessenger, [user, 'user2@host.com'])
    my_recipients = my_smtp_recipients + my_fake_recipients
    ((second, _dispatches),) = schedule_messages('to merged recipients', my_recipients)

    def targets(message):
        return list(message.dispatch_set.order_by('pk').values_list('messenger', 'address', 'recipient'))

    assert targets(first) == [('smtp', 'user1@host.com', None), ('smtp', 'user2@host.com', None)]
    assert targets(second) == [
        ('smtp', 'user1@example.com', user.pk),
        ('smtp', 'user2@host.com', None),
        ('fake', 'fake-1', None),
        ('fake', 'fake-2', None),
    ]


def test_toolbox_schedule_messages_email_html_text_and_dict_with_sender(smtp_messenger, smtp_server, user, rf):
    # Let's import a built-in message type class we'll use.
    from sitemessage.messages import EmailHtmlMessage
    from sitemessage.toolbox import recipients, schedule_messages, send_scheduled_messages

    request = rf.get('/')
    request.user = user

    schedule_messages(
        # You can pass one or several message objects:
        [
            # The first param of this Message Type is `subject`. The second may be either an html itself:
            EmailHtmlMessage('Message subject 1', '<html><head></head><body>Some <b>text</b></body></html>'),
            # or a dictionary
            EmailHtmlMessage('Message subject 2', {'title': 'My message', 'entry': 'Some text.'}),
            # NOTE: Different Message Types may expect different arguments.
        ],
        # The same applies to recipients: add one or many as required:
        recipients('smtp', ['user1@host.com', 'user2@host.com']),
        # It's useful sometimes to know message sender in terms of Django users:
        sender=request.user,
    )

    assert [(m.cls, m.sender) for m in Message.objects.order_by('pk')] == [('email_html', user), ('email_html', user)]
    assert send_scheduled_messages().sent == 4
    mails = smtp_server.handler.messages()
    assert sorted((m['To'], m['Subject']) for m in mails) == [
        ('user1@host.com', 'Message subject 1'),
        ('user1@host.com', 'Message subject 2'),
        ('user2@host.com', 'Message subject 1'),
        ('user2@host.com', 'Message subject 2'),
    ]
    by_subject = {m['Subject']: m for m in mails}
    assert 'Some <b>text</b>' in html_of(by_subject['Message subject 1'])
    assert text_of(by_subject['Message subject 1']).strip() == 'Some text'
    # A dict goes through the shipped sitemessage/messages/email_html__smtp.html template.
    assert '<title>Message subject 2</title>' in html_of(by_subject['Message subject 2'])


def test_toolbox_send_test_message_reaches_the_smtp_server(smtp_messenger, smtp_server):
    from sitemessage.toolbox import send_test_message

    send_test_message('smtp', to='someone@example.com')

    (mail,) = smtp_server.handler.messages()
    assert mail['To'] == 'someone@example.com'
    assert 'Test message from sitemessages.' in text_of(mail)


def test_toolbox_probe_command_reaches_the_smtp_server(smtp_messenger, smtp_server):
    out = StringIO()

    call_command('sitemessage_probe', 'smtp', '--to', 'someone@example.com', stdout=out)

    assert [env.rcpt_tos for env in smtp_server.handler.envelopes] == [['someone@example.com']]
    assert out.getvalue().startswith('Sending test message using smtp ...\n')
    assert out.getvalue().endswith('Probing done.\n')


class GhostMessenger(MessengerBase):
    """A messenger that scheduled messages name, but that is not registered (configured)."""

    alias = 'ghost'


def schedule_for_known_and_unknown_targets(unknown_type=True):
    """One dispatch each: deliverable, for an unknown messenger, and (optionally) of an unknown message type."""
    from sitemessage.messages.base import MessageBase
    from sitemessage.toolbox import recipients, register_message_types, schedule_messages

    class Vanishing(MessageBase):
        alias = 'vanishing'

    register_message_types(Vanishing)
    schedule_messages('deliverable', recipients('smtp', 'known@example.com'))
    schedule_messages('ghostly', recipients(GhostMessenger, 'nobody'))
    if not unknown_type:
        return
    schedule_messages(Vanishing('of a type gone'), recipients('smtp', 'typeless@example.com'))
    from sitemessage.toolbox import get_registered_message_types

    del get_registered_message_types()['vanishing']  # e.g. the type was removed from the project


def test_toolbox_send_scheduled_messages_raises_unknown_messenger_after_sending_the_rest(smtp_messenger, smtp_server):
    from sitemessage.toolbox import send_scheduled_messages

    schedule_for_known_and_unknown_targets(unknown_type=False)

    # Note that this might eventually raise UnknownMessengerError,
    # UnknownMessageTypeError exceptions.
    with pytest.raises(UnknownMessengerError, match='`ghost`'):
        send_scheduled_messages()

    assert [env.rcpt_tos for env in smtp_server.handler.envelopes] == [['known@example.com']]
    assert statuses() == [('known@example.com', SENT), ('nobody', PENDING)]


def test_toolbox_send_scheduled_messages_raises_unknown_message_type(smtp_messenger, smtp_server):
    from sitemessage.toolbox import send_scheduled_messages

    schedule_for_known_and_unknown_targets()

    with pytest.raises(UnknownMessageTypeError, match='vanishing'):
        send_scheduled_messages(ignore_unknown_messengers=True)

    assert statuses() == [('known@example.com', SENT), ('nobody', PENDING), ('typeless@example.com', PENDING)]


def test_toolbox_send_scheduled_messages_ignoring_unknowns_sends_the_rest_and_keeps_them_queued(
    smtp_messenger, smtp_server
):
    from sitemessage.toolbox import send_scheduled_messages

    schedule_for_known_and_unknown_targets()

    send_scheduled_messages(ignore_unknown_messengers=True, ignore_unknown_message_types=True)

    assert [env.rcpt_tos for env in smtp_server.handler.envelopes] == [['known@example.com']]
    assert statuses() == [('known@example.com', SENT), ('nobody', PENDING), ('typeless@example.com', PENDING)]
    assert not Dispatch.objects.filter(claim_token__isnull=False).exists()


def test_toolbox_send_scheduled_messages_with_priority_sends_only_that_priority(smtp_messenger, smtp_server):
    from sitemessage.toolbox import recipients, schedule_messages, send_scheduled_messages

    schedule_messages('urgent', recipients('smtp', 'urgent@example.com'), priority=10)
    schedule_messages('routine', recipients('smtp', 'routine@example.com'))

    # To send only messages of a certain priority use `priority` argument.
    send_scheduled_messages(priority=10)

    assert [env.rcpt_tos for env in smtp_server.handler.envelopes] == [['urgent@example.com']]
    assert statuses() == [('urgent@example.com', SENT), ('routine@example.com', PENDING)]


def sent_dispatches_dated(*ages_by_message):
    """Create one message per item, with a sent dispatch dispatched that many days ago per age."""
    from sitemessage.toolbox import recipients, schedule_messages

    messages = []
    for index, ages in enumerate(ages_by_message):
        addresses = [f'm{index}-{n}' for n in range(len(ages))]
        ((message, _dispatches),) = schedule_messages(f'message {index}', recipients('fake', addresses))
        for address, age in zip(addresses, ages):
            if age is not None:
                Dispatch.objects.filter(message=message, address=address).update(
                    dispatch_status=SENT, time_dispatched=timezone.now() - timedelta(days=age)
                )
        messages.append(message)
    return messages


def test_toolbox_cleanup_sent_messages_by_age_then_all():
    from sitemessage.toolbox import cleanup_sent_messages

    # Message 0: sent 10 and 1 days ago; message 1: sent 10 days ago; message 2: pending.
    old_and_new, old_only, pending = sent_dispatches_dated((10, 1), (10,), (None,))

    # Remove all dispatches (but not messages) 5 days old.
    cleanup_sent_messages(ago=5, dispatches_only=True)

    assert sorted(Dispatch.objects.values_list('address', flat=True)) == ['m0-1', 'm2-0']
    assert Message.objects.count() == 3

    # Delete all sent messages and dispatches.
    cleanup_sent_messages()

    assert list(Dispatch.objects.values_list('address', flat=True)) == ['m2-0']
    assert not Message.objects.filter(pk=old_and_new.pk).exists()
    assert Message.objects.filter(pk=pending.pk).exists()
    # A message left without dispatches by an earlier dispatches-only cleanup is not touched.
    assert Message.objects.filter(pk=old_only.pk).exists()


def test_toolbox_cleanup_command_removes_dispatches_and_messages_sent_days_ago():
    old, recent = sent_dispatches_dated((6,), (1,))
    out = StringIO()

    call_command('sitemessage_cleanup', '--ago', '5', stdout=out)

    assert out.getvalue() == 'Cleaning up dispatches and messages sent 5 days ago ...\nCleanup done.\n'
    assert list(Message.objects.values_list('pk', flat=True)) == [recent.pk]


def test_toolbox_email_backend_turns_send_mail_into_scheduled_email(smtp_messenger, smtp_server):
    from django.core.mail import send_mail

    from sitemessage.toolbox import send_scheduled_messages

    with override_settings(EMAIL_BACKEND='sitemessage.backends.EmailBackend'):
        count = send_mail('Your order', 'Order <42> is on its way.', 'shop@example.com', ['buyer@example.com'])

    assert count == 1
    assert smtp_server.handler.envelopes == []  # scheduled, not sent
    assert Message.objects.get().cls == 'email_django'  # 2.0: queued as Django built it (was email_html)
    send_scheduled_messages()
    (mail,) = smtp_server.handler.messages()
    assert (mail['To'], mail['Subject'], mail['From']) == ('buyer@example.com', 'Your order', 'shop@example.com')
    assert mail.get_content().rstrip() == 'Order <42> is on its way.'  # the text as written, not in HTML


# 3.3 Messages ----------------------------------------------------------------------------------------


def documented_message_type():
    from django.utils import timezone

    from sitemessage.messages.base import MessageBase
    from sitemessage.toolbox import register_message_types

    class MyMessage(MessageBase):
        # Message types could be addressed by aliases.
        alias = 'mymessage'

        # Message type title to show up in UI
        title = 'Super message'

        # Define a template path to build messages from.
        template = 'mymessages/mymessage.html'

        # Define a send retry limit for that message type.
        send_retry_limit = 10

        # If we don't want users to subscribe for messages of this type
        # (see get_user_preferences_for_ui()) we just forbid such subscriptions.
        allow_user_subscription = False

        def __init__(self, text, date):
            # Calling base class __init__ and passing message context
            super(MyMessage, self).__init__({'text': text, 'date': date})

        @classmethod
        def get_template_context(cls, context):
            """Here we can add some data into template context right before rendering."""
            context.update({'greeting': 'Hi!'})
            return context

        @classmethod
        def create(cls, text):
            """Let it be an alternative constructor - kind of a shortcut."""

            # This recipient list is comprised of users subscribed to this message type.
            recipients = cls.get_subscribers()

            date_now = timezone.now().date().strftime('%d.%m.%Y')
            cls(text, date_now).schedule(recipients)

    register_message_types(MyMessage)
    return MyMessage


def test_messages_own_type_renders_its_template_with_added_greeting(smtp_messenger, smtp_server):
    MyMessage = documented_message_type()
    from sitemessage.toolbox import recipients, schedule_messages, send_scheduled_messages

    # Scheduling message send via smtp.
    schedule_messages(MyMessage('Some text', '17.06.2014'), recipients('smtp', 'user1@host.com'))
    send_scheduled_messages()

    (mail,) = smtp_server.handler.messages()
    body = mail.get_content()
    assert mail['To'] == 'user1@host.com'
    assert '<title>Hi!</title>' in body and '<h1>Hi!</h1>' in body
    assert re.search(r'<h1>Hi!</h1>\s+Some text\s+<hr>\s+17\.06\.2014', body)
    assert Message.objects.get().context == {'tpl': None, 'use_tpl': True, 'text': 'Some text', 'date': '17.06.2014'}


def test_messages_own_type_create_goes_to_active_subscribers(smtp_messenger, smtp_server, user, django_user_model):
    MyMessage = documented_message_type()
    from sitemessage.toolbox import send_scheduled_messages

    gone = django_user_model.objects.create_user('gone', email='gone@example.com', is_active=False)
    Subscription.create(user, 'mymessage', 'smtp')
    Subscription.create(gone, 'mymessage', 'smtp')
    Subscription.create('list@example.com', 'mymessage', 'smtp')

    # Or we can use out shortcut method:
    MyMessage.create('Some other text')
    send_scheduled_messages()

    mails = mails_by_recipient(smtp_server)
    assert sorted(mails) == ['list@example.com', 'user1@example.com']
    today = timezone.now().date().strftime('%d.%m.%Y')
    assert 'Some other text' in mails['user1@example.com'].get_content()
    assert today in mails['user1@example.com'].get_content()


# 3.4 Messengers --------------------------------------------------------------------------------------


def test_messengers_own_messenger_builds_addresses_and_marks_dispatches_sent(django_user_model):
    from sitemessage.messengers.base import MessengerBase
    from sitemessage.toolbox import register_messenger_objects

    class MyMessenger(MessengerBase):
        # Messengers could be addressed by aliases.
        alias = 'mymessenger'

        # Messenger title to show up in UI
        title = 'Super messenger'

        # If we don't want users to subscribe for messages from that messenger
        # (see get_user_preferences_for_ui()) we just forbid such subscriptions.
        allow_user_subscription = False

        def __init__(self):
            """This messenger doesn't accept any configuration arguments."""

        @classmethod
        def get_address(cls, recipient):
            address = recipient
            if hasattr(recipient, 'username'):
                # We'll simply get address from User object `username`.
                address = '%s--address' % recipient.username
            return address

        def before_send(self):
            """We don't need that for now, but usually here will be messenger warm up (connect) code."""

        def after_send(self):
            """We don't need that for now, but usually here will be messenger cool down (disconnect) code."""

        def send(self, message_cls, message_model, dispatch_models):
            """This is the main sending method that every messenger must implement."""

            # `dispatch_models` from sitemessage are models representing a dispatch
            # of a certain message_model for a definite addressee.
            for dispatch_model in dispatch_models:
                # For demonstration purposes we won't send a dispatch anywhere,
                # we'll just mark it as sent:
                self.mark_sent(dispatch_model)  # See also: self.mark_failed() and self.mark_error().

    register_messenger_objects(MyMessenger())

    from sitemessage.toolbox import get_user_preferences_for_ui, recipients, schedule_messages, send_scheduled_messages

    user2 = django_user_model.objects.create_user('user2')
    # We'll just try to send PlainText message.
    schedule_messages('Some plain text message', recipients('mymessenger', ['user1--address', user2]))
    report = send_scheduled_messages()

    assert report.sent == 2
    assert [
        (d.address, d.recipient, d.dispatch_status, d.message_cache, d.retry_count)
        for d in Dispatch.objects.order_by('pk')
    ] == [
        ('user1--address', None, SENT, 'Some plain text message', 0),
        ('user2--address', user2, SENT, 'Some plain text message', 0),
    ]
    assert 'Super messenger' not in get_user_preferences_for_ui(user2)[0]


def test_messengers_smtp_send_test_message_logs_in_over_starttls(tls_smtp):
    from sitemessage.messengers.smtp import SMTPMessenger

    msg = SMTPMessenger('user1@host.com', 'user1', 'user1password', host='127.0.0.1', port=tls_smtp.port, use_tls=True)
    msg.send_test_message('user1@host.com', 'This is a test message')

    ((login, tls, envelope),) = tls_smtp.handler.envelopes
    assert (login, tls, envelope.mail_from, envelope.rcpt_tos) == ('user1', True, 'user1@host.com', ['user1@host.com'])
    assert b'This is a test message' in envelope.content


@needs_messenger('xmpp')
def test_messengers_xmpp_example_schedules_a_jabber_dispatch():
    from sitemessage.messengers.xmpp import XMPPSleekMessenger
    from sitemessage.toolbox import register_messenger_objects

    register_messenger_objects(construct(lambda: XMPPSleekMessenger('bot@example.ru', 'secret', 'example.ru')))
    from sitemessage.toolbox import recipients, schedule_messages

    # Sending jabber message.
    schedule_messages('Hello there!', recipients('xmppsleek', 'somebody@example.ru'))

    assert list(Dispatch.objects.values_list('messenger', 'address', 'message__context')) == [
        ('xmppsleek', 'somebody@example.ru', {'tpl': None, 'use_tpl': False, 'stext_': 'Hello there!'})
    ]


@needs_messenger('twitter')
def test_messengers_twitter_examples_schedule_a_tweet_and_a_mention():
    from sitemessage.messengers.twitter import TwitterMessenger
    from sitemessage.toolbox import register_messenger_objects

    register_messenger_objects(construct(lambda: TwitterMessenger('key', 'secret', 'token', 'token-secret')))
    from sitemessage.toolbox import recipients, schedule_messages

    # Twitting example.
    schedule_messages('My tweet.', recipients('twitter', ''))

    # Tweet to somebody.
    schedule_messages('Hey, that is my tweet for you.', recipients('twitter', 'idlesign'))

    assert list(Dispatch.objects.order_by('pk').values_list('messenger', 'address')) == [
        ('twitter', ''),
        ('twitter', 'idlesign'),
    ]


@needs_messenger('telegram')
def test_messengers_telegram_examples_schedule_to_a_chat_and_a_channel():
    from sitemessage.messengers.telegram import TelegramMessenger
    from sitemessage.toolbox import register_messenger_objects

    register_messenger_objects(construct(lambda: TelegramMessenger('bot-token')))
    from sitemessage.toolbox import recipients, schedule_messages

    # Let's send a message to chat with ID 12345678.
    schedule_messages('Hi there!', recipients('telegram', '12345678'))

    # Message to a channel mychannel
    schedule_messages('Hi all!', recipients('telegram', '@mychannel'))

    assert list(Dispatch.objects.order_by('pk').values_list('messenger', 'address')) == [
        ('telegram', '12345678'),
        ('telegram', '@mychannel'),
    ]


@needs_messenger('telegram')
def test_messengers_telegram_accepts_a_proxy_argument():
    from sitemessage.messengers.telegram import TelegramMessenger

    messenger = construct(lambda: TelegramMessenger('token', proxy={'https': 'socks5://user:pass@host:port'}))

    assert messenger.proxy == {'https': 'socks5://user:pass@host:port'}


@needs_messenger('facebook')
def test_messengers_facebook_example_schedules_a_page_post():
    from sitemessage.messengers.facebook import FacebookMessenger
    from sitemessage.toolbox import register_messenger_objects

    register_messenger_objects(construct(lambda: FacebookMessenger('page-token')))
    from sitemessage.toolbox import recipients, schedule_messages

    # Schedule a message or a URL for FB timeline.
    schedule_messages('Hi there!', recipients('fb', ''))

    assert list(Dispatch.objects.values_list('messenger', 'address')) == [('fb', '')]


@needs_messenger('vkontakte')
def test_messengers_vkontakte_example_schedules_a_wall_post():
    from sitemessage.messengers.vkontakte import VKontakteMessenger
    from sitemessage.toolbox import register_messenger_objects

    register_messenger_objects(construct(lambda: VKontakteMessenger('access-token')))
    from sitemessage.toolbox import recipients, schedule_messages

    # Schedule a message or a URL for VK page wall.
    schedule_messages('Hi there!', recipients('vk', '12345'))

    assert list(Dispatch.objects.values_list('messenger', 'address')) == [('vk', '12345')]


# 3.6 Prioritizing messages ------------------------------------------------------------------------


def test_priorities_from_class_and_arguments_decide_what_each_run_sends(smtp_messenger, smtp_server):
    from sitemessage.messages.base import MessageBase
    from sitemessage.toolbox import register_message_types, send_scheduled_messages

    class MyMessage(MessageBase):
        alias = 'mymessage'

        priority = 10  # Messages of this type will automatically have priority of 10.

    register_message_types(MyMessage)

    from sitemessage.shortcuts import schedule_email
    from sitemessage.toolbox import recipients, schedule_messages

    schedule_email('Email from sitemessage.', 'user2@host.com', priority=1)

    # or

    schedule_messages('My message', recipients('smtp', 'user1@host.com'), priority=16)

    schedule_messages(MyMessage('From the class'), recipients('smtp', 'class@host.com'))
    schedule_messages(MyMessage('Overridden'), recipients('smtp', 'overridden@host.com'), priority=1)

    assert sorted(Dispatch.objects.values_list('address', 'message__priority')) == [
        ('class@host.com', 10),
        ('overridden@host.com', 1),
        ('user1@host.com', 16),
        ('user2@host.com', 1),
    ]

    send_scheduled_messages(priority=10)
    assert [env.rcpt_tos for env in smtp_server.handler.envelopes] == [['class@host.com']]

    # ./manage.py sitemessage_send_scheduled --priority 16
    out = StringIO()
    call_command('sitemessage_send_scheduled', '--priority', '16', stdout=out)
    assert out.getvalue().startswith('Sending scheduled messages with priority 16  ...\nSending done.\n')
    assert [env.rcpt_tos for env in smtp_server.handler.envelopes] == [['class@host.com'], ['user1@host.com']]
    assert sorted(Dispatch.objects.filter(dispatch_status=PENDING).values_list('address', flat=True)) == [
        'overridden@host.com',
        'user2@host.com',
    ]


# 3.7 Grouping messages ------------------------------------------------------------------------------


def test_grouping_merges_messages_of_a_group_into_one_delivery(smtp_messenger, smtp_server):
    from sitemessage.messages.base import MessageBase
    from sitemessage.toolbox import recipients, register_message_types, schedule_messages, send_scheduled_messages

    class MyMessage(MessageBase):
        alias = 'mymessage'

        # Define group ID at class level or as a @property
        group_mark = 'groupme'

        # In case your message has some complex context
        # you may want to override 'merge_context' to add a new message
        # context to the context already existing in message stored in DB
        @classmethod
        def merge_context(cls, context: dict, new_context: dict) -> dict:
            merged = {**context, 'stext_': f'{context["stext_"]}; {new_context["stext_"]}'}
            return merged

    register_message_types(MyMessage)

    schedule_messages(MyMessage('First event'), recipients('smtp', 'user1@host.com'))
    schedule_messages(MyMessage('Second event'), recipients('smtp', 'user1@host.com'))

    message = Message.objects.get()
    assert (message.group_mark, message.context['stext_']) == ('groupme', 'First event; Second event')
    assert message.dispatch_set.count() == 1
    send_scheduled_messages()
    (mail,) = smtp_server.handler.messages()
    assert mail.get_content().strip() == 'First event; Second event'


# 3.8 Recipients and subscriptions -----------------------------------------------------------------


def test_postponed_dispatches_are_made_for_subscribers_by_prepare_dispatches(smtp_messenger, smtp_server, user):
    from sitemessage.messages.base import MessageBase
    from sitemessage.toolbox import register_message_types, send_scheduled_messages

    class MyMessage(MessageBase):
        alias = 'mymessage'

    register_message_types(MyMessage)
    Subscription.create(user, 'mymessage', 'smtp')

    from sitemessage.toolbox import prepare_dispatches, schedule_messages

    # Here `recipients` parameter is omitted ...
    schedule_messages(MyMessage('Some text'))

    message = Message.objects.get()
    assert not message.dispatches_ready and not message.dispatch_set.exists()
    assert send_scheduled_messages().sent == 0

    # ... instead dispatches are created later.
    prepared = prepare_dispatches()

    assert [(d.messenger, d.address, d.recipient) for d in prepared] == [('smtp', 'user1@example.com', user)]
    message.refresh_from_db()
    assert message.dispatches_ready
    assert prepare_dispatches() == []
    send_scheduled_messages()
    (mail,) = smtp_server.handler.messages()
    assert (mail['To'], mail.get_content().strip()) == ('user1@example.com', 'Some text')


USER_PREFERENCES_HTML = """<!-- user_preferences.html -->
{% load sitemessage %}

<form method="post">
  {% csrf_token %}

  <!-- Create preferences table from `subscr_prefs` template variable. -->
  {% sitemessage_prefs_table from subscr_prefs %}

  <input type="submit" value="Save preferences" />
</form>
"""

BOOTSTRAP_PREFERENCES_HTML = """{% load sitemessage %}
{% sitemessage_prefs_table from subscr_prefs template "sitemessage/user_prefs_table-bootstrap.html" %}
"""

DOCS_TEMPLATES = [
    {
        'BACKEND': 'django.template.backends.django.DjangoTemplates',
        'OPTIONS': {
            'loaders': [
                (
                    'django.template.loaders.locmem.Loader',
                    {
                        'user_preferences.html': USER_PREFERENCES_HTML,
                        'user_preferences_bootstrap.html': BOOTSTRAP_PREFERENCES_HTML,
                        'mymessages/read_tracked.html': (
                            '<p>{{ text }}</p>\n'
                            '{% if directive_mark_read %}\n  <img src="{{ directive_mark_read }}">\n{% endif %}\n'
                        ),
                    },
                ),
                'django.template.loaders.app_directories.Loader',
            ]
        },
    }
]


@override_settings(TEMPLATES=DOCS_TEMPLATES)
def test_preferences_view_saves_posted_choices_and_renders_them_checked(smtp_messenger, user, rf):
    from django.shortcuts import render

    from sitemessage.toolbox import get_user_preferences_for_ui, set_user_preferences_from_request

    def user_preferences(self, request):
        """Let's suppose this simplified view handles user preferences."""
        if request.POST:
            # Process form data:
            set_user_preferences_from_request(request)

        # Prepare preferences data.
        subscr_prefs = get_user_preferences_for_ui(request.user)

        return render(request, 'user_preferences.html', {'subscr_prefs': subscr_prefs})

    request = rf.post('/prefs/', {'sm_user_pref': ['greeting|smtp', 'plain|fake', 'unknown|fake']})
    request.user = user

    html = user_preferences(None, request).content.decode()

    assert sorted(Subscription.objects.filter(recipient=user).values_list('message_cls', 'messenger_cls')) == [
        ('greeting', 'smtp'),
        ('plain', 'fake'),
    ]
    assert '<table class="sitemessage_prefs ">' in html
    assert 'E-mail</th>' in html and 'Fake messenger</th>' in html
    assert 'value="greeting|smtp" checked>' in html
    assert 'value="plain|fake" checked>' in html
    assert 'value="greeting|fake">' in html
    assert 'name="csrfmiddlewaretoken"' in html

    request = rf.get('/prefs/')
    request.user = user
    assert 'value="greeting|smtp" checked>' in user_preferences(None, request).content.decode()


@override_settings(TEMPLATES=DOCS_TEMPLATES)
def test_preferences_table_bootstrap_template_variant(smtp_messenger, user):
    from django.template.loader import render_to_string

    from sitemessage.toolbox import get_user_preferences_for_ui

    Subscription.create(user, 'greeting', 'fake')

    html = render_to_string('user_preferences_bootstrap.html', {'subscr_prefs': get_user_preferences_for_ui(user)})

    assert '<table class="sitemessage_prefs table table-striped">' in html
    assert 'value="greeting|fake" checked>' in html


# 3.9 Bundled views -------------------------------------------------------------------------------------


@override_settings(ROOT_URLCONF=__name__)
def test_bundled_views_unsubscribe_link_of_an_email_cancels_the_subscription_once_confirmed(
    smtp_messenger, smtp_server, user, client
):
    from sitemessage.messages import EmailHtmlMessage
    from sitemessage.toolbox import schedule_messages, send_scheduled_messages

    Subscription.create(user, 'email_html', 'smtp')
    schedule_messages(EmailHtmlMessage('News', {'contents': 'Hello'}), EmailHtmlMessage.get_subscribers())
    send_scheduled_messages()
    (mail,) = smtp_server.handler.messages()
    link = re.search(r'<a href="([^"]+/messages/unsubscribe/[^"]+)">this link', html_of(mail)).group(1)
    assert mail['List-Unsubscribe'] == f'<{link}>'

    path = urlsplit(link).path

    # Visiting the link asks for a confirmation (link scanners visit links too) ...
    page = client.get(path)
    assert page.status_code == 200 and Subscription.objects.exists()
    form_action = re.search(r'<form method="post" action="([^"]+)">', page.content.decode()).group(1)
    assert form_action == path

    # ... which the page's form (or a mail client's one-click request) posts.
    response = client.post(form_action)

    assert (response.status_code, response['Location']) == (302, '/')
    assert not Subscription.objects.exists()


@override_settings(ROOT_URLCONF=__name__, TEMPLATES=DOCS_TEMPLATES)
def test_bundled_views_mark_read_image_of_an_email_marks_only_its_dispatch_read(smtp_messenger, smtp_server, client):
    from sitemessage.messages.base import MessageBase
    from sitemessage.toolbox import recipients, register_message_types, schedule_messages, send_scheduled_messages

    class ReadTracked(MessageBase):
        alias = 'read_tracked'
        template = 'mymessages/read_tracked.html'

    register_message_types(ReadTracked)
    schedule_messages(ReadTracked({'text': 'Tracked'}), recipients('smtp', ['ann@example.com', 'bob@example.com']))
    send_scheduled_messages()
    mails = mails_by_recipient(smtp_server)
    ann_src = re.search(r'<img src="([^"]+)">', mails['ann@example.com'].get_content()).group(1)

    response = client.get(urlsplit(ann_src).path)

    assert (response.status_code, response['Location']) == (302, '/static/img/sitemessage/blank.png')
    assert sorted(Dispatch.objects.values_list('address', 'read_status')) == [
        ('ann@example.com', Dispatch.READ_STATUS_READ),
        ('bob@example.com', Dispatch.READ_STATUS_UNREAD),
    ]


# 3.10 Sitemessage for reusable applications ------------------------------------------------------------


def reusable_app_schedule_email():
    from sitemessage.toolbox import get_message_type_for_app, recipients, schedule_messages

    def schedule_email(text, to, subject):
        """Suppose you're sending a notification and want to send a plain text e-mail by default."""

        # This says: give me a message type `email_plain` if not overridden.
        message_cls = get_message_type_for_app('myapp', 'email_plain')
        message_obj = message_cls(subject, text)

        # And this actually schedules a message to send via `smtp` messenger.
        schedule_messages(message_obj, recipients('smtp', to))

    return schedule_email


def test_reusable_app_sends_its_default_message_type(smtp_messenger, smtp_server):
    from sitemessage.toolbox import send_scheduled_messages

    schedule_email = reusable_app_schedule_email()

    schedule_email('Your report is ready.', 'owner@example.com', 'Report')
    send_scheduled_messages()

    assert Message.objects.get().cls == 'email_plain'
    (mail,) = smtp_server.handler.messages()
    assert (mail['Subject'], mail.get_content_type(), mail.get_content().strip()) == (
        'Report',
        'text/plain',
        'Your report is ready.',
    )


def test_reusable_app_message_type_overridden_by_the_project(smtp_messenger, smtp_server):
    from sitemessage.messages.email import EmailTextMessage
    from sitemessage.toolbox import register_message_types, send_scheduled_messages

    class MyCustomEmailPlain(EmailTextMessage):
        alias = 'my_custom_email_plain'

        def __init__(self, subject, text):
            super().__init__(f'[Project] {subject}', text)

    register_message_types(MyCustomEmailPlain)
    from sitemessage.toolbox import override_message_type_for_app

    # This will override `email_plain` message type by `my_custom_email_plain` for `myapp` application.
    override_message_type_for_app('myapp', 'email_plain', 'my_custom_email_plain')

    reusable_app_schedule_email()('Your report is ready.', 'owner@example.com', 'Report')
    send_scheduled_messages()

    assert Message.objects.get().cls == 'my_custom_email_plain'
    (mail,) = smtp_server.handler.messages()
    assert mail['Subject'] == '[Project] Report'
