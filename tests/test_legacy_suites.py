"""A 1.4.0 project's own test suite, run against 2.0 unchanged.

Such suites stand in for third-party modules with ``unittest.mock`` objects in ``sys.modules``
(``requests``, ``sleekxmpp``, ``twitter``), assign messenger attributes (``smtp``, ``xmpp``,
``lib``, ``_session_started``, ``port``...) and assert on the calls 1.4.0 made. This is the one
place where mocks are the point: they are what those suites do. The stand-ins are installed
with ``mock.patch.dict(sys.modules, ...)`` so they never leak into other tests.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from unittest import mock
from unittest.mock import MagicMock

import pytest

from sitemessage.exceptions import MessengerWarmupException, SiteMessageConfigurationError
from sitemessage.messages.plain import PlainTextMessage

# Imported here, not under mock.patch.dict(sys.modules): that would drop them from sys.modules again.
from sitemessage.messengers.facebook import FacebookMessenger
from sitemessage.messengers.smtp import SMTPMessenger
from sitemessage.messengers.telegram import TelegramMessenger
from sitemessage.messengers.twitter import TwitterMessenger
from sitemessage.messengers.vkontakte import VKontakteMessenger
from sitemessage.messengers.xmpp import XMPPSleekMessenger
from sitemessage.models import Dispatch, DispatchError
from sitemessage.toolbox import recipients, schedule_messages, send_scheduled_messages
from sitemessage.utils import import_optional, register_messenger_objects


def mock_thirdparty(name, func, stand_in=None):
    """What 1.4.0's own suite did: build a messenger while ``sys.modules[name]`` is a mock."""
    with mock.patch.dict(sys.modules, {name: stand_in if stand_in is not None else MagicMock()}):
        return func()


def schedule(alias, address, text='text'):
    ((message, dispatches),) = schedule_messages(text, recipients(alias, address))
    return message, dispatches


def statuses(message):
    return [dispatch.dispatch_status for dispatch in Dispatch.objects.filter(message=message)]


# A module in sys.modules without __spec__ --------------------------------------------------------------


def test_a_stand_in_module_without_spec_is_imported_as_it_is():
    stand_in = MagicMock()
    with mock.patch.dict(sys.modules, {'requests': stand_in}):
        with pytest.raises(ValueError, match=r'__spec__ is not set'):
            importlib.util.find_spec('requests')  # what broke 2.0 before
        assert import_optional('requests', extra='telegram') is stand_in
    assert sys.modules.get('requests') is not stand_in


def test_http_messengers_are_built_while_requests_is_a_stand_in():

    stand_in = MagicMock()
    telegram = mock_thirdparty(
        'requests', lambda: TelegramMessenger('bottoken', proxy={'https': 'socks5://user:pass@host:port'}), stand_in
    )
    facebook = mock_thirdparty('requests', lambda: FacebookMessenger('pagetoken'), stand_in)
    vkontakte = mock_thirdparty('requests', lambda: VKontakteMessenger('apptoken'), stand_in)

    assert telegram.lib is facebook.lib is vkontakte.lib is stand_in
    assert telegram.proxy == {'https': 'socks5://user:pass@host:port'}


def test_a_module_blocked_in_sys_modules_names_the_pip_extra():
    with mock.patch.dict(sys.modules, {'slixmpp': None, 'sleekxmpp': None}):
        with pytest.raises(SiteMessageConfigurationError, match=r'django-sitemessage\[xmpp\]'):
            import_optional('slixmpp', extra='xmpp')

        with pytest.raises(SiteMessageConfigurationError, match=r'django-sitemessage\[xmpp\]'):
            XMPPSleekMessenger('bot@example.com', 'secret')


def test_a_missing_module_names_the_pip_extra_and_the_import_error():
    with pytest.raises(SiteMessageConfigurationError) as caught:
        import_optional('sitemessage_no_such_package.sub', extra='telegram')
    assert 'pip install "django-sitemessage[telegram]"' in str(caught.value)
    assert "No module named 'sitemessage_no_such_package'" in str(caught.value)
    assert isinstance(caught.value.__cause__, ImportError)


# SMTP ----------------------------------------------------------------------------------------------


@pytest.fixture
def messenger_smtp():
    """1.4.0's suite: built while ``smtplib`` is a mock, so ``lib`` and the connection are mocks."""
    messenger = mock_thirdparty('smtplib', lambda: SMTPMessenger(login='someone', use_tls=True))
    register_messenger_objects(messenger)
    return messenger


