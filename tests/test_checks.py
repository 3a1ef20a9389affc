"""System checks (sitemessage.W001-W005) and ``Subscription.create`` refusing unknown aliases."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from django.core.checks import run_checks
from django.db import connection
from django.test import override_settings
from django.test.utils import CaptureQueriesContext

from sitemessage.messages.base import MessageBase
from sitemessage.models import Subscription
from sitemessage.toolbox import register_message_types
from tests.testapp.sitemessages import GreetingMessage

ROOT = Path(__file__).resolve().parent.parent


def ours(databases=None):
    """What ``manage.py check`` (``check --database <alias>`` with ``databases``) reports of sitemessage."""
    return [warning for warning in run_checks(databases=databases) if warning.id.startswith('sitemessage.')]


def ids(databases=None):
    return sorted(warning.id for warning in ours(databases))


def messages(check_id, databases=None):
    return [warning.msg for warning in ours(databases) if warning.id == check_id]


# W001: links to undefined-domain.local ----------------------------------------------------------------


def test_w001_without_a_site_url_links_would_go_to_undefined_domain():
    assert ids() == ['sitemessage.W001']
    assert 'http://undefined-domain.local' in messages('sitemessage.W001')[0]


@pytest.mark.parametrize(
    'configured',
    [
        {'SITEMESSAGE_SITE_URL': 'https://www.example.org'},
        {'SITE_URL': 'https://www.example.org'},
        {'SITE_DOMAIN': 'example.org'},
    ],
)
def test_w001_is_silent_when_a_site_url_is_configured(configured):
    with override_settings(**configured):
        assert ids() == []


def test_w001_is_silent_when_the_site_url_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv('SITE_DOMAIN', 'example.org')
    assert ids() == []


def test_checks_are_skipped_when_other_apps_are_checked():
    from django.apps import apps

    checked = run_checks(app_configs=[apps.get_app_config('auth')])
    assert [w for w in checked if w.id.startswith('sitemessage.')] == []


# W002: message types naming unknown messengers ---------------------------------------------------------


class Typo(MessageBase):
    alias = 'typo'
    supported_messengers = ['fake', 'smpt']


@override_settings(SITEMESSAGE_SITE_URL='https://www.example.org')
def test_w002_a_message_type_names_an_unregistered_messenger():
    register_message_types(Typo)

    assert ids() == ['sitemessage.W002']
    (message,) = messages('sitemessage.W002')
    assert '`typo`' in message and 'smpt' in message and 'registered: fake' in message
    assert 'fake,' not in message.split('(registered')[0]  # only the unknown one is named


class FallbackTypo(MessageBase):
    alias = 'fallback_typo'
    supported_messengers = ['fake']
    fallback_messengers = ('fake', 'telegarm')


@override_settings(SITEMESSAGE_SITE_URL='https://www.example.org')
def test_w002_a_message_type_names_an_unregistered_fallback_messenger():
    register_message_types(FallbackTypo)

    assert ids() == ['sitemessage.W002']
    (message,) = messages('sitemessage.W002')
    assert '`fallback_typo`' in message and 'in fallback_messengers: telegarm (registered: fake)' in message


@override_settings(SITEMESSAGE_SITE_URL='https://www.example.org')
def test_w002_ignores_built_in_types_of_messengers_the_project_does_not_use():
    from sitemessage.utils import get_registered_message_types, get_registered_messenger_objects

    assert 'email_plain' in get_registered_message_types() and 'smtp' not in get_registered_messenger_objects()

    assert ids() == []


# W003, W004: stored subscriptions with unknown aliases -------------------------------------------------


@pytest.mark.django_db
@override_settings(SITEMESSAGE_SITE_URL='https://www.example.org')
def test_w003_w004_stored_subscriptions_with_unknown_aliases_are_reported_with_a_database_only():
    Subscription.create('ann@example.com', 'greeting', 'fake')
    Subscription.objects.create(address='bob@example.com', message_cls='emial_plain', messenger_cls='fake')
    Subscription.objects.create(address='cid@example.com', message_cls='emial_plain', messenger_cls='smpt')

    with CaptureQueriesContext(connection) as queries:
        assert ids() == []  # a plain `manage.py check`: no database access
    assert [query['sql'] for query in queries if 'sitemessage' in query['sql']] == []

    assert ids(['default']) == ['sitemessage.W003', 'sitemessage.W004']
    assert messages('sitemessage.W003', ['default'])[0].startswith(
        '2 subscription(s) in database `default` name unregistered message type(s): emial_plain (registered: '
    )
    assert messages('sitemessage.W004', ['default'])[0].startswith(
        '1 subscription(s) in database `default` name unregistered messenger(s): smpt (registered: fake)'
    )


@pytest.mark.django_db
@override_settings(SITEMESSAGE_SITE_URL='https://www.example.org')
def test_database_checks_are_clean_for_known_subscriptions():
    Subscription.create('ann@example.com', 'greeting', 'fake')

    assert ids(['default']) == []


def _django(*args):
    env = {**os.environ, 'DJANGO_SETTINGS_MODULE': 'tests.settings', 'SITEMESSAGE_TEST_DB': 'sqlite'}
    return subprocess.run(
        [sys.executable, '-m', 'django', *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )


def test_database_checks_run_before_migrations_on_an_empty_database_without_failing():
    """``migrate`` runs the database checks first, on a database without any table (SQLite in memory)."""
    checked = _django('check', '--database', 'default')
    migrated = _django('migrate', '--database', 'default', '-v', '0')

    assert checked.returncode == 0, checked.stderr
    assert 'sitemessage.W001' in checked.stderr and 'Traceback' not in checked.stderr
    assert migrated.returncode == 0, migrated.stderr
    assert 'Traceback' not in migrated.stderr


# W001 and W005 with the Sites framework ------------------------------------------------------------

SITES_SETTINGS = """
from tests.settings import *  # noqa
INSTALLED_APPS = [*INSTALLED_APPS, 'django.contrib.sites']
SITE_ID = 1
DATABASES = {'default': {'ENGINE': 'django.db.backends.sqlite3', 'NAME': %r}}
"""


def test_w005_w001_the_sites_framework_gives_the_domain_once_it_is_set(tmp_path):
    """In a project of its own (a settings module and an SQLite file): the Sites framework installed."""
    (tmp_path / 'sites_settings.py').write_text(SITES_SETTINGS % str(tmp_path / 'db.sqlite3'))

    def django(*args):
        env = {
            **os.environ,
            'DJANGO_SETTINGS_MODULE': 'sites_settings',
            'SITEMESSAGE_TEST_DB': 'sqlite',
            'PYTHONPATH': os.pathsep.join([str(tmp_path), str(ROOT)]),
        }
        result = subprocess.run(
            [sys.executable, '-m', 'django', *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
        )
        assert result.returncode == 0, result.stderr
        return result.stderr

    def warnings():
        return sorted(set(re.findall(r'sitemessage\.W\d+', django('check', '--database', 'default'))))

    assert 'sitemessage.W' not in django('check')  # without a database the domain is unknown: no guess
    django('migrate', '-v', '0')
    assert warnings() == ['sitemessage.W005']  # Django's default Site: example.com

    django('shell', '-c', "from django.contrib.sites.models import Site; Site.objects.update(domain='www.example.org')")
    assert warnings() == []

    django('shell', '-c', 'from django.contrib.sites.models import Site; Site.objects.all().delete()')
    assert warnings() == ['sitemessage.W001']


# Subscription.create refuses unknown aliases -----------------------------------------------------------


@pytest.mark.django_db
def test_subscription_create_refuses_an_unknown_message_type_naming_it_and_the_known_ones():
    with pytest.raises(ValueError) as error:
        Subscription.create('ann@example.com', 'emial_plain', 'fake')

    assert str(error.value).startswith('Cannot subscribe to an unknown message type `emial_plain` (registered: ')
    assert 'email_plain' in str(error.value) and 'greeting' in str(error.value)
    assert not Subscription.objects.exists()


@pytest.mark.django_db
def test_subscription_create_refuses_an_unknown_messenger(user):
    with pytest.raises(ValueError, match=r'unknown messenger `smpt` \(registered: fake\)'):
        Subscription.create(user, 'greeting', 'smpt')

    assert not Subscription.objects.exists()


@pytest.mark.django_db
def test_subscription_create_accepts_registered_aliases_and_classes(user, fake_messenger):
    by_alias = Subscription.create(user, 'greeting', 'fake')

    assert Subscription.create(user.pk, GreetingMessage, fake_messenger) == by_alias
