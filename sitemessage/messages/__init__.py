"""Message types. The built-in ones are importable from here, lazily, as the docs show."""

from importlib import import_module

from ..registry import register_message_types

_BUILTIN = {
    'PlainTextMessage': 'plain',
    'EmailTextMessage': 'email',
    'EmailHtmlMessage': 'email',
    'EmailMimeMessage': 'email',
}


def register_builtin_message_types() -> None:
    """Register the built-in message types: ``plain``, ``email_plain``, ``email_html`` and ``email_django``."""
    from .email import EmailHtmlMessage, EmailMimeMessage, EmailTextMessage
    from .plain import PlainTextMessage

    register_message_types(PlainTextMessage, EmailTextMessage, EmailHtmlMessage, EmailMimeMessage)


def __getattr__(name):
    # Lazy, so that importing this package never imports models before apps are ready.
    if name in _BUILTIN:
        return getattr(import_module(f'{__name__}.{_BUILTIN[name]}'), name)
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')


__all__ = ['register_builtin_message_types', 'register_message_types', *_BUILTIN]