def test_smtp_send_test_message_goes_through_the_mocked_smtplib(messenger_smtp):
    messenger_smtp.send_test_message('someone', 'sometext')

    messenger_smtp.lib.SMTP.assert_called_once_with(messenger_smtp.host, messenger_smtp.port)
    smtp = messenger_smtp.smtp
    assert smtp is messenger_smtp.lib.SMTP.return_value
    smtp.starttls.assert_called_once()
    smtp.login.assert_called_once_with('someone', messenger_smtp.password)
    smtp.sendmail.assert_called_once()
    sender, to, data = smtp.sendmail.call_args[0]
    assert to == ['someone'] and b'sometext' in data
    smtp.quit.assert_called_once_with()


@pytest.mark.django_db
def test_smtp_scheduled_send_goes_through_the_mocked_smtplib(messenger_smtp):
    # 2.0 fails a dispatch whose address has no `@` at once (1.4.0 handed `someone` to the server).
    message, _dispatches = schedule('smtp', 'someone@example.com')
    messenger_smtp.lib.SMTP.return_value.sendmail.return_value = {}  # no refused recipients, as in 1.4.0

    send_scheduled_messages()

    assert messenger_smtp.smtp.sendmail.call_count == 1
    assert statuses(message) == [Dispatch.DISPATCH_STATUS_SENT]


@pytest.mark.django_db
def test_smtp_failure_of_the_mocked_connection_is_logged(messenger_smtp):
    schedule('smtp', 'someone@example.com')
    messenger_smtp.lib.SMTP.return_value.sendmail.side_effect = Exception('smtp failed')

    send_scheduled_messages()

    errors = list(DispatchError.objects.all())
    assert len(errors) == 1
    # 2.0 names the address and the exception's type (1.4.0 logged only 'smtp failed').
    assert (
        errors[0].error_log.endswith('Exception: smtp failed') and errors[0].dispatch.address == 'someone@example.com'
    )


@pytest.mark.django_db
def test_smtp_assigned_connection_and_session_started_make_send_use_it():
    messenger = SMTPMessenger('robot@example.com', host='127.0.0.1', port=1)
    register_messenger_objects(messenger)
    message, dispatches = schedule('smtp', 'someone@example.com')
    for dispatch in dispatches:
        dispatch.message_cache = 'text'

    messenger.smtp = MagicMock()
    messenger.smtp.sendmail.return_value = {}
    messenger._session_started = True
    messenger.send(PlainTextMessage, message, dispatches)

    messenger.smtp.sendmail.assert_called_once()
    assert messenger.smtp.sendmail.call_args[0][:2] == ('robot@example.com', ['someone@example.com'])
    assert [dispatch.dispatch_status for dispatch in dispatches] == [Dispatch.DISPATCH_STATUS_SENT]


def test_smtp_assigned_options_are_used_by_the_next_connection(smtp_server):
    """Real server: ``port``, ``host`` and ``from_email`` assigned after construction take effect."""
    messenger = SMTPMessenger('robot@example.com', host='localhost', port=1, timeout=5)

    messenger.host = '127.0.0.1'
    messenger.port = smtp_server.port
    messenger.from_email = 'other@example.com'
    messenger.send_test_message('someone@example.com', 'sometext')

    (envelope,) = smtp_server.handler.envelopes
    assert envelope.mail_from == 'other@example.com'
    assert envelope.rcpt_tos == ['someone@example.com']
    assert (messenger.host, messenger.port, messenger.from_email) == (
        '127.0.0.1',
        smtp_server.port,
        'other@example.com',
    )

    messenger.port = 1
    with pytest.raises(MessengerWarmupException):
        messenger.send_test_message('someone@example.com', 'sometext')
    assert len(smtp_server.handler.envelopes) == 1


def test_smtp_option_assigned_none_falls_back_to_the_setting(settings):
    settings.EMAIL_PORT = 2525
    messenger = SMTPMessenger(port=1)
    messenger.port = None
    messenger.use_tls, messenger.use_ssl, messenger.timeout = True, False, 3
    messenger.login, messenger.password = 'me', 'secret'
    assert (messenger.port, messenger.use_tls, messenger.use_ssl, messenger.timeout) == (2525, True, False, 3)
    assert (messenger.login, messenger.password) == ('me', 'secret')


# XMPP ----------------------------------------------------------------------------------------------


@pytest.fixture
def messenger_xmpp():
    """1.4.0's suite: built while ``sleekxmpp`` is a mock, session marked started by hand."""
    messenger = mock_thirdparty('sleekxmpp', lambda: XMPPSleekMessenger('somjid', 'somepasswd'))
    messenger._session_started = True
    register_messenger_objects(messenger)
    return messenger


def test_xmpp_uses_an_importable_sleekxmpp(messenger_xmpp):
    assert isinstance(messenger_xmpp.lib, MagicMock)
    assert messenger_xmpp.xmpp is None and messenger_xmpp._session_started is True


