"""Per-recipient language: resolved when dispatches are created, recorded on them, rendered once per language."""

from __future__ import annotations

import logging

import pytest
from django.db import connection
from django.test import override_settings
from django.test.signals import template_rendered
from django.test.utils import CaptureQueriesContext
from django.utils import translation
from django.utils.translation import gettext_lazy

from sitemessage.languages import UnknownLanguageError
from sitemessage.messages.base import MessageBase
from sitemessage.messages.email import EmailTextMessage
from sitemessage.models import Dispatch, Message, Subscription
from sitemessage.shortcuts import schedule_email
from sitemessage.toolbox import (
    prepare_dispatches,
    recipients,
    register_message_types,
    schedule_messages,
    send_scheduled_messages,
)

LANGUAGES = [('en', 'English'), ('ru', 'Russian'), ('de', 'German')]


def language_by_domain(recipient):
    """The project hook of these tests: ``ivan.ru`` reads Russian, ``hans.de`` German, others: no idea."""
    if recipient.address.endswith('.err'):
        raise RuntimeError('the profile service is down')
    return {'ru': 'ru', 'de': 'de', 'xx': 'xx-garbage'}.get(recipient.address.rpartition('.')[2])


class PolyglotMessage(MessageBase):
    """Rendered by polyglot__fake.tpl, or polyglot__fake.ru.tpl in Russian."""

    alias = 'polyglot'
    supported_messengers = ['fake']


pytestmark = [
    pytest.mark.django_db,
    pytest.mark.usefixtures('languages'),
]


@pytest.fixture
def languages():
    with override_settings(
        LANGUAGES=LANGUAGES,
        LANGUAGE_CODE='en',
        SITEMESSAGE_RECIPIENT_LANGUAGE='tests.test_languages.language_by_domain',
    ):
        register_message_types(PolyglotMessage)
        yield


@pytest.fixture
def renders():
    """The templates rendered during the test, by name."""
    names = []

    def note(sender, template, context, **kwargs):
        names.append(template.name)

    template_rendered.connect(note)
    yield names
    template_rendered.disconnect(note)


def languages_of(dispatches):
    return {dispatch.address: dispatch.language for dispatch in dispatches}


def test_language_comes_from_the_user_then_the_hook_then_language_code(django_user_model):
    russian = django_user_model.objects.create_user('ivan', email='ivan@example.com')
    russian.language = 'ru'  # an attribute (or a field of a custom user model)
    plain = django_user_model.objects.create_user('john', email='john@example.com')

    _message, dispatches = schedule_messages('hi', recipients('fake', [russian, plain, 'hans.de', 'mary.com']))[0]

    assert languages_of(dispatches) == {'ivan': 'ru', 'john': 'en', 'hans.de': 'de', 'mary.com': 'en'}
    assert languages_of(Dispatch.objects.all()) == languages_of(dispatches)


def test_an_address_gets_the_language_active_when_scheduling_and_a_user_language_code(user):
    with translation.override('ru'):
        schedule_messages('hi', recipients('fake', ['mary.com', user]))

    assert languages_of(Dispatch.objects.all()) == {'mary.com': 'ru', 'user1': 'en'}


def test_a_regional_variant_becomes_the_listed_language(user):
    user.language = 'ru-RU'

    _message, dispatches = schedule_messages('hi', recipients('fake', user))[0]

    assert dispatches[0].language == 'ru'


def test_the_language_argument_applies_to_every_recipient(user, smtp_messenger):
    user.language = 'ru'

    schedule_messages(['one', 'two'], recipients('fake', [user, 'hans.de', 'mary.com']), language='de')
    schedule_email('text', 'mary@example.com', language='ru')

    assert set(Dispatch.objects.filter(messenger='fake').values_list('language', flat=True)) == {'de'}
    assert Dispatch.objects.get(messenger='smtp').language == 'ru'


def test_an_unknown_language_argument_is_refused_naming_it():
    with pytest.raises(UnknownLanguageError, match=r"Unknown language 'klingon' \(the `language` argument\)"):
        schedule_messages('hi', recipients('fake', 'mary.com'), language='klingon')

    assert not Message.objects.exists()


