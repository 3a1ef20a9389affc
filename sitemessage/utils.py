"""Registries of messengers and message types, recipients and small helpers.

This module never imports models: projects import it from ``sitemessages.py`` modules,
which run while the app registry is still loading.
"""
from __future__ import annotations

import sys
import threading
from collections import defaultdict
from importlib import import_module
from importlib.util import find_spec
from typing import TYPE_CHECKING, Any, Dict, Iterable, List, NamedTuple, Optional, Type, Union

from django.conf import settings
from django.utils.module_loading import module_has_submodule

from .exceptions import UnknownMessageTypeError, UnknownMessengerError
from .settings import get_setting

if TYPE_CHECKING:  # pragma: nocover
    from django.contrib.auth.base_user import AbstractBaseUser

    from .messages.base import MessageBase
    from .messengers.base import MessengerBase

TypeMessage = Union[str, 'MessageBase', Type['MessageBase']]
TypeMessenger = Union[str, 'MessengerBase', Type['MessengerBase']]

_MESSENGERS_REGISTRY: Dict[str, 'MessengerBase'] = {}
_MESSAGES_REGISTRY: Dict[str, Type['MessageBase']] = {}
_MESSAGES_FOR_APPS: Dict[str, Dict[str, str]] = defaultdict(dict)

# Kept for 1.4.0 compatibility; the site URL is no longer cached per thread.
_THREAD_LOCAL = threading.local()
_THREAD_SITE_URL = 'sitemessage_site_url'


class Recipient(NamedTuple):
    """One addressee of a message through one messenger."""

    messenger: str
    user: Optional['AbstractBaseUser']
    address: str


TypeRecipient = Union[str, 'AbstractBaseUser', Recipient]
TypeRecipients = Union[TypeRecipient, Iterable[TypeRecipient]]


def is_iterable(v: Any) -> bool:
    """Tell whether ``v`` is an iterable other than a string."""
    return hasattr(v, '__iter__') and not isinstance(v, str)


def _alias_of(obj: Any) -> str:
    return obj if isinstance(obj, str) else obj.get_alias()


def _unknown(kind: str, alias: str, registry: dict) -> str:
    known = ', '.join(sorted(registry)) or 'none'
    return f'`{alias}` {kind} is not registered (registered: {known})'


# Messengers ----------------------------------------------------------------------------------

def register_messenger_objects(*messengers: 'MessengerBase') -> None:
    """Register (configure) messenger instances; a later one replaces an earlier with its alias."""
    for messenger in messengers:
        _MESSENGERS_REGISTRY[messenger.get_alias()] = messenger


def get_registered_messenger_objects() -> Dict[str, 'MessengerBase']:
    """Return the registered messengers dict, indexed by alias (the live registry)."""
    return _MESSENGERS_REGISTRY


def get_registered_messenger_object(messenger: TypeMessenger) -> 'MessengerBase':
    """Return the registered messenger instance for an alias (or a messenger class/instance)."""
    alias = _alias_of(messenger)
    try:
        return _MESSENGERS_REGISTRY[alias]
    except KeyError:
        raise UnknownMessengerError(_unknown('messenger', alias, _MESSENGERS_REGISTRY)) from None


# Message types --------------------------------------------------------------------------------

def register_message_types(*message_types: Type['MessageBase']) -> None:
    """Register message type classes; a later one replaces an earlier with the same alias."""
    for message_type in message_types:
        _MESSAGES_REGISTRY[message_type.get_alias()] = message_type


def get_registered_message_types() -> Dict[str, Type['MessageBase']]:
    """Return the registered message types dict, indexed by alias (the live registry)."""
    return _MESSAGES_REGISTRY


def get_registered_message_type(message_type: TypeMessage) -> Type['MessageBase']:
    """Return the registered message type class for an alias (or a message class/instance)."""
    alias = _alias_of(message_type)
    try:
        return _MESSAGES_REGISTRY[alias]
    except KeyError:
        raise UnknownMessageTypeError(_unknown('message class', alias, _MESSAGES_REGISTRY)) from None


def override_message_type_for_app(app_name: str, app_message_type_alias: str, new_message_type_alias: str) -> None:
    """Make ``app_name`` use ``new_message_type_alias`` wherever it asks for ``app_message_type_alias``."""
    _MESSAGES_FOR_APPS[app_name][app_message_type_alias] = new_message_type_alias


def get_message_type_for_app(app_name: str, default_message_type_alias: str) -> Type['MessageBase']:
    """Return the message type class an application should use, honouring project overrides."""
    alias = _MESSAGES_FOR_APPS.get(app_name, {}).get(default_message_type_alias, default_message_type_alias)
    return get_registered_message_type(alias)


# Recipients -----------------------------------------------------------------------------------

