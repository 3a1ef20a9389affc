"""sitemessage settings, read from Django settings at call time so ``override_settings`` works.

Every setting is ``SITEMESSAGE_<NAME>`` in the project's settings. The documented 1.4.0 module
constants (``sitemessage.settings.SITE_URL`` and friends) are still importable; they are
resolved through the module ``__getattr__`` and so reflect the live value.
"""
from __future__ import annotations

from typing import Any, Optional

from django.conf import settings as django_settings

from .exceptions import SiteMessageConfigurationError

DEFAULTS: dict[str, Any] = {
    # Discovery, shortcuts, EmailBackend, links.
    'APP_MODULE_NAME': 'sitemessages',
    'INIT_BUILTIN_MESSAGE_TYPES': True,
    'EMAIL_BACKEND_MESSAGES_PRIORITY': None,
    'SHORTCUT_EMAIL_MESSENGER_TYPE': 'smtp',
    'SHORTCUT_EMAIL_MESSAGE_TYPE': None,
    'SITE_URL': None,
    # The delivery engine.
    'SEND_BATCH_SIZE': 200,
    'SEND_LEASE_SECONDS': 600,
    'RETRY_DELAY_SECONDS': 30,
    'RETRY_DELAY_MAX_SECONDS': 6 * 3600,
    'CLEANUP_BATCH_SIZE': 1000,
    'RATE_LIMITS': {},
    'RATE_LIMITS_PER_RECIPIENT': {},
    'RATE_LIMIT_CACHE': 'default',
    'ENQUEUE_ON_SCHEDULE': None,
    'WORKER_IDLE_SECONDS': 5,
    'WORKER_PREPARE_DISPATCHES': False,
    # Seconds to wait for an SMTP or XMPP server (connect, reply); EMAIL_TIMEOUT or a messenger's own wins.
    'CONNECT_TIMEOUT': 30,
    'PARALLEL_CONNECTIONS': {},
    'HTTP_TIMEOUT': 10,
    # A GET of an unsubscribe link shows a confirmation page (link scanners GET); only a POST unsubscribes.
    'UNSUBSCRIBE_CONFIRM': True,
    # Deprecated: accept old links' single signature (one for both actions) in both views, for mail already sent.
    'ACCEPT_LEGACY_LINK_SIGNATURES': True,
    'FACEBOOK_GRAPH_VERSION': 'v24.0',
    'VKONTAKTE_API_VERSION': '5.199',
    # Which of Django 6.1's MAILERS holds the SMTP options (None: found by backend).
    'SMTP_MAILER': None,
    # Prometheus metrics (sitemessage.metrics).
    'METRICS': False,
    'METRICS_PORT': None,
    'METRICS_ADDRESS': '127.0.0.1',
}


def get_setting(name: str) -> Any:
    """Return the live value of ``SITEMESSAGE_<name>``, or its default."""
    return getattr(django_settings, f'SITEMESSAGE_{name}', DEFAULTS[name])


def get_positive_int_setting(name: str) -> int:
    """Return ``SITEMESSAGE_<name>`` as a positive integer; a clear error names a bad value."""
    value = get_setting(name)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise SiteMessageConfigurationError(
            f'SITEMESSAGE_{name} must be a positive integer, got {value!r}.')
    return value


def get_timeout_setting(name: str) -> Optional[float]:
    """Return ``SITEMESSAGE_<name>`` as seconds (a positive number, or None: no timeout); a bad value is named."""
    value = get_setting(name)
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0):
        raise SiteMessageConfigurationError(
            f'SITEMESSAGE_{name} must be a positive number of seconds or None, got {value!r}.')
    return value


def __getattr__(name: str) -> Any:
    if name in DEFAULTS:
        return get_setting(name)
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