@pytest.mark.parametrize('messages', [['one'], ['one', 'two']], ids=['one message', 'bulk'])
def test_a_hook_returning_an_unknown_code_is_refused_at_scheduling(messages):
    with pytest.raises(UnknownLanguageError, match=r"'xx-garbage' \(SITEMESSAGE_RECIPIENT_LANGUAGE for 'bad\.xx'\)"):
        schedule_messages(messages, recipients('fake', ['mary.com', 'bad.xx']))

    assert not Message.objects.exists() and not Dispatch.objects.exists()


def test_a_user_with_an_unknown_language_is_refused_naming_it(user):
    user.language = 'tlh'

    with pytest.raises(UnknownLanguageError, match=rf"'tlh' \(`language` of user {user.pk}\)"):
        schedule_messages('hi', recipients('fake', user))


def test_subscribers_get_their_language_when_dispatches_are_prepared_and_garbage_is_not_fatal(caplog):
    for address in ('ivan.ru', 'bad.xx', 'boom.err', 'mary.com'):
        Subscription.create(address, 'polyglot', 'fake')
    schedule_messages(PolyglotMessage({'name': 'all'}))

    with translation.override('de'), caplog.at_level(logging.WARNING, logger='sitemessage.languages'):
        prepare_dispatches()

    # A worker cannot be told about the hook's garbage: the dispatch is made in the fallback, and it is logged.
    assert languages_of(Dispatch.objects.all()) == {'ivan.ru': 'ru', 'bad.xx': 'de', 'boom.err': 'de', 'mary.com': 'de'}
    assert "Unknown language 'xx-garbage'" in caplog.text
    assert "Language of 'boom.err': the profile service is down Using 'de'." in caplog.text


def test_a_hook_that_raises_at_scheduling_reaches_the_caller_and_nothing_is_stored():
    with pytest.raises(RuntimeError, match='the profile service is down'):
        schedule_messages(PolyglotMessage({'name': 'x'}), recipients('fake', ['mary.com', 'boom.err']))

    assert not Message.objects.exists()


def test_scheduling_resolves_languages_without_a_query_per_recipient(django_user_model):
    users = [django_user_model.objects.create_user(f'u{index}', email=f'u{index}@example.com') for index in range(30)]
    for index, user in enumerate(users):
        user.language = LANGUAGES[index % 3][0]

    def queries(count):
        with CaptureQueriesContext(connection) as captured:
            schedule_messages(['one', 'two'], recipients('fake', users[:count]))
        return len(captured)

    few, many = queries(3), queries(30)
    # SQLite may split the 60 rows' INSERT at its 999 parameters, and the first call asks whether the
    # suppression list holds anything (once a second): one statement either way, no more.
    assert abs(many - few) <= 1
    assert Dispatch.objects.filter(language='de').count() == 2 * (1 + 10)


def test_each_language_is_rendered_once_per_message_not_once_per_recipient(renders, fake_messenger):
    addresses = [f'{name}{index}.{domain}' for index in range(5) for name, domain in (('ivan', 'ru'), ('hans', 'de'))]
    schedule_messages(PolyglotMessage({'name': 'Ann'}), recipients('fake', addresses + ['mary.com', 'john.com']))

    send_scheduled_messages()

    texts = dict(fake_messenger.delivered)
    assert texts['ivan0.ru'] == texts['ivan4.ru'] == '[ru-template] Без темы, Ann\n'  # <name>.ru.tpl wins
    assert texts['hans0.de'] == texts['hans3.de'] == '[de] No Subject, Ann\n'  # no .de template: the plain one
    assert texts['mary.com'] == '[en] No Subject, Ann\n'
    assert sorted(renders) == sorted(
        ['sitemessage/messages/polyglot__fake.ru.tpl'] + ['sitemessage/messages/polyglot__fake.tpl'] * 2
    )
    assert set(Dispatch.objects.values_list('dispatch_status', flat=True)) == {Dispatch.DISPATCH_STATUS_SENT}


@override_settings(SITEMESSAGE_SEND_BATCH_SIZE=4)
def test_a_message_claimed_in_several_batches_is_rendered_once_per_language_for_the_whole_run(renders, fake_messenger):
    addresses = [f'{name}{index}.{domain}' for index in range(6) for name, domain in (('ivan', 'ru'), ('mary', 'com'))]
    schedule_messages(PolyglotMessage({'name': 'Ann'}), recipients('fake', addresses))

    report = send_scheduled_messages()

    assert (report.sent, report.batches) == (12, 3)
    texts = dict(fake_messenger.delivered)
    assert {texts[address] for address in addresses if address.endswith('.ru')} == {'[ru-template] Без темы, Ann\n'}
    assert {texts[address] for address in addresses if address.endswith('.com')} == {'[en] No Subject, Ann\n'}
    assert sorted(renders) == ['sitemessage/messages/polyglot__fake.ru.tpl', 'sitemessage/messages/polyglot__fake.tpl']