def test_xmpp_send_test_message_makes_the_1_4_0_calls(messenger_xmpp):
    lib = messenger_xmpp.lib

    messenger_xmpp.send_test_message('someone', 'sometext')

    xmpp = messenger_xmpp.xmpp
    assert xmpp is lib.ClientXMPP.return_value
    lib.ClientXMPP.assert_called_once_with('somjid', 'somepasswd')
    assert xmpp.add_event_handler.call_args[0][0] == 'session_start'
    xmpp.connect.assert_called_once_with(address=('localhost', 5222), reattempt=False, use_tls=True, use_ssl=False)
    xmpp.process.assert_called_once_with(block=False)
    xmpp.send_message.assert_called_with(mtype='chat', mbody='sometext', mfrom='somjid', mto='someone')
    xmpp.disconnect.assert_called_once_with(wait=True)
    assert messenger_xmpp._session_started is False


def test_xmpp_session_start_handler_marks_the_session_started():
    messenger = mock_thirdparty('sleekxmpp', lambda: XMPPSleekMessenger('somjid', 'somepasswd'))
    messenger.host, messenger.port, messenger.use_tls, messenger.use_ssl = 'xmpp.example.com', 5223, False, True
    messenger.before_send()
    assert messenger._session_started is False

    _event, handler = messenger.xmpp.add_event_handler.call_args[0]
    handler({})

    messenger.xmpp.send_presence.assert_called_once_with()
    messenger.xmpp.get_roster.assert_called_once_with()
    assert messenger._session_started is True
    messenger.xmpp.connect.assert_called_once_with(
        address=('xmpp.example.com', 5223), reattempt=False, use_tls=False, use_ssl=True
    )


@pytest.mark.django_db
def test_xmpp_scheduled_send_makes_the_1_4_0_call(messenger_xmpp):
    message, _dispatches = schedule('xmppsleek', 'someone')

    send_scheduled_messages()

    messenger_xmpp.xmpp.send_message.assert_called_once_with(mtype='chat', mbody='text', mfrom='somjid', mto='someone')
    assert statuses(message) == [Dispatch.DISPATCH_STATUS_SENT]


@pytest.mark.django_db
def test_xmpp_failure_of_the_mocked_client_is_logged(messenger_xmpp):
    schedule('xmppsleek', 'someone')
    messenger_xmpp.lib.ClientXMPP.return_value.send_message.side_effect = Exception('xmppsleek failed')

    send_scheduled_messages()

    errors = list(DispatchError.objects.all())
    assert len(errors) == 1
    assert errors[0].error_log == 'Exception: xmppsleek failed' and errors[0].dispatch.address == 'someone'


@pytest.mark.django_db
def test_xmpp_send_before_the_session_started_leaves_the_dispatch_in_error(messenger_xmpp):
    message, dispatches = schedule('xmppsleek', 'someone')
    messenger_xmpp._session_started = False
    messenger_xmpp.xmpp = MagicMock()

    messenger_xmpp.send(PlainTextMessage, message, dispatches)

    messenger_xmpp.xmpp.send_message.assert_not_called()
    assert [dispatch.dispatch_status for dispatch in dispatches] == [Dispatch.DISPATCH_STATUS_ERROR]
    assert 'session has not started' in dispatches[0].error_log


@pytest.mark.django_db
def test_xmpp_assigned_client_is_used_with_slixmpp_installed():
    """A messenger built normally (slixmpp) sends through a client the suite assigned."""
    slixmpp = importlib.import_module('slixmpp')
    with mock.patch.dict(sys.modules, {'sleekxmpp': None}):
        messenger = XMPPSleekMessenger('bot@example.com', 'secret')
    register_messenger_objects(messenger)
    assert messenger.lib is slixmpp
    assert messenger.xmpp is None and messenger._session_started is False
    message, dispatches = schedule('xmppsleek', 'someone@example.com')
    for dispatch in dispatches:
        dispatch.message_cache = 'text'

    messenger.xmpp = MagicMock()
    messenger._session_started = True
    messenger.send(PlainTextMessage, message, dispatches)

    messenger.xmpp.send_message.assert_called_once_with(
        mfrom='bot@example.com', mto='someone@example.com', mbody='text', mtype='chat'
    )
    assert [dispatch.dispatch_status for dispatch in dispatches] == [Dispatch.DISPATCH_STATUS_SENT]


# Twitter ---------------------------------------------------------------------------------------------


@pytest.fixture
def messenger_twitter():
    """1.4.0's suite: built while ``twitter`` is a mock, then ``lib`` replaced by another mock."""
    messenger = mock_thirdparty('twitter', lambda: TwitterMessenger('key', 'secret', 'token', 'token_secret'))
    messenger.lib = MagicMock()
    register_messenger_objects(messenger)
    return messenger


