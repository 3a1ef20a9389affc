"""SMTP settings: ``MAILERS`` (Django 6.1+) or ``EMAIL_*``, read without deprecation warnings of ours."""

import warnings

import django
import pytest
from django.core.exceptions import ImproperlyConfigured
from django.test import override_settings

from sitemessage.mail_settings import email_setting, smtp_mailer_options
from sitemessage.messengers.smtp import SMTPMessenger

MAILERS = {
    'default': {'BACKEND': 'sitemessage.backends.EmailBackend'},
    'relay': {
        'OPTIONS': {'host': 'relay.example.org', 'username': 'bot', 'password': 's3cret', 'use_tls': True, 'timeout': 7}
    },
}


def test_email_settings_without_mailers():
    messenger = SMTPMessenger()
    with override_settings(EMAIL_HOST='mail.example.org', EMAIL_PORT=2525, EMAIL_USE_TLS=True):
        assert (messenger.host, messenger.port, messenger.use_tls, messenger.use_ssl) == (
            'mail.example.org',
            2525,
            True,
            False,
        )
    assert smtp_mailer_options() is None


def test_defaults_without_any_setting():
    assert (email_setting('EMAIL_HOST', 'x'), email_setting('EMAIL_PORT', 1)) == ('localhost', 25)


def test_mailers_smtp_alias_found_by_backend():
    """A default mailer that queues through sitemessage: the SMTP relay is the other alias."""
    with override_settings(MAILERS=MAILERS):
        messenger = SMTPMessenger()
        assert (
            messenger.host,
            messenger.port,
            messenger.login,
            messenger.password,
            messenger.use_tls,
            messenger.timeout,
        ) == ('relay.example.org', 587, 'bot', 's3cret', True, 7)


def test_mailers_explicit_alias_and_explicit_argument_wins():
    mailers = {**MAILERS, 'other': {'OPTIONS': {'host': 'other.example.org', 'port': 26, 'use_ssl': True}}}
    with override_settings(MAILERS=mailers, SITEMESSAGE_SMTP_MAILER='other'):
        assert (SMTPMessenger().host, SMTPMessenger().port) == ('other.example.org', 26)
        assert SMTPMessenger(host='explicit.example.org').host == 'explicit.example.org'


def test_mailers_default_port_follows_security_options():
    with override_settings(MAILERS={'default': {'OPTIONS': {'host': 'h', 'use_ssl': True}}}):
        assert SMTPMessenger().port == 465
    with override_settings(MAILERS={'default': {'OPTIONS': {'host': 'h'}}}):
        assert SMTPMessenger().port == 25


def test_unknown_mailer_alias_is_named():
    with override_settings(MAILERS=MAILERS, SITEMESSAGE_SMTP_MAILER='nope'):
        with pytest.raises(ImproperlyConfigured, match="'nope'.*'default', 'relay'"):
            SMTPMessenger().host


def test_mailers_without_smtp_mailer_uses_defaults():
    with override_settings(MAILERS={'default': {'BACKEND': 'django.core.mail.backends.locmem.EmailBackend'}}):
        assert (SMTPMessenger().host, SMTPMessenger().port) == ('localhost', 25)


@pytest.mark.skipif(django.VERSION < (6, 1), reason='Django version: 6.1 deprecates the EMAIL_* settings')
def test_no_deprecation_warning_from_reading_email_settings():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        with override_settings(EMAIL_HOST='mail.example.org'):
            caught.clear()  # override_settings itself warns: that is the project's use of the name
            assert SMTPMessenger().host == 'mail.example.org'
            assert SMTPMessenger().port == 25
            assert [str(w.message) for w in caught] == []  # leaving override_settings warns again
