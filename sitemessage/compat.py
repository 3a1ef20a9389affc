"""Names kept only so that code written for django-sitemessage 1.4.0 still imports.

Nothing in sitemessage uses them. :mod:`sitemessage.utils` and :mod:`sitemessage.messages.base`
re-export them where 1.4.0 had them; see ``docs/upgrading.rst`` for what replaced each.
"""

from __future__ import annotations

import threading
from typing import Any

# sitemessage.utils: the per-thread site URL cache (get_site_url() reads settings at every call).
_THREAD_LOCAL = threading.local()
_THREAD_SITE_URL = 'sitemessage_site_url'

# sitemessage.messages.base: whether sitemessage URLs are attached (a failed reverse gives '' links).
APP_URLS_ATTACHED = None

# Served by __getattr__ below: importing them needs a ready app registry.
LAZY_NAMES = ('TypeUser',)


def __getattr__(name: str) -> Any:
    # ``TypeUser`` is the user model base class; sitemessage.utils must import before apps are ready.
    if name == 'TypeUser':
        from django.contrib.auth.base_user import AbstractBaseUser

        return AbstractBaseUser
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
