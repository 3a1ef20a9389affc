"""The site's base URL, for links in messages: configured, or guessed from settings and the environment."""

from __future__ import annotations

import os
from typing import Optional

from django.apps import apps
from django.conf import settings

from .settings import get_setting


def get_site_url() -> str:
    """Return the base site URL (``scheme://domain``), without a trailing slash.

    ``SITEMESSAGE_SITE_URL`` wins; otherwise ``SITE_URL`` / ``SITE_DOMAIN`` / ``SITE_PROTO``
    (or ``SITE_SCHEME``) from the environment, then from settings, then the sites framework.
    Read at every call, so changed settings apply at once.
    """
    configured = get_setting('SITE_URL')
    if configured:
        return str(configured).rstrip('/')
    return _guess_site_url()


def _guess_site_url() -> str:
    url = domain = scheme = None
    for source in (
        os.environ,
        {name: getattr(settings, name, None) for name in ('SITE_URL', 'SITE_DOMAIN', 'SITE_PROTO', 'SITE_SCHEME')},
    ):
        url = url or source.get('SITE_URL')
        domain = domain or source.get('SITE_DOMAIN')
        scheme = scheme or source.get('SITE_PROTO') or source.get('SITE_SCHEME')

    if not domain and url:
        if '://' in url:
            scheme_from_url, _, domain = url.partition('://')
            scheme = scheme or scheme_from_url
        else:
            domain = url

    if not domain:
        domain = _current_site_domain()

    domain = (domain or 'undefined-domain.local').rstrip('/')
    return f'{scheme or "http"}://{domain}'


def _current_site_domain() -> Optional[str]:
    if not apps.is_installed('django.contrib.sites'):
        return None
    # Imported here: the sites framework is optional, and its models import only where it is installed.
    from django.contrib.sites.models import Site

    try:
        return Site.objects.get_current().domain
    except Exception:  # no SITE_ID, table missing: the site is simply unknown
        return None
