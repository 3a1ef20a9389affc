"""sitemessage settings, read from Django settings at call time so ``override_settings`` works.

Every setting is ``SITEMESSAGE_<NAME>`` in the project's settings. The documented 1.4.0 module
constants (``sitemessage.settings.SITE_URL`` and friends) are still importable; they are
resolved through the module ``__getattr__`` and so reflect the live value.
"""

from __future__ import annotations

from typing import Any, Callable, NoReturn, Optional

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
    # Each recipient's language (sitemessage.languages): a callable or dotted path taking a Recipient.
    'RECIPIENT_LANGUAGE': None,
    # The delivery engine.
    'SEND_BATCH_SIZE': 200,
    'SEND_LEASE_SECONDS': 600,
    # Sent e-mails recorded every this many, before their batch is stored: after kill -9 at most about
    # this many (and those on the wire) are sent again. None: per batch (each record is a commit).
    'OUTCOME_FLUSH_SIZE': None,
    # Subscriptions prepare_dispatches() turns into dispatches per transaction (one bulk insert).
    'PREPARE_CHUNK_SIZE': 2000,
    # Seconds an idempotency key of schedule_messages() is kept (a repeat within it stores nothing); None: forever.
    'IDEMPOTENCY_RETENTION': 24 * 3600,
    # After this many permanent refusals of an address (SMTP 5xx to RCPT, a blocked bot) it is suppressed; None: never.
    'SUPPRESS_AFTER_FAILURES': None,
    'RETRY_DELAY_SECONDS': 30,
    'RETRY_DELAY_MAX_SECONDS': 6 * 3600,
    'CLEANUP_BATCH_SIZE': 1000,
    'RATE_LIMITS': {},
    'RATE_LIMITS_PER_RECIPIENT': {},
    'RATE_LIMIT_CACHE': 'default',
    'ENQUEUE_ON_SCHEDULE': None,
    # How idle workers are woken (sitemessage.background.channels); None: NOTIFY on PostgreSQL, else local sockets.
    'WAKEUP': None,
    'WAKEUP_DIR': None,
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
    # AnymailMessenger's anymail backend (dotted path) when its constructor names none.
    'ANYMAIL_BACKEND': None,
    # Which of Django 6.1's MAILERS holds the SMTP options (None: found by backend).
    'SMTP_MAILER': None,
    # E-mail attachments (sitemessage.messages.attachments): a key of Django's STORAGES, and the folder there.
    'ATTACHMENT_STORAGE': 'default',
    'ATTACHMENT_DIRECTORY': 'sitemessage/attachments',
    # Prometheus metrics (sitemessage.metrics).
    'METRICS': False,
    'METRICS_PORT': None,
    'METRICS_ADDRESS': '127.0.0.1',
    # The in-app inbox pages (docs/inbox.rst): items a page, and how often the page polls for new ones (None: never).
    'INBOX_PAGE_SIZE': 20,
    'INBOX_POLL_SECONDS': 30,
}


_MISSING = object()

#: What :func:`check_setting` accepts: a test of the value and the phrase for the error.
CHECKS: dict[str, tuple[Callable[[Any], bool], str]] = {
    'positive_int': (
        lambda value: not isinstance(value, bool) and isinstance(value, int) and value >= 1,
        'a positive integer',
    ),
    'seconds': (
        lambda value: value is None or (not isinstance(value, bool) and isinstance(value, (int, float)) and value > 0),
        'a positive number of seconds or None',
    ),
    'text': (
        lambda value: not isinstance(value, bool) and isinstance(value, (str, int, float)) and str(value) != '',
        'a non-empty string',
    ),
}


def get_setting(
    name: str,
    alias: Optional[str] = None,
    value: Any = None,
    *,
    default: Any = _MISSING,
    check: Optional[str] = None,
    argument: Optional[str] = None,
) -> Any:
    """Return a setting by the one rule: the constructor's ``value``, else the project's setting, else the default.

    ``value`` is what a constructor argument holds (``None``: not given); ``argument`` names it
    in errors (e.g. ``'TelegramMessenger(timeout=...)'``). The project's setting is
    ``SITEMESSAGE_<name>``; with an ``alias`` it is a dict keyed by messenger alias and the
    alias's entry is used. The default is ``default`` when given, else the documented one.
    With ``check`` (a key of :data:`CHECKS`) the result is validated by :func:`check_setting`.
    Read at call time, so ``override_settings`` works.
    """
    setting = f'SITEMESSAGE_{name}'
    if value is not None:
        source = argument or f'the `{name.lower()}` argument'
    else:
        value = getattr(django_settings, setting, _MISSING)
        source = setting
        if alias is not None and value is not _MISSING:
            if not isinstance(value, dict):
                _refuse(setting, 'a dict keyed by messenger alias', value)
            value = value.get(alias, _MISSING)
            source = f'{setting}[{alias!r}]'
        if value is _MISSING:
            value = DEFAULTS[name] if default is _MISSING else default
    return value if check is None else check_setting(value, check, source)


def check_setting(value: Any, check: str, source: str) -> Any:
    """Return ``value`` if it passes ``check``; else raise an error naming ``source`` and the value.

    One validator for every setting and constructor argument, so a mistake reads the same
    wherever it is made: ``SITEMESSAGE_HTTP_TIMEOUT must be a positive number of seconds or None, got '10'.``
    """
    test, expected = CHECKS[check]
    if not test(value):
        _refuse(source, expected, value)
    return value


def _refuse(source: str, expected: str, value: Any) -> NoReturn:
    raise SiteMessageConfigurationError(f'{source} must be {expected}, got {value!r}.')


def get_positive_int_setting(name: str) -> int:
    """Return ``SITEMESSAGE_<name>`` as a positive integer; a clear error names a bad value."""
    return get_setting(name, check='positive_int')


def get_timeout_setting(name: str) -> Optional[float]:
    """Return ``SITEMESSAGE_<name>`` as seconds (a positive number, or None: no timeout); a bad value is named."""
    return get_setting(name, check='seconds')


def __getattr__(name: str) -> Any:
    if name in DEFAULTS:
        return get_setting(name)
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