def test_a_rendering_is_not_reused_once_the_context_changed(renders, fake_messenger):
    """Grouping merges contexts: a later batch of the message must see the new one."""
    from sitemessage.messages.render_cache import RenderCache, keeping_renderings

    [(message, dispatches)] = schedule_messages(
        PolyglotMessage({'name': 'Ann'}), recipients('fake', ['a.com', 'b.com'])
    )
    cache = RenderCache()
    with keeping_renderings(cache), translation.override('en'):
        first = PolyglotMessage.compile_for_dispatches(message, fake_messenger, dispatches)
        again = PolyglotMessage.compile_for_dispatches(message, fake_messenger, dispatches)
        message.context = {**message.context, 'name': 'Bob'}
        changed = PolyglotMessage.compile_for_dispatches(message, fake_messenger, dispatches)

    assert (str(first[0]), str(again[0]), str(changed[0])) == (
        '[en] No Subject, Ann\n',
        '[en] No Subject, Ann\n',
        '[en] No Subject, Bob\n',
    )
    assert len(renders) == 2 and cache.hits == 1


def test_a_dispatch_from_before_languages_renders_in_the_active_language(fake_messenger):
    _message, dispatches = schedule_messages(PolyglotMessage({'name': 'Old'}), recipients('fake', 'ivan.ru'))[0]
    Dispatch.objects.filter(pk=dispatches[0].pk).update(language=None)  # as a 1.4.0 row migrated forward

    send_scheduled_messages()

    assert fake_messenger.delivered == [('ivan.ru', '[en] No Subject, Old\n')]


def test_email_subject_no_subject_and_list_id_follow_the_recipient(smtp_server, smtp_messenger):
    with translation.override('de'):  # the subject is stored translatable, whatever is active when scheduling
        schedule_messages(
            [EmailTextMessage(gettext_lazy('Notification'), 'body'), EmailTextMessage(None, 'body')],
            recipients('smtp', ['ivan@mail.ru', 'mary@mail.com']),
        )

    send_scheduled_messages()

    received = sorted(
        (str(mail['To']), str(mail['Subject']), str(mail['List-Id']).partition(' <')[0])
        for mail in smtp_server.handler.messages()
    )
    assert received == [
        ('ivan@mail.ru', 'Без темы', 'Уведомление по эл. почте'),
        ('ivan@mail.ru', 'Уведомление', 'Уведомление по эл. почте'),
        ('mary@mail.com', 'No Subject', 'Email notification'),
        ('mary@mail.com', 'Notification', 'Email notification'),
    ]


def test_a_send_run_renders_languages_without_a_query_per_dispatch(fake_messenger):
    def queries(count):
        addresses = [f'r{count}x{index}.{("ru", "de", "com")[index % 3]}' for index in range(count)]
        schedule_messages(PolyglotMessage({'name': 'Q'}), recipients('fake', addresses))
        with CaptureQueriesContext(connection) as captured:
            send_scheduled_messages()
        return len(captured)

    few, many = queries(3), queries(30)
    assert few <= many <= few + 1  # SQLite may split the 60 rows' INSERT at its 999 parameters, nothing more
    assert len(fake_messenger.delivered) == 33
    assert Dispatch.objects.filter(dispatch_status=Dispatch.DISPATCH_STATUS_SENT).count() == 33


def test_the_admin_shows_and_filters_dispatches_by_language(admin_client):
    from django.urls import reverse

    schedule_messages('Hi', recipients('fake', ['ivan.ru', 'mary.com']))
    dispatches_url = reverse('admin:sitemessage_dispatch_changelist')

    russian = admin_client.get(dispatches_url, {'language': 'ru'})
    (dispatch,) = russian.context['cl'].result_list
    assert dispatch.address == 'ivan.ru'
    page = admin_client.get(reverse('admin:sitemessage_dispatch_change', args=[dispatch.pk])).content.decode()
    assert 'field-language' in page
