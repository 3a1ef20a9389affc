"""System checks: configuration mistakes that would otherwise show only in delivered messages.

``manage.py check`` runs the static ones (and ``runserver`` and most commands do). The checks that
read the database (stored subscriptions, the Sites framework's domain) run only when a database is
named: ``manage.py check --database default``, and at the start of ``manage.py migrate``. That is
before migrations apply, so they look for their tables first and say nothing while these are missing.

=====================  =========================================================================
``sitemessage.W001``   Links in messages would point to ``http://undefined-domain.local``.
``sitemessage.W002``   A message type names an unregistered messenger in ``supported_messengers`` or
                       ``fallback_messengers``.
``sitemessage.W003``   Stored subscriptions name an unregistered message type.
``sitemessage.W004``   Stored subscriptions name an unregistered messenger.
``sitemessage.W005``   Links would point to ``example.com``, the Sites framework's default domain.
=====================  =========================================================================
"""

from __future__ import annotations

import os
from typing import Iterable, List, Optional

from django.apps import apps
from django.conf import settings
from django.core.checks import Tags, Warning, register
from django.db import DatabaseError, connections

from .models import Subscription
from .registry import get_registered_message_types, get_registered_messenger_objects
from .settings import get_setting

TAG = 'sitemessage'
SITE_URL_HINT = (
    "Set SITEMESSAGE_SITE_URL = 'https://www.your-site.com' in settings, or install "
    'django.contrib.sites and set the domain of the current Site.'
)


def _ours(app_configs) -> bool:
    """A check runs unless ``manage.py check <app>`` named other applications only."""
    return app_configs is None or any(config.name == 'sitemessage' for config in app_configs)


def _site_url_source() -> Optional[str]:
    """Name what gives the site URL without a database (``get_site_url()``'s order), or None."""
    if get_setting('SITE_URL'):
        return 'SITEMESSAGE_SITE_URL'
    for name in ('SITE_URL', 'SITE_DOMAIN'):
        if os.environ.get(name) or getattr(settings, name, None):
            return name
    return None


@register(TAG)
def check_site_url(app_configs=None, **kwargs) -> List[Warning]:
    """W001: no site URL is configured and no Sites framework can give one."""
    if not _ours(app_configs) or _site_url_source() or apps.is_installed('django.contrib.sites'):
        return []
    return [
        Warning(
            'Links in messages (unsubscribe, mark read, {{ SITE_URL }} in templates) would point to '
            'http://undefined-domain.local: the site URL is not configured.',
            hint=SITE_URL_HINT,
            id='sitemessage.W001',
        )
    ]


@register(TAG)
def check_supported_messengers(app_configs=None, **kwargs) -> List[Warning]:
    """W002: a registered message type supports a messenger that is not registered (a typo, or missing)."""
    if not _ours(app_configs):
        return []
    messengers = get_registered_messenger_objects()
    warnings = []
    for alias, message_type in sorted(get_registered_message_types().items()):
        if message_type.__module__.startswith('sitemessage.'):
            continue  # built-in types are registered for every project, whichever messengers it uses
        for attribute in ('supported_messengers', 'fallback_messengers'):
            unknown = [name for name in getattr(message_type, attribute, None) or () if name not in messengers]
            if not unknown:
                continue
            warnings.append(
                Warning(
                    f'Message type `{alias}` ({message_type.__module__}.{message_type.__qualname__}) names '
                    f'unregistered messenger(s) in {attribute}: {", ".join(unknown)} '
                    f'(registered: {", ".join(sorted(messengers)) or "none"}).',
                    hint='Fix the alias, or register the messenger with register_messenger_objects() in a '
                    'sitemessages.py module.',
                    obj=message_type,
                    id='sitemessage.W002',
                )
            )
    return warnings


@register(TAG, Tags.database)
def check_database(app_configs=None, databases: Optional[Iterable[str]] = None, **kwargs) -> List[Warning]:
    """W003, W004 (stored subscriptions) and W001, W005 (the Sites framework's domain)."""
    if not databases or not _ours(app_configs):
        return []
    warnings: List[Warning] = []
    for alias in databases:
        warnings += _check_subscriptions(alias)
        warnings += _check_site_domain(alias)
    return warnings


def _tables(alias: str) -> set:
    try:
        with connections[alias].cursor() as cursor:
            return set(connections[alias].introspection.table_names(cursor))
    except DatabaseError:  # the database is not reachable: Django's own checks say so
        return set()


def _check_subscriptions(alias: str) -> List[Warning]:
    if Subscription._meta.db_table not in _tables(alias):
        return []  # not migrated yet
    rows = Subscription.objects.using(alias).order_by()
    warnings = []
    for field, kind, registry, check_id in (
        ('message_cls', 'message type', get_registered_message_types(), 'sitemessage.W003'),
        ('messenger_cls', 'messenger', get_registered_messenger_objects(), 'sitemessage.W004'),
    ):
        stored = set(rows.values_list(field, flat=True).distinct())
        unknown = sorted(stored - set(registry))
        if unknown:
            count = rows.filter(**{f'{field}__in': unknown}).count()
            warnings.append(
                Warning(
                    f'{count} subscription(s) in database `{alias}` name unregistered {kind}(s): '
                    f'{", ".join(unknown)} (registered: {", ".join(sorted(registry)) or "none"}). '
                    f'Nothing is delivered to them.',
                    hint=f'Register the {kind}, or delete these subscriptions (admin: Subscriptions, '
                    f'filter by {kind}).',
                    obj=Subscription,
                    id=check_id,
                )
            )
    return warnings


def _check_site_domain(alias: str) -> List[Warning]:
    if _site_url_source() or not apps.is_installed('django.contrib.sites'):
        return []
    from django.contrib.sites.models import Site

    if Site._meta.db_table not in _tables(alias):
        return []
    try:
        domain = Site.objects.db_manager(alias).get_current().domain
    except Exception:  # no SITE_ID (ImproperlyConfigured), no such Site, a database error
        domain = ''
    if not domain:
        return [
            Warning(
                'Links in messages would point to http://undefined-domain.local: the Sites framework has '
                'no current site (SITE_ID) and SITEMESSAGE_SITE_URL is not set.',
                hint=SITE_URL_HINT,
                id='sitemessage.W001',
            )
        ]
    if domain == 'example.com':
        return [
            Warning(
                "Links in messages would point to http://example.com: the current Site still has Django's "
                'default domain.',
                hint=SITE_URL_HINT,
                id='sitemessage.W005',
            )
        ]
    return []
