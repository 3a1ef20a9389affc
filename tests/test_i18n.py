"""Shipped translations: compiled catalogues for en and ru, and Russian where users and staff read text."""

from __future__ import annotations

import gettext
from pathlib import Path

import pytest
from django.apps import apps
from django.utils import translation

import sitemessage
from sitemessage.messengers.smtp import SMTPMessenger
from sitemessage.models import Dispatch, Subscription

LOCALE = Path(sitemessage.__file__).resolve().parent / 'locale'


@pytest.mark.parametrize('language', ['en', 'ru'])
def test_compiled_catalogue_is_shipped_and_loads(language):
    mo = LOCALE / language / 'LC_MESSAGES' / 'django.mo'

    with mo.open('rb') as stream:
        catalogue = gettext.GNUTranslations(stream)

    assert (LOCALE / language / 'LC_MESSAGES' / 'django.po').exists()
    assert catalogue.info().get('content-type', '').lower().endswith('charset=utf-8')


def test_russian_catalogue_translates_the_documented_strings():
    with (LOCALE / 'ru' / 'LC_MESSAGES' / 'django.mo').open('rb') as stream:
        ru = gettext.GNUTranslations(stream).gettext

    assert {
        msgid: ru(msgid)
        for msgid in (
            'Messaging',
            'E-mail',
            'No Subject',
            'Dispatch',
            'Pending',
            'Processing',
            'Sent',
            'Error',
            'Failed',
            'this link',
        )
    } == {
        'Messaging': 'Корреспонденция',
        'E-mail': 'Эл. почта',
        'No Subject': 'Без темы',
        'Dispatch': 'Депеша',
        'Pending': 'Ожидает',
        'Processing': 'В обработке',
        'Sent': 'Отправлена',
        'Error': 'Ошибка',
        'Failed': 'Провал',
        'this link': 'этой ссылкой',
    }


def test_dispatch_statuses_read_in_russian():
    with translation.override('ru'):
        labels = {status: str(label) for status, label in Dispatch.DISPATCH_STATUSES}
        one = Dispatch(dispatch_status=Dispatch.DISPATCH_STATUS_FAILED).get_dispatch_status_display()

    assert labels == {
        Dispatch.DISPATCH_STATUS_PENDING: 'Ожидает',
        Dispatch.DISPATCH_STATUS_PROCESSING: 'В обработке',
        Dispatch.DISPATCH_STATUS_SENT: 'Отправлена',
        Dispatch.DISPATCH_STATUS_ERROR: 'Ошибка',
        Dispatch.DISPATCH_STATUS_FAILED: 'Провал',
    }
    assert one == 'Провал'


def test_app_models_and_messenger_titles_follow_the_active_language():
    with translation.override('ru'):
        russian = (
            str(apps.get_app_config('sitemessage').verbose_name),
            str(Dispatch._meta.verbose_name),
            str(SMTPMessenger.title),
        )
    with translation.override('en'):
        english = (
            str(apps.get_app_config('sitemessage').verbose_name),
            str(Dispatch._meta.verbose_name),
            str(SMTPMessenger.title),
        )

    assert russian == ('Корреспонденция', 'Депеша', 'Эл. почта')
    assert english == ('Messaging', 'Dispatch', 'E-mail')


@pytest.mark.django_db
def test_preferences_table_titles_are_those_of_the_request_language(smtp_messenger, django_user_model):
    from sitemessage.toolbox import get_user_preferences_for_ui

    user = django_user_model.objects.create_user('ivan', email='ivan@example.com')
    Subscription.create(user, 'email_html', 'smtp')

    with translation.override('ru'):
        titles, rows = get_user_preferences_for_ui(user)
    with translation.override('en'):
        english_titles, _rows = get_user_preferences_for_ui(user)

    assert 'Эл. почта' in titles and 'Уведомление по эл. почте' in rows
    assert 'E-mail' in english_titles


@pytest.mark.django_db
def test_email_without_a_subject_and_its_footer_are_russian_when_sent_in_russian(smtp_messenger, smtp_server):
    from sitemessage.messages.email import EmailHtmlMessage
    from sitemessage.toolbox import recipients, schedule_messages, send_scheduled_messages

    with translation.override('ru'):
        schedule_messages(EmailHtmlMessage('', {'contents': 'Привет'}), recipients('smtp', 'ivan@example.com'))
        send_scheduled_messages()

    (mail,) = smtp_server.handler.messages()
    assert mail['Subject'] == 'Без темы'
    html = mail.get_body(('html',)).get_content()
    assert 'Вы можете отписаться от этой рассылки' in html and 'этой ссылкой</a>' in html


@pytest.mark.django_db
def test_connection_threads_write_in_the_language_active_where_the_run_started(smtp_server):
    """Django keeps the active language per thread: each connection's thread must be told it."""
    from sitemessage.messages.email import EmailTextMessage
    from sitemessage.messengers.smtp import SMTPMessenger
    from sitemessage.toolbox import recipients, register_messenger_objects, schedule_messages, send_scheduled_messages

    register_messenger_objects(
        SMTPMessenger('robot@example.com', host='127.0.0.1', port=smtp_server.port, connections=3)
    )
    addresses = [f'user{n}@example.com' for n in range(6)]
    with translation.override('ru'):
        schedule_messages(EmailTextMessage('', 'Привет'), recipients('smtp', addresses))
        send_scheduled_messages()

    assert [mail['Subject'] for mail in smtp_server.handler.messages()] == ['Без темы'] * 6
