"""The helpers of django-sitemessage 1.4.0, re-exported from their homes.

Registries: :mod:`sitemessage.registry`; recipients: :mod:`sitemessage.recipients`; the site URL:
:mod:`sitemessage.site`; optional dependencies: :mod:`sitemessage.optional`; names kept only for
1.4.0 code: :mod:`sitemessage.compat`. Patch those modules, not this one.
"""

from __future__ import annotations

from typing import Any

from . import compat, optional, registry, site
from . import recipients as _recipients
from .compat import _THREAD_LOCAL, _THREAD_SITE_URL  # noqa: F401  (1.4.0 names)
from .optional import import_optional, stand_in_module
from .recipients import Recipient, RecipientList, TypeRecipient, TypeRecipients, is_iterable, recipients
from .registry import (
    _MESSAGES_FOR_APPS,  # noqa: F401  (1.4.0 names)
    _MESSAGES_REGISTRY,  # noqa: F401
    _MESSENGERS_REGISTRY,  # noqa: F401
    TypeMessage,
    TypeMessenger,
    get_message_type_for_app,
    get_registered_message_type,
    get_registered_message_types,
    get_registered_messenger_object,
    get_registered_messenger_objects,
    import_app_sitemessage_module,
    import_project_sitemessage_modules,
    override_message_type_for_app,
    register_message_types,
    register_messenger_objects,
)
from .site import get_site_url

__all__ = [
    'Recipient',
    'RecipientList',
    'TypeRecipient',
    'TypeRecipients',
    'TypeMessage',
    'TypeMessenger',
    'is_iterable',
    'recipients',
    'get_site_url',
    'import_optional',
    'stand_in_module',
    'register_messenger_objects',
    'get_registered_messenger_objects',
    'get_registered_messenger_object',
    'register_message_types',
    'get_registered_message_types',
    'get_registered_message_type',
    'override_message_type_for_app',
    'get_message_type_for_app',
    'import_app_sitemessage_module',
    'import_project_sitemessage_modules',
]  # not TypeUser (served by __getattr__): it needs a ready app registry


def __getattr__(name: str) -> Any:
    # TypeUser, and whatever else code written against the single 1.4.0 module reached for.
    if name in compat.LAZY_NAMES:
        return getattr(compat, name)
    for home in (_recipients, registry, site, optional, compat):
        if name in vars(home):
            return vars(home)[name]
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