def test_twitter_send_test_message_makes_the_1_4_0_calls(messenger_twitter):
    messenger_twitter.send_test_message('someone', 'sometext')
    messenger_twitter.api.statuses.update.assert_called_with(status='@someone sometext')

    messenger_twitter.send_test_message('', 'sometext')
    messenger_twitter.api.statuses.update.assert_called_with(status='sometext')

    lib = messenger_twitter.lib
    lib.OAuth.assert_called_with('token', 'token_secret', 'key', 'secret')
    lib.Twitter.assert_called_with(auth=lib.OAuth.return_value)
    assert messenger_twitter.api is lib.Twitter.return_value and messenger_twitter._session_started


@pytest.mark.django_db
def test_twitter_scheduled_send_makes_the_1_4_0_call(messenger_twitter):
    message, _dispatches = schedule('twitter', 'someone')

    send_scheduled_messages()

    messenger_twitter.api.statuses.update.assert_called_with(status='@someone text')
    assert statuses(message) == [Dispatch.DISPATCH_STATUS_SENT]


@pytest.mark.django_db
def test_twitter_failure_of_the_mocked_api_is_logged(messenger_twitter):
    schedule('twitter', 'someone')
    messenger_twitter.lib.Twitter.return_value.statuses.update.side_effect = Exception('tweet failed')

    send_scheduled_messages()

    errors = list(DispatchError.objects.all())
    assert len(errors) == 1
    assert errors[0].error_log == 'Exception: tweet failed' and errors[0].dispatch.address == 'someone'


@pytest.mark.django_db
def test_twitter_assigned_api_is_used_by_send():
    """Built normally; an ``api`` the suite assigned posts the dispatches, as 1.4.0's send() did."""
    messenger = TwitterMessenger('key', 'secret', 'token', 'token_secret')
    register_messenger_objects(messenger)
    message, dispatches = schedule('twitter', 'someone')
    for dispatch in dispatches:
        dispatch.message_cache = 'text'

    messenger.api = MagicMock()
    messenger._session_started = True
    messenger.send(PlainTextMessage, message, dispatches)

    messenger.api.statuses.update.assert_called_once_with(status='@someone text')
    assert [dispatch.dispatch_status for dispatch in dispatches] == [Dispatch.DISPATCH_STATUS_SENT]


def test_twitter_stand_in_needs_neither_requests_nor_oauthlib():
    stand_in = MagicMock()
    with mock.patch.dict(sys.modules, {'requests': None, 'requests_oauthlib': None}):
        messenger = mock_thirdparty(
            'twitter', lambda: TwitterMessenger('key', 'secret', 'token', 'token_secret'), stand_in
        )
    assert messenger.lib is stand_in

    messenger.send_test_message('someone', 'sometext')

    stand_in.Twitter.return_value.statuses.update.assert_called_once_with(status='@someone sometext')


def test_twitter_built_for_x_api_v2_takes_an_assigned_lib():
    """Built normally (X API v2 over requests); assigning ``lib`` as a 1.4.0 suite does switches to it."""
    import requests

    messenger = TwitterMessenger('key', 'secret', 'token', 'token_secret')
    assert messenger.lib is requests and messenger.api is None

    messenger.lib = MagicMock()
    messenger.send_test_message('someone', 'sometext')

    messenger.api.statuses.update.assert_called_once_with(status='@someone sometext')


# Deprecated 1.4.0 names ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    'name, replacement',
    [
        ('RequestsMessengerBase', 'sitemessage.messengers.base_http.RequestsMessengerBase'),
        ('TypeProxy', 'sitemessage.messengers.base_http.TypeProxy'),
        ('DispatchProcessingHandler', 'MessengerBase.before_after_send_handling()'),
    ],
)
def test_moved_messenger_base_names_warn_with_their_replacement(name, replacement):
    from sitemessage.messengers import base

    with pytest.warns(DeprecationWarning, match=rf'base\.{name} is deprecated .* use {replacement}') as caught:
        exec(f'from sitemessage.messengers.base import {name}', {})
    assert caught[0].filename == '<string>'  # attributed to the importing code, not to sitemessage

    with pytest.warns(DeprecationWarning):
        assert getattr(base, name) is not None


def test_dispatch_processing_handler_warms_up_and_cools_down(fake_messenger):
    with pytest.warns(DeprecationWarning):
        from sitemessage.messengers.base import DispatchProcessingHandler

    calls = []
    fake_messenger.before_send = lambda: calls.append('before')
    fake_messenger.after_send = lambda: calls.append('after')
    with DispatchProcessingHandler(messenger=fake_messenger):
        calls.append('body')

    assert calls == ['before', 'body', 'after']