def recipients(messenger: TypeMessenger, addresses: TypeRecipients) -> List[Recipient]:
    """Build the recipients list for a messenger (alias, class or instance).

    ``addresses`` is one user or address, or an iterable of them. Lists from several
    calls can be added together.
    """
    from .headers import check_recipients
    if isinstance(messenger, str):
        messenger = get_registered_messenger_object(messenger)
    result = RecipientList(messenger.structure_recipients_data(addresses))
    check_recipients(result)  # a line break or a second address is refused here, naming the value
    return result


class RecipientList(list):
    """A list of :class:`Recipient` that also adds up with ``recipients(...),`` tuples.

    The docs write ``x = recipients(...),`` (a trailing comma makes a 1-tuple) and then
    ``my_smtp_recipients + my_jabber_recipients``: a plain list would raise ``TypeError``.
    """

    def __add__(self, other):
        if not isinstance(other, (list, tuple)):
            return NotImplemented
        return RecipientList([*self, *_flat_recipients(other)])

    def __radd__(self, other):
        if not isinstance(other, (list, tuple)):
            return NotImplemented
        return RecipientList([*_flat_recipients(other), *self])


def _flat_recipients(items) -> list:
    if isinstance(items, Recipient):
        return [items]
    flat = []
    for item in items:
        if isinstance(item, (list, tuple)) and not isinstance(item, Recipient):
            flat.extend(item)  # a `recipients(...),` tuple holds the list
        else:
            flat.append(item)
    return flat


# Site URL -------------------------------------------------------------------------------------

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
    import os

    url = domain = scheme = None
    for source in (os.environ, {name: getattr(settings, name, None) for name in
                                ('SITE_URL', 'SITE_DOMAIN', 'SITE_PROTO', 'SITE_SCHEME')}):
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
    return f"{scheme or 'http'}://{domain}"


def _current_site_domain() -> Optional[str]:
    from django.apps import apps
    if not apps.is_installed('django.contrib.sites'):
        return None
    from django.contrib.sites.models import Site
    try:
        return Site.objects.get_current().domain
    except Exception:  # no SITE_ID, table missing: the site is simply unknown
        return None


# Autodiscovery --------------------------------------------------------------------------------

def _app_package(app: str) -> str:
    """Turn an ``INSTALLED_APPS`` entry into its package path (``a.apps.AConfig`` -> ``a``)."""
    parts = app.split('.')
    if parts[-1][:1].isupper():
        parts = parts[:-2] or parts[:-1]
    return '.'.join(parts)


def import_app_sitemessage_module(app: str):
    """Import and return ``<app>.sitemessages`` (the module name is a setting), or None if absent.

    An ``ImportError`` raised inside an existing module propagates.
    """
    module_name = get_setting('APP_MODULE_NAME')
    package_name = _app_package(app)
    try:
        package = import_module(package_name)
    except ImportError:
        return None
    if not hasattr(package, '__path__'):
        return None
    if not module_has_submodule(package, module_name):
        return None
    return import_module(f'{package_name}.{module_name}')


def import_project_sitemessage_modules() -> list:
    """Import ``sitemessages`` modules of every installed application; return them."""
    from django.apps import apps
    entries = [config.name for config in apps.get_app_configs()] if apps.app_configs else settings.INSTALLED_APPS
    modules = []
    for app in entries:
        module = import_app_sitemessage_module(app)
        if module is not None:
            modules.append(module)
    return modules


def import_optional(module_name: str, *, extra: str):
    """Import an optional dependency, or fail with an error naming the pip extra to install.

    A module already in ``sys.modules`` is used as it is: a 1.4.0 project's test suite puts
    ``unittest.mock`` objects there (no ``__spec__``), which ``find_spec`` would reject.
    """
    from .exceptions import SiteMessageConfigurationError
    top = module_name.partition('.')[0]
    try:
        try:
            missing = find_spec(top) is None
        except ValueError:  # in sys.modules without a __spec__: a stand-in, used as it is
            missing = False
        if missing:
            raise ModuleNotFoundError(f'No module named {top!r}', name=top)
        return import_module(module_name)
    except ImportError as error:
        raise SiteMessageConfigurationError(
            f'The `{module_name}` package is required here: '
            f'pip install "django-sitemessage[{extra}]" ({error})') from error


def stand_in_module(module_name: str) -> Any:
    """Return ``sys.modules[module_name]`` when a test put a stand-in there (no import spec), else None.

    1.4.0 projects' suites replace ``twitter``, ``sleekxmpp`` or ``requests`` this way; a real
    import always has a ``__spec__``.
    """
    module = sys.modules.get(module_name)
    if module is None or getattr(module, '__spec__', None) is not None:
        return None
    return module


def __getattr__(name: str):
    # ``TypeUser`` is the user model base class; importing it needs a ready app registry,
    # which this module must not require (it is imported from settings-level code).
    if name == 'TypeUser':
        from django.contrib.auth.base_user import AbstractBaseUser
        return AbstractBaseUser
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
