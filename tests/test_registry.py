"""Registries, recipients, the site URL, per-app type overrides, autodiscovery, settings, exceptions, app config."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from io import StringIO
from pathlib import Path

import pytest
from django.apps import apps
from django.conf import settings
from django.core.management import call_command
from django.db import models
from django.test import override_settings

from sitemessage import settings as sm_settings
from sitemessage.exceptions import (
    MessengerException,
    MessengerWarmupException,
    SiteMessageConfigurationError,
    SiteMessageError,
    UnknownMessageTypeError,
    UnknownMessengerError,
)
from sitemessage.messages.base import MessageBase
from sitemessage.messages.email import EmailHtmlMessage, EmailTextMessage
from sitemessage.messengers.smtp import SMTPMessenger
from sitemessage.models import Dispatch, DispatchError, Message, Subscription
from sitemessage.toolbox import schedule_messages
from sitemessage.utils import (
    Recipient,
    get_message_type_for_app,
    get_registered_message_type,
    get_registered_message_types,
    get_registered_messenger_object,
    get_registered_messenger_objects,
    get_site_url,
    import_app_sitemessage_module,
    import_project_sitemessage_modules,
    override_message_type_for_app,
    recipients,
    register_message_types,
    register_messenger_objects,
)
from tests.fakes import FakeMessenger
from tests.testapp import sitemessages as testapp_sitemessages

pytestmark = pytest.mark.django_db

REPO_ROOT = str(Path(__file__).resolve().parent.parent)


# Registries ---------------------------------------------------------------------------------------


def test_registering_a_messenger_under_a_taken_alias_replaces_the_earlier_one():
    first, second = FakeMessenger(), FakeMessenger()
    register_messenger_objects(first)
    register_messenger_objects(second)

    assert get_registered_messenger_object('fake') is second
    assert get_registered_messenger_objects()['fake'] is second


def test_registering_a_message_type_under_a_taken_alias_replaces_the_earlier_one():
    class Greeting2(MessageBase):
        alias = 'greeting'

    register_message_types(Greeting2)

    assert get_registered_message_type('greeting') is Greeting2
    assert get_registered_message_types()['greeting'] is Greeting2


def test_registry_getters_return_the_live_registries():
    register_messenger_objects(SMTPMessenger())

    assert 'smtp' in get_registered_messenger_objects()
    assert get_registered_messenger_objects() is get_registered_messenger_objects()
    assert get_registered_message_types() is get_registered_message_types()


def test_registered_objects_can_be_looked_up_by_class_or_instance_too():
    fake = get_registered_messenger_object('fake')

    assert get_registered_messenger_object(FakeMessenger) is fake
    assert get_registered_messenger_object(fake) is fake
    assert get_registered_message_type(testapp_sitemessages.GreetingMessage) is testapp_sitemessages.GreetingMessage


def test_unknown_messenger_error_names_the_alias_and_the_registered_ones():
    with pytest.raises(UnknownMessengerError) as error:
        get_registered_messenger_object('telegrm')

    text = str(error.value)
    assert text.startswith('`telegrm` messenger is not registered')
    assert 'fake' in text


def test_unknown_message_type_error_names_the_alias_and_the_registered_ones():
    with pytest.raises(UnknownMessageTypeError) as error:
        get_registered_message_type('greting')

    text = str(error.value)
    assert text.startswith('`greting` message class is not registered')
    assert all(alias in text for alias in ('greeting', 'plain', 'email_plain', 'email_html'))


def test_recipients_for_an_unknown_messenger_alias_raise():
    with pytest.raises(UnknownMessengerError, match='`nosuch`'):
        recipients('nosuch', 'someone')


# Recipient and recipients() ---------------------------------------------------------------------------


def test_recipient_is_a_positional_named_tuple():
    recipient = Recipient('msgr', None, 'address')

    assert (recipient.messenger, recipient.user, recipient.address) == ('msgr', None, 'address')
    assert Recipient._fields == ('messenger', 'user', 'address')


def test_recipients_accept_a_messenger_alias_class_or_instance():
    by_alias = recipients('fake', ['ann', 'bob'])

    assert by_alias == recipients(FakeMessenger, ['ann', 'bob']) == recipients(FakeMessenger(), ['ann', 'bob'])
    assert by_alias == [Recipient('fake', None, 'ann'), Recipient('fake', None, 'bob')]


def test_recipients_take_users_and_addresses_one_or_many(user):
    assert recipients(SMTPMessenger, [user, 'a@example.com']) == [
        Recipient('smtp', user, 'user1@example.com'),
        Recipient('smtp', None, 'a@example.com'),
    ]
    assert recipients(SMTPMessenger, 'a@example.com') == [Recipient('smtp', None, 'a@example.com')]
    assert recipients(SMTPMessenger, user) == [Recipient('smtp', user, 'user1@example.com')]
    assert recipients('fake', user) == [Recipient('fake', user, 'user1')]


def test_a_user_without_an_address_gets_an_empty_address_not_the_username(django_user_model):
    mute = django_user_model.objects.create_user('mute', email='')

    assert recipients(SMTPMessenger, mute) == [Recipient('smtp', mute, '')]
    schedule_messages('hello', recipients(SMTPMessenger, mute))
    assert Dispatch.objects.get().address == ''


def test_recipient_lists_add_up_including_trailing_comma_tuples():
    smtp = recipients(SMTPMessenger, ['a@example.com'])
    fake = recipients('fake', ['bob'])
    expected = [Recipient('smtp', None, 'a@example.com'), Recipient('fake', None, 'bob')]

    assert smtp + fake == expected
    smtp_tuple = (recipients(SMTPMessenger, ['a@example.com']),)
    fake_tuple = (recipients('fake', ['bob']),)
    assert list(smtp + fake_tuple) == expected
    assert list(smtp_tuple + fake) == expected


def dispatch_targets(message) -> list:
    return list(message.dispatch_set.order_by('pk').values_list('messenger', 'address'))


def test_schedule_messages_accepts_a_tuple_of_recipients():
    ((message, _dispatches),) = schedule_messages('hi', tuple(recipients('fake', ['ann', 'bob'])))

    assert dispatch_targets(message) == [('fake', 'ann'), ('fake', 'bob')]


def test_schedule_messages_uses_a_generator_of_recipients_for_every_message():
    scheduled = schedule_messages(['one', 'two'], (r for r in recipients('fake', ['ann', 'bob'])))

    assert [dispatch_targets(message) for message, _dispatches in scheduled] == [
        [('fake', 'ann'), ('fake', 'bob')],
        [('fake', 'ann'), ('fake', 'bob')],
    ]


def test_dispatch_create_accepts_one_recipient_a_tuple_a_set_or_a_generator():
    message = Message.objects.create(cls='plain', context={'stext_': 'x'}, dispatches_ready=True)
    ann, bob = recipients('fake', ['ann', 'bob'])

    Dispatch.create(message, ann)
    Dispatch.create(message, (bob,))
    Dispatch.create(message, {ann})
    Dispatch.create(message, (r for r in [bob]))

    assert dispatch_targets(message) == [('fake', 'ann'), ('fake', 'bob'), ('fake', 'ann'), ('fake', 'bob')]


def test_dispatch_create_without_recipients_creates_nothing():
    message = Message.objects.create(cls='plain', context={'stext_': 'x'})

    assert Dispatch.create(message, None) == []
    assert Dispatch.create(message, []) == []
    message.refresh_from_db()
    assert not message.dispatches_ready


def test_a_raw_address_instead_of_recipients_is_refused_naming_it():
    with pytest.raises(ValueError, match="'raw@example.com'"):
        schedule_messages('hi', ['raw@example.com'])

    assert not Message.objects.exists()


def test_garbage_among_recipients_is_refused_naming_it_and_nothing_is_created():
    message = Message.objects.create(cls='plain', context={'stext_': 'x'}, dispatches_ready=True)

    with pytest.raises(ValueError, match='4242'):
        Dispatch.create(message, recipients('fake', ['ann']) + [4242])

    assert not Dispatch.objects.exists()


# Site URL ---------------------------------------------------------------------------------------------


@pytest.fixture
def no_site_env(monkeypatch):
    for name in ('SITE_URL', 'SITE_DOMAIN', 'SITE_PROTO', 'SITE_SCHEME'):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


@pytest.fixture
def greeting_dispatch():
    ((message, _dispatches),) = schedule_messages(
        testapp_sitemessages.GreetingMessage({'name': 'Ann'}), recipients('fake', 'ann')
    )
    return message, Dispatch.objects.get(message=message)


def test_site_url_defaults_to_an_undefined_domain(no_site_env):
    assert get_site_url() == 'http://undefined-domain.local'


@pytest.mark.parametrize('configured', ['https://example.com', 'https://example.com/'])
def test_configured_site_url_gives_directive_urls_without_a_double_slash(no_site_env, greeting_dispatch, configured):
    message, dispatch = greeting_dispatch

    with override_settings(SITEMESSAGE_SITE_URL=configured):
        assert get_site_url() == 'https://example.com'
        unsubscribe = MessageBase.get_unsubscribe_directive(message, dispatch)
        mark_read = MessageBase.get_mark_read_directive(message, dispatch)

    assert unsubscribe.startswith(f'https://example.com/messages/unsubscribe/{message.pk}/{dispatch.pk}/')
    assert mark_read.startswith(f'https://example.com/messages/ping/{message.pk}/{dispatch.pk}/')
    assert '//' not in unsubscribe.partition('://')[2]
    assert '//' not in mark_read.partition('://')[2]


def test_site_url_follows_settings_changes_at_once(no_site_env):
    assert get_site_url() == 'http://undefined-domain.local'

    with override_settings(SITEMESSAGE_SITE_URL='https://one.example'):
        assert get_site_url() == 'https://one.example'
        with override_settings(SITEMESSAGE_SITE_URL='https://two.example'):
            assert get_site_url() == 'https://two.example'

    assert get_site_url() == 'http://undefined-domain.local'


def test_site_url_falls_back_to_site_domain_and_protocol_settings(no_site_env):
    with override_settings(SITE_DOMAIN='example.org', SITE_PROTO='https'):
        assert get_site_url() == 'https://example.org'
    with override_settings(SITE_DOMAIN='example.org/', SITE_SCHEME='ftp'):
        assert get_site_url() == 'ftp://example.org'
    with override_settings(SITE_DOMAIN='example.org'):
        assert get_site_url() == 'http://example.org'
    with override_settings(SITE_URL='https://whole.example/'):
        assert get_site_url() == 'https://whole.example'


def test_site_url_from_the_environment_wins_over_settings(no_site_env):
    no_site_env.setenv('SITE_DOMAIN', 'env.example')
    no_site_env.setenv('SITE_PROTO', 'https')

    with override_settings(SITE_DOMAIN='settings.example'):
        assert get_site_url() == 'https://env.example'


def test_sitemessage_site_url_wins_over_the_fallbacks(no_site_env):
    with override_settings(SITE_DOMAIN='example.org', SITEMESSAGE_SITE_URL='https://messages.example/'):
        assert get_site_url() == 'https://messages.example'


# Message types for reusable applications ------------------------------------------------------------------


def test_app_gets_the_default_message_type_unless_overridden():
    class ShoutingEmail(EmailTextMessage):
        alias = 'shouting_email'

    register_message_types(ShoutingEmail)
    assert get_message_type_for_app('shop', 'email_plain') is EmailTextMessage

    override_message_type_for_app('shop', 'email_plain', 'shouting_email')

    assert get_message_type_for_app('shop', 'email_plain') is ShoutingEmail
    assert get_message_type_for_app('shop', 'email_html') is EmailHtmlMessage
    assert get_message_type_for_app('blog', 'email_plain') is EmailTextMessage


def test_app_override_to_an_unregistered_type_raises_naming_it():
    override_message_type_for_app('shop', 'email_plain', 'never_registered')

    with pytest.raises(UnknownMessageTypeError, match='`never_registered`'):
        get_message_type_for_app('shop', 'email_plain')


def test_app_default_type_that_is_not_registered_raises():
    with pytest.raises(UnknownMessageTypeError, match='`app_specific`'):
        get_message_type_for_app('shop', 'app_specific')


# Autodiscovery ---------------------------------------------------------------------------------------------


def test_app_sitemessages_module_is_imported_by_package_or_app_config_path():
    assert import_app_sitemessage_module('tests.testapp') is testapp_sitemessages
    assert import_app_sitemessage_module('tests.testapp.apps.TestappConfig') is testapp_sitemessages


def test_app_without_sitemessages_module_gives_none():
    assert import_app_sitemessage_module('django.contrib.auth') is None
    assert import_app_sitemessage_module('sitemessage.apps.SitemessageConfig') is None
    assert import_app_sitemessage_module('no_such_app_anywhere') is None


def test_project_modules_are_discovered_among_installed_apps():
    assert testapp_sitemessages in import_project_sitemessage_modules()


@pytest.fixture
def make_app(tmp_path, monkeypatch):
    """Write a throw-away app package on sys.path: make_app(name, {module: source})."""
    monkeypatch.syspath_prepend(str(tmp_path))
    created = []

    def make(name, modules):
        package = tmp_path / name
        package.mkdir()
        (package / '__init__.py').write_text('')
        for module, source in modules.items():
            (package / f'{module}.py').write_text(textwrap.dedent(source))
        created.append(name)
        return name

    yield make
    for name in created:
        for module in [m for m in sys.modules if m == name or m.startswith(f'{name}.')]:
            del sys.modules[module]


def test_import_error_inside_an_existing_sitemessages_module_propagates(make_app):
    app = make_app('sm_broken_app', {'sitemessages': 'import sm_module_that_does_not_exist\n'})

    with pytest.raises(ImportError, match='sm_module_that_does_not_exist'):
        import_app_sitemessage_module(app)


def test_module_name_to_discover_follows_the_setting(make_app):
    app = make_app('sm_renamed_app', {'notifications': 'FOUND = True\n'})

    assert import_app_sitemessage_module(app) is None
    with override_settings(SITEMESSAGE_APP_MODULE_NAME='notifications'):
        module = import_app_sitemessage_module(app)

    assert module.FOUND is True


def test_project_type_registered_under_a_builtin_alias_wins():
    assert get_registered_message_type('plain') is testapp_sitemessages.OverriddenPlain
    assert get_registered_message_type('email_plain') is EmailTextMessage
    assert get_registered_messenger_object('fake').__class__ is FakeMessenger


# Settings -------------------------------------------------------------------------------------------------


def test_documented_settings_constants_have_their_defaults():
    assert sm_settings.APP_MODULE_NAME == 'sitemessages'
    assert sm_settings.INIT_BUILTIN_MESSAGE_TYPES is True
    assert sm_settings.EMAIL_BACKEND_MESSAGES_PRIORITY is None
    assert sm_settings.SHORTCUT_EMAIL_MESSENGER_TYPE == 'smtp'
    assert sm_settings.SHORTCUT_EMAIL_MESSAGE_TYPE is None
    assert sm_settings.SITE_URL is None


@override_settings(
    SITEMESSAGE_APP_MODULE_NAME='notices',
    SITEMESSAGE_INIT_BUILTIN_MESSAGE_TYPES=False,
    SITEMESSAGE_EMAIL_BACKEND_MESSAGES_PRIORITY=7,
    SITEMESSAGE_SHORTCUT_EMAIL_MESSENGER_TYPE='fake',
    SITEMESSAGE_SHORTCUT_EMAIL_MESSAGE_TYPE='email_html',
    SITEMESSAGE_SITE_URL='https://x.example',
)
def test_settings_constants_reflect_overridden_settings():
    assert (
        sm_settings.APP_MODULE_NAME,
        sm_settings.INIT_BUILTIN_MESSAGE_TYPES,
        sm_settings.EMAIL_BACKEND_MESSAGES_PRIORITY,
        sm_settings.SHORTCUT_EMAIL_MESSENGER_TYPE,
        sm_settings.SHORTCUT_EMAIL_MESSAGE_TYPE,
        sm_settings.SITE_URL,
    ) == ('notices', False, 7, 'fake', 'email_html', 'https://x.example')


def test_overridden_shortcut_and_backend_settings_take_effect():
    from django.core.mail import send_mail

    from sitemessage.shortcuts import schedule_email

    with override_settings(
        SITEMESSAGE_SHORTCUT_EMAIL_MESSENGER_TYPE='fake', SITEMESSAGE_SHORTCUT_EMAIL_MESSAGE_TYPE='email_html'
    ):
        schedule_email('plain words', 'ann')
    with override_settings(
        EMAIL_BACKEND='sitemessage.backends.EmailBackend',
        SITEMESSAGE_EMAIL_BACKEND_MESSAGES_PRIORITY=7,
        SITEMESSAGE_SHORTCUT_EMAIL_MESSENGER_TYPE='fake',
    ):
        send_mail('Subject', 'Body', 'from@example.com', ['bob'])

    assert list(
        Dispatch.objects.order_by('pk').values_list('messenger', 'address', 'message__cls', 'message__priority')
    ) == [('fake', 'ann', 'email_html', 0), ('fake', 'bob', 'email_html', 7)]


def test_unknown_settings_constant_is_an_attribute_error():
    with pytest.raises(AttributeError):
        sm_settings.NO_SUCH_SETTING


def test_settings_exceptions_signals_and_utils_import_without_the_app_registry():
    code = textwrap.dedent("""
        import sys
        import sitemessage.settings, sitemessage.exceptions, sitemessage.signals, sitemessage.utils
        from sitemessage.utils import Recipient, recipients, register_messenger_objects, get_site_url
        assert 'sitemessage.models' not in sys.modules, 'models imported'
        print('ok')
    """)
    result = subprocess.run(
        [sys.executable, '-c', code],
        capture_output=True,
        text=True,
        timeout=60,
        env={'DJANGO_SETTINGS_MODULE': 'tests.settings'},
        cwd=REPO_ROOT,
    )

    assert result.stdout.strip() == 'ok', result.stderr


# Exceptions (SPEC 7.11) ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    'error, parent',
    [
        (SiteMessageError, Exception),
        (SiteMessageConfigurationError, SiteMessageError),
        (UnknownMessageTypeError, SiteMessageError),
        (MessengerException, SiteMessageError),
        (UnknownMessengerError, MessengerException),
        (MessengerWarmupException, MessengerException),
    ],
)
def test_exception_hierarchy_is_the_documented_one(error, parent):
    assert issubclass(error, parent)


def test_unknown_message_type_and_configuration_errors_are_not_messenger_errors():
    assert not issubclass(UnknownMessageTypeError, MessengerException)
    assert not issubclass(SiteMessageConfigurationError, MessengerException)


def messenger_exception(module, name):
    from importlib.util import find_spec

    missing = find_spec(f'sitemessage.messengers.{module}') is None
    return pytest.param(
        module,
        name,
        marks=pytest.mark.skipif(missing, reason=f'sitemessage.messengers.{module} does not exist yet'),
        id=name,
    )


@pytest.mark.parametrize(
    'module, name',
    [
        messenger_exception('telegram', 'TelegramMessengerException'),
        messenger_exception('facebook', 'FacebookMessengerException'),
        messenger_exception('vkontakte', 'VKontakteMessengerException'),
    ],
)
def test_messenger_specific_exceptions_are_messenger_exceptions(module, name):
    from importlib import import_module

    error = getattr(import_module(f'sitemessage.messengers.{module}'), name)

    assert issubclass(error, MessengerException)


# App config and migrations --------------------------------------------------------------------------------


def test_app_keeps_integer_ids_whatever_default_auto_field_says():
    assert settings.DEFAULT_AUTO_FIELD == 'django.db.models.BigAutoField'
    assert apps.get_app_config('sitemessage').default_auto_field == 'django.db.models.AutoField'
    for model in (Message, Dispatch, DispatchError, Subscription):
        assert type(model._meta.pk) is models.AutoField, model


def test_models_need_no_new_migration():
    out = StringIO()

    call_command('makemigrations', 'sitemessage', check=True, dry_run=True, stdout=out)

    assert "No changes detected in app 'sitemessage'" in out.getvalue()
