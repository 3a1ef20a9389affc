"""Each recipient's language: resolved when a dispatch is created, recorded on it, rendered in by the engine.

The order (documented in ``docs/languages.rst``):

1. the language given to :func:`~sitemessage.toolbox.schedule_messages` (``language='ru'``), for every recipient;
2. the user's own: a ``language`` attribute or field of the recipient user, if it has a value;
3. ``SITEMESSAGE_RECIPIENT_LANGUAGE``: a callable (or its dotted path) taking the
   :class:`~sitemessage.recipients.Recipient` and returning a code or ``None``;
4. a recipient without a user (a plain address): the language active when its dispatch is created
   (scheduling, or ``prepare_dispatches()`` for subscribers); a user: ``LANGUAGE_CODE``.

Codes from 1-3 must be among ``settings.LANGUAGES`` (a regional variant such as ``ru-RU`` becomes
``ru`` when only ``ru`` is listed); anything else raises :class:`UnknownLanguageError` before
anything is stored. Resolving reads attributes of users already loaded: no query per recipient.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from contextvars import ContextVar
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Callable, Dict, Iterator, List, Optional, Union

from django.conf import settings
from django.utils import translation
from django.utils.functional import Promise
from django.utils.module_loading import import_string

from .exceptions import SiteMessageConfigurationError, SiteMessageError
from .settings import get_setting

if TYPE_CHECKING:  # pragma: nocover
    from .recipients import Recipient

LOGGER = logging.getLogger(__name__)

#: The attribute (or model field) of a user holding their language.
USER_LANGUAGE_ATTRIBUTE = 'language'

# The language given to schedule_messages(language=...): every dispatch created meanwhile gets it.
_GIVEN_LANGUAGE: ContextVar[Optional[str]] = ContextVar('sitemessage_given_language', default=None)


class UnknownLanguageError(SiteMessageError, ValueError):
    """A language code that is not among ``settings.LANGUAGES`` (given, a user's, or the hook's)."""


def check_language(code: Any, source: str) -> str:
    """Return the code of ``settings.LANGUAGES`` that ``code`` names; raise :class:`UnknownLanguageError` if none.

    ``source`` says where the value came from, for the error.
    """
    if isinstance(code, str) and code:
        try:
            return translation.get_supported_language_variant(code, strict=True)
        except LookupError:
            pass
    known = ', '.join(sorted(dict(settings.LANGUAGES)))
    raise UnknownLanguageError(f'Unknown language {code!r} ({source}): not in settings.LANGUAGES ({known}).')


@contextmanager
def given_language(code: Optional[str]) -> Iterator[Optional[str]]:
    """Within the block, every dispatch created gets the language ``code`` (checked first); ``None`` changes nothing."""
    if code is None:
        yield None
        return
    checked = check_language(code, 'the `language` argument')
    token = _GIVEN_LANGUAGE.set(checked)
    try:
        yield checked
    finally:
        _GIVEN_LANGUAGE.reset(token)


def get_language_hook() -> Optional[Callable[['Recipient'], Optional[str]]]:
    """Return ``SITEMESSAGE_RECIPIENT_LANGUAGE`` as a callable (``None``: not set)."""
    hook: Union[None, str, Callable] = get_setting('RECIPIENT_LANGUAGE')
    if hook is None or callable(hook):
        return hook
    if isinstance(hook, str):
        return _import_hook(hook)
    raise SiteMessageConfigurationError(
        f'SITEMESSAGE_RECIPIENT_LANGUAGE must be a callable or its dotted path, got {hook!r}.'
    )


@lru_cache(maxsize=8)
def _import_hook(path: str) -> Callable:
    try:
        return import_string(path)
    except ImportError as error:
        raise SiteMessageConfigurationError(
            f'SITEMESSAGE_RECIPIENT_LANGUAGE {path!r} cannot be imported: {error}'
        ) from error


class LanguageResolver:
    """Resolves the language of many recipients at once (the hook and the fallbacks looked up once).

    ``strict`` (scheduling) refuses an unknown code from a user or the hook, and lets the hook's
    errors through; otherwise (``prepare_dispatches()`` in a worker, where nobody could be told)
    either is logged and the recipient gets the fallback language: the dispatch is still created.
    """

    def __init__(self, strict: bool = True) -> None:
        self.strict = strict
        self.given = _GIVEN_LANGUAGE.get()
        self.hook = None if self.given else get_language_hook()
        self.active = _fallback(translation.get_language())
        self.default = _fallback(settings.LANGUAGE_CODE)

    def __call__(self, recipient: 'Recipient') -> str:
        """Return the language of one recipient (see the module docstring for the order)."""
        if self.given:
            return self.given
        user = recipient.user
        fallback = self.default if user is not None else self.active
        try:
            if user is not None:
                own = getattr(user, USER_LANGUAGE_ATTRIBUTE, None)
                if own:
                    return check_language(own, f'`{USER_LANGUAGE_ATTRIBUTE}` of user {user.pk!r}')
            if self.hook is not None:
                code = self.hook(recipient)
                if code is not None:
                    return check_language(code, f'SITEMESSAGE_RECIPIENT_LANGUAGE for {recipient.address!r}')
        except Exception as error:  # the hook is the project's code: anything may come out of it
            if self.strict:
                raise
            LOGGER.warning('Language of %r: %s Using %r.', recipient.address, error, fallback)
        return fallback


def _fallback(code: Optional[str]) -> str:
    """A language active or configured (never refused): its listed variant when there is one."""
    if not code:
        code = settings.LANGUAGE_CODE
    try:
        return translation.get_supported_language_variant(code)
    except LookupError:
        return code


@contextmanager
def rendering_language(code: Optional[str]) -> Iterator[None]:
    """Activate ``code`` for the block; ``None`` (a dispatch from before 2.0) keeps the active language."""
    if code is None:
        yield
        return
    with translation.override(code):
        yield


def localized_templates(path: str, language: Optional[str] = None) -> List[str]:
    """Return the template names tried for ``path`` in ``language`` (default: the active one), most specific first.

    ``mail.html`` in ``pt-br`` tries ``mail.pt-br.html``, then ``mail.pt.html``, then ``mail.html``.
    """
    language = language or translation.get_language()
    folder, _sep, name = path.rpartition('/')
    stem, dot, ext = name.rpartition('.')
    if not language or not dot or not stem:
        return [path]
    prefix = f'{folder}/' if folder else ''
    codes = [language.lower()]
    if '-' in codes[0]:
        codes.append(codes[0].split('-')[0])
    return [f'{prefix}{stem}.{code}.{ext}' for code in codes] + [path]


def translations_of(text: Any) -> Optional[Dict[str, str]]:
    """Return a lazy translatable string (``gettext_lazy``) in each of ``settings.LANGUAGES`` where it differs
    from its text in the active language; ``None`` for anything else (a plain string is sent as given).

    A stored message holds text, not the lazy object: this is how its subject can follow each
    recipient's language when it is rendered later.
    """
    if not isinstance(text, Promise):
        return None
    current = str(text)
    texts = {}
    for code, _name in settings.LANGUAGES:
        with translation.override(code):
            value = str(text)
        if value != current:
            texts[code] = value
    return texts


def translated(context: dict, key: str, language: Optional[str]) -> Any:
    """Return ``context[key]`` in ``language``: from ``<key>_translations`` when it was stored translatable."""
    value = context.get(key)
    translations = context.get(f'{key}_translations')
    if language and isinstance(translations, dict):
        return translations.get(language, value)
    return value
