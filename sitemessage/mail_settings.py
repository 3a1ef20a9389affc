"""Django's SMTP settings as :class:`~sitemessage.messengers.smtp.SMTPMessenger` reads them.

Django 6.1 replaces ``EMAIL_HOST``, ``EMAIL_PORT``... with the ``OPTIONS`` of a mailer in
``MAILERS`` and deprecates the old names (reading one warns). So a project that defines
``MAILERS`` configures the messenger there, and one that still uses ``EMAIL_*`` keeps working on
every Django version without the package adding deprecation warnings of its own.
"""

from __future__ import annotations

from typing import Any, Optional

from django.conf import global_settings, settings
from django.core.exceptions import ImproperlyConfigured

from .settings import get_setting

SMTP_BACKEND = 'django.core.mail.backends.smtp.EmailBackend'

# ``EMAIL_*`` setting -> its key among the OPTIONS of Django 6.1's SMTP mailer.
MAILER_OPTION_NAMES = {
    'EMAIL_HOST': 'host',
    'EMAIL_PORT': 'port',
    'EMAIL_HOST_USER': 'username',
    'EMAIL_HOST_PASSWORD': 'password',
    'EMAIL_USE_TLS': 'use_tls',
    'EMAIL_USE_SSL': 'use_ssl',
    'EMAIL_TIMEOUT': 'timeout',
    'EMAIL_SSL_CERTFILE': 'ssl_certfile',
    'EMAIL_SSL_KEYFILE': 'ssl_keyfile',
}


def smtp_mailer_options() -> Optional[dict]:
    """Return the OPTIONS of the project's SMTP mailer, or None when ``MAILERS`` is not defined.

    The mailer is ``SITEMESSAGE_SMTP_MAILER`` when set; else ``default`` when it is an SMTP mailer
    (no ``BACKEND`` means SMTP); else the first mailer whose backend is SMTP (a project whose
    default mailer is :class:`sitemessage.backends.EmailBackend` keeps its relay under another
    alias). ``{}`` when ``MAILERS`` has no SMTP mailer.
    """
    mailers = getattr(settings, 'MAILERS', None)
    if mailers is None:
        return None
    alias = get_setting('SMTP_MAILER')
    if alias is not None:
        if alias not in mailers:
            raise ImproperlyConfigured(
                f'SITEMESSAGE_SMTP_MAILER names {alias!r}, which is not in MAILERS '
                f'(known: {", ".join(map(repr, mailers)) or "none"}).'
            )
        return dict(mailers[alias].get('OPTIONS') or {})
    smtp_aliases = [name for name, config in mailers.items() if config.get('BACKEND', SMTP_BACKEND) == SMTP_BACKEND]
    if not smtp_aliases:
        return {}
    chosen = 'default' if 'default' in smtp_aliases else smtp_aliases[0]
    return dict(mailers[chosen].get('OPTIONS') or {})


def email_setting(name: str, default: Any = None) -> Any:
    """Return the value of an ``EMAIL_*`` SMTP setting (``EMAIL_HOST``...), wherever the project keeps it.

    With ``MAILERS`` (Django 6.1+) the value comes from the SMTP mailer's OPTIONS. Otherwise from
    the ``EMAIL_*`` setting, read without the deprecation warning that Django 6.1 attaches to
    every read (the project's settings module is what uses the deprecated name, and Django warns
    about that at start-up already).
    """
    if name not in MAILER_OPTION_NAMES:  # DEFAULT_FROM_EMAIL and the like: not deprecated
        return getattr(settings, name, default)
    options = smtp_mailer_options()
    if options is not None:
        value = options.get(MAILER_OPTION_NAMES[name])
        if value is None and name == 'EMAIL_PORT':
            return _default_port(options)
        return default if value is None else value
    if not settings.is_overridden(name):
        return getattr(global_settings, name, default)
    # The wrapped settings object does not warn; LazySettings.__getattr__ does (Django 6.1).
    return getattr(settings._wrapped, name, default)


def _default_port(options: dict) -> int:
    """Django 6.1's SMTP mailer picks the port from the security options when none is given."""
    if options.get('use_ssl'):
        return 465
    if options.get('use_tls'):
        return 587
    return 25
