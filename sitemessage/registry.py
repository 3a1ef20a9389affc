"""Registries: aliases -> message types and messengers, per-app overrides, and discovery.

Never imports models: projects register from ``sitemessages.py`` modules, which are imported
while the app registry is still loading.
"""

from __future__ import annotations

from collections import defaultdict
from importlib import import_module
from typing import TYPE_CHECKING, Any, Dict, Type, Union

from django.apps import apps
from django.conf import settings
from django.utils.module_loading import module_has_submodule

from .exceptions import UnknownMessageTypeError, UnknownMessengerError
from .limits import check_message_type_limits
from .settings import get_setting

if TYPE_CHECKING:  # pragma: nocover
    from types import ModuleType

    from .messages.base import MessageBase
    from .messengers.base import MessengerBase

TypeMessage = Union[str, 'MessageBase', Type['MessageBase']]
TypeMessenger = Union[str, 'MessengerBase', Type['MessengerBase']]

_MESSENGERS_REGISTRY: Dict[str, 'MessengerBase'] = {}
_MESSAGES_REGISTRY: Dict[str, Type['MessageBase']] = {}
_MESSAGES_FOR_APPS: Dict[str, Dict[str, str]] = defaultdict(dict)


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
    """Register message type classes; a later one replaces an earlier with the same alias.

    A bad ``digest_window`` or ``throttle`` is refused (nothing is registered), naming the value.
    """
    for message_type in message_types:
        check_message_type_limits(message_type)
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


# Autodiscovery --------------------------------------------------------------------------------


def _app_package(app: str) -> str:
    """Turn an ``INSTALLED_APPS`` entry into its package path (``a.apps.AConfig`` -> ``a``)."""
    parts = app.split('.')
    if parts[-1][:1].isupper():
        parts = parts[:-2] or parts[:-1]
    return '.'.join(parts)


def import_app_sitemessage_module(app: str) -> 'ModuleType | None':
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
    entries = [config.name for config in apps.get_app_configs()] if apps.app_configs else settings.INSTALLED_APPS
    modules = []
    for app in entries:
        module = import_app_sitemessage_module(app)
        if module is not None:
            modules.append(module)
    return modules
