"""The base of message types: what a message says and how it is rendered for each messenger."""

from __future__ import annotations

import logging
from contextvars import ContextVar
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Dict, Iterable, List, Optional, Sequence, Tuple, Union
from uuid import uuid4

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect
from django.template.loader import render_to_string
from django.utils.crypto import constant_time_compare, salted_hmac
from django.utils.translation import get_language
from django.utils.translation import gettext_lazy as _

from ..compat import APP_URLS_ATTACHED  # noqa: F401 -- importable from here, as in 1.4.0
from ..digests import add_to_digest
from ..exceptions import UnknownMessengerError
from ..fallback import on_all_messengers
from ..headers import safe_recipients, unique_recipients
from ..languages import LanguageResolver, localized_templates
from ..limits import has_limits
from ..links import ACTION_MARK_READ, ACTION_UNSUBSCRIBE, invalid_link_response, unsubscribed_response
from ..list_id import default_list_id
from ..recipients import Recipient
from ..recipients import recipients as _recipients
from ..registry import get_registered_messenger_object
from ..settings import get_positive_int_setting
from ..signals import sig_mark_read_failed, sig_mark_read_success, sig_unsubscribe_failed, sig_unsubscribe_success
from ..site import get_site_url
from . import render_cache
from .links import URL_MARK_READ, URL_UNSUBSCRIBE, reverse_signed_link, signed_link_url  # noqa: F401

LOGGER = logging.getLogger(__name__)

if TYPE_CHECKING:  # pragma: nocover
    from ..models import DeferredText, Dispatch, Message, MessageTuple, PreparedDispatches

# While one text is compiled for many dispatches, directives render as these placeholders,
# which are then replaced with each dispatch's own signed links.
_DIRECTIVE_PLACEHOLDERS: ContextVar[Optional[Dict[str, str]]] = ContextVar('sitemessage_directives', default=None)


class _DispatchWatch:
    """Stands for the first dispatch while compiling once per message; notes any use of it."""

    def __init__(self, dispatch):
        self._dispatch = dispatch
        self.touched = False

    def __getattr__(self, name):
        self.touched = True
        return getattr(self._dispatch, name)

    def __str__(self):
        self.touched = True
        return str(self._dispatch)


def _subscribers(subscriptions: Iterable[Tuple[str, Any, Optional[str]]], active_only: bool) -> List[Recipient]:
    """The recipients of ``(messenger, user, address)`` subscriptions: a user's address comes from the
    messenger; unsafe ones are left out."""
    subscribers = []
    for messenger_cls, user, address in subscriptions:
        if active_only and user is not None and not getattr(user, 'is_active', False):
            continue
        if address is None and user is not None:
            try:
                address = get_registered_messenger_object(messenger_cls).get_address(user)
            except UnknownMessengerError:
                address = None
        if isinstance(address, str) and address:
            subscribers.append(Recipient(messenger_cls, user, address))
    return safe_recipients(subscribers)  # a stored address with a line break is left out, logged


class MessageBase:
    """Base class of message types: subclass it, set ``alias``, and register it.

    A message type builds a context when instantiated, is stored as a :class:`~sitemessage.models.Message`
    by :meth:`schedule`, and is rendered (:meth:`compile`) by the delivery engine for each messenger.
    """

    supported_messengers: List[str] = []
    alias: Optional[str] = None
    title = _('Notification')
    priority: Optional[int] = None
    has_dynamic_context: bool = False
    group_mark: str = ''
    template_ext: str = 'tpl'
    template: Optional[str] = None
    send_retry_limit: Optional[int] = 10
    allow_user_subscription: bool = True
    #: Collect a recipient's messages for this long (a timedelta or seconds), then send them as one
    #: (see :mod:`sitemessage.digests`); None: each is sent on its own.
    digest_window: Union[timedelta, int, float, None] = None
    #: ``(limit, period)``: at most ``limit`` messages per recipient per period (a timedelta or seconds);
    #: the rest are recorded as throttled, or join a digest (see :mod:`sitemessage.throttles`).
    throttle: Optional[Tuple[int, Union[timedelta, int, float]]] = None
    #: Messenger aliases tried in order for a user: when a dispatch through one fails for good, one
    #: through the next where the user has an address is created (see docs/fallback.rst).
    fallback_messengers: Sequence[str] = ()
    #: Critical types: a user recipient gets a dispatch through every ``fallback_messengers`` at once.
    send_on_all_messengers: bool = False

    SIMPLE_TEXT_ID = 'stext_'

    _message_model = None
    _dispatch_models = None

    def __init__(self, context: Union[str, dict, None] = None, template_path: Optional[str] = None):
        base_context: Dict[str, Any] = {'tpl': None, 'use_tpl': False}
        if context is not None:
            self.update_context(base_context, context, template_path=template_path)
        self.context = base_context

    def __str__(self):
        return self.get_alias()

    @classmethod
    def get_alias(cls) -> str:
        """Return the alias of this type: ``alias``, or the class name when it is not set."""
        return cls.alias if cls.alias is not None else cls.__name__

    def get_context(self) -> dict:
        return self.context

    @classmethod
    def update_context(cls, base_context: dict, str_or_dict: Union[str, dict], template_path: Optional[str] = None):
        """Merge a text or a dict into ``base_context`` (in place)."""
        if isinstance(str_or_dict, dict):
            base_context.update(str_or_dict)
            base_context['use_tpl'] = True
        else:
            base_context[cls.SIMPLE_TEXT_ID] = str_or_dict
        if cls.SIMPLE_TEXT_ID in str_or_dict:
            base_context['use_tpl'] = False
        base_context['tpl'] = template_path

    # Scheduling -------------------------------------------------------------------------------

    @classmethod
    def recipients(cls, messenger, addresses) -> List[Recipient]:
        """Shortcut for :func:`sitemessage.toolbox.recipients`."""
        return _recipients(messenger, addresses)

    def schedule(self, recipients=None, sender=None, priority: Optional[int] = None) -> 'MessageTuple':
        """Store this message (with one dispatch per recipient) for delivery."""
        from ..models import Message, MessageTuple

        if has_limits(self):
            from ..digests import schedule_with_limits

            return schedule_with_limits(self, recipients=recipients, sender=sender, priority=priority)
        if priority is None:
            priority = self.priority
        if recipients is not None and self.send_on_all_messengers:
            recipients = on_all_messengers(type(self), recipients)
        self._message_model, self._dispatch_models = Message.create(
            self.get_alias(),
            self.get_context(),
            recipients=recipients,
            sender=sender,
            priority=priority,
            group_mark=self.group_mark,
            context_merge_hook=self.merge_context,
        )
        return MessageTuple(self._message_model, self._dispatch_models)

    @classmethod
    def merge_context(cls, context: dict, new_context: dict) -> dict:
        """Merge the context of a new message into a grouped one; texts are joined by a newline."""
        merged = {**context, **new_context}
        if cls.SIMPLE_TEXT_ID in context:
            merged[cls.SIMPLE_TEXT_ID] = f'{context[cls.SIMPLE_TEXT_ID]}\n{new_context.get(cls.SIMPLE_TEXT_ID, "")}'
        return merged

    def get_digest_key(self, recipient: Recipient, context: dict) -> str:
        """Hook: split a recipient's digest window further (e.g. per thread); '' (default): one per type.

        Windows are always per recipient and type: a key never mixes two recipients' messages.
        """
        return ''

    @classmethod
    def merge_digest(cls, digest: Optional[dict], context: dict) -> dict:
        """Hook: the context of a digest with a message's ``context`` added (``digest`` None: the first).

        By default the first message's context plus ``digest``, the list of every joined context.
        """
        return add_to_digest(digest, context, cls.SIMPLE_TEXT_ID)

    @classmethod
    def get_subscribers(cls, active_only: bool = True) -> List[Recipient]:
        """Return recipients subscribed to this type (inactive users are left out by default)."""
        from ..models import Subscription

        subscriptions = Subscription.get_for_message_cls(cls.get_alias())
        return _subscribers(((s.messenger_cls, s.recipient, s.address) for s in subscriptions), active_only)

    @classmethod
    def prepare_dispatches(cls, message: 'Message', recipients=None) -> Union[List['Dispatch'], 'PreparedDispatches']:
        """Create dispatches of a message scheduled without recipients (subscribers by default).

        For the subscribers, dispatches are written chunk by chunk (``SITEMESSAGE_PREPARE_CHUNK_SIZE``
        subscriptions at a time), so memory stays flat however many there are, and the result is a
        :class:`~sitemessage.models.PreparedDispatches` that reads them back when used. A type that
        overrides :meth:`get_subscribers`, or ``recipients`` given, get a list as before.
        """
        from ..models import Dispatch

        if recipients or getattr(cls.get_subscribers, '__func__', None) is not _BASE_GET_SUBSCRIBERS:
            return Dispatch.create(message, recipients or cls.get_subscribers(), strict_language=False)
        return cls._prepare_for_subscribers(message)

    @classmethod
    def _prepare_for_subscribers(cls, message: 'Message') -> 'PreparedDispatches':
        """Stream the subscribers into dispatches under a claim on the message (see ``MessageQuerySet``)."""
        from ..models import Dispatch, Message, PreparationLost, PreparedDispatches, Subscription

        prepared = PreparedDispatches()
        lease_seconds = get_positive_int_setting('SEND_LEASE_SECONDS')
        chunk_size = get_positive_int_setting('PREPARE_CHUNK_SIZE')
        claimed_here = not message.preparation_claimed
        if claimed_here and not Message.objects.claim_preparation(message, lease_seconds):
            return prepared  # another run is preparing it
        try:
            after_pk, created = Dispatch.objects.last_pk(), 0
            language_of = LanguageResolver(strict=False)  # users of a page are loaded: no query per recipient
            # A chunk's addresses are looked up among the dispatches already written only when they can
            # be there: address subscriptions are unique, so only an address taken from a user (in this
            # chunk or an earlier one) can repeat one of another chunk; after a resume, anything can.
            check_existing = message.prepared_through is not None or not Subscription.addresses_are_unique()
            while True:
                page = Subscription.get_page_for_message_cls(cls.get_alias(), message.prepared_through, chunk_size)
                if not page:
                    break
                check_existing = check_existing or any(user is not None for _pk, _cls, user, _address in page)
                chunk = [
                    Dispatch.for_recipient(
                        r,
                        message=message,
                        next_attempt_at=message.send_at,  # its scheduling's send_at and expires_at
                        expires_at=message.expires_at,
                        language=language_of(r),
                    )
                    for r in unique_recipients(_subscribers((row[1:] for row in page), active_only=True))
                ]
                try:
                    created += Message.objects.write_prepared_chunk(
                        message, chunk, page[-1][0], lease_seconds, check_existing
                    )
                except PreparationLost as error:  # this run outlived its lease: the other one finishes
                    LOGGER.warning('%s Stopped preparing it here.', error)
                    message.preparation_claimed = False
                    break
            if created:
                prepared.add_range(message.pk, after_pk, Dispatch.objects.last_pk(), created)
            if message.preparation_claimed:
                Message.objects.finish_preparation(message)
        finally:
            if claimed_here:
                Message.objects.release_preparation(message)  # a no-op once finished
        return prepared

    # Rendering --------------------------------------------------------------------------------

    @classmethod
    def get_template(cls, message, messenger) -> str:
        """Return the template path: the message's own, the class', or one derived per messenger."""
        return (
            message.context.get('tpl')
            or cls.template
            or f'sitemessage/messages/{cls.get_alias()}__{messenger.get_alias()}.{cls.template_ext}'
        )

    @classmethod
    def get_template_context(cls, context: dict) -> dict:
        """Hook: add to (or change) the template context right before rendering."""
        return context

    @classmethod
    def compile(cls, message, messenger, dispatch=None) -> str:
        """Return the text of ``message`` for ``messenger`` (and ``dispatch``): rendered or plain."""
        if not message.context.get('use_tpl'):
            return message.context[cls.SIMPLE_TEXT_ID]
        context = dict(message.context)  # never change the stored context
        context.update(
            {
                'SITE_URL': get_site_url(),
                'directive_unsubscribe': cls.get_unsubscribe_directive(message, dispatch),
                'directive_mark_read': cls.get_mark_read_directive(message, dispatch),
                'message_model': message,
                'dispatch_model': dispatch,
            }
        )
        # ``<name>.<language>.<ext>`` wins over ``<name>.<ext>``: the engine renders under the dispatch's language.
        return render_to_string(
            localized_templates(cls.get_template(message, messenger)), cls.get_template_context(context)
        )

    @classmethod
    def compile_for_dispatches(
        cls, message, messenger, dispatches: Sequence['Dispatch']
    ) -> List[Union[str, 'DeferredText']]:
        """Return one text per dispatch, each with that dispatch's own signed links.

        Unless ``has_dynamic_context`` is set, the template is rendered once, and each dispatch's
        text is a :class:`~sitemessage.models.DeferredText`: the one rendering plus the
        dispatch's links, built into a ``str`` whenever ``dispatch.message_cache`` is read, so
        a large e-mail to many recipients is held once. The template is rendered per dispatch
        (one ``str`` each) when it turns out to use ``dispatch_model``.
        """
        from ..models import DeferredText

        if cls.has_dynamic_context or not dispatches:
            return [cls.compile(message, messenger, dispatch=dispatch) for dispatch in dispatches]
        cache, cache_key = render_cache.current(), None
        if cache is not None and message.pk is not None:  # a run's later batches reuse the rendering
            alias = messenger.get_alias() if messenger is not None else None
            cache_key = (cls, message.pk, alias, get_language())
        kept = cache.get(cache_key, message.context) if cache is not None and cache_key is not None else None
        if kept is not None:
            text, placeholders = kept
        elif len(dispatches) < 2:  # one e-mail: rendered with its own links straight away
            return [cls.compile(message, messenger, dispatch=dispatch) for dispatch in dispatches]
        else:
            placeholders = {name: f'sitemessagedirective{uuid4().hex}' for name in (URL_UNSUBSCRIBE, URL_MARK_READ)}
            watch = _DispatchWatch(dispatches[0])
            reset_token = _DIRECTIVE_PLACEHOLDERS.set(placeholders)
            try:
                text = cls.compile(message, messenger, dispatch=watch)
            finally:
                _DIRECTIVE_PLACEHOLDERS.reset(reset_token)
            if watch.touched:
                return [cls.compile(message, messenger, dispatch=dispatch) for dispatch in dispatches]
            if cache is not None and cache_key is not None:
                cache.put(cache_key, message.context, text, placeholders)
        used = {name: token for name, token in placeholders.items() if token in text}
        if not used:
            return [text] * len(dispatches)  # one and the same str object: held once
        directive_getters = {URL_UNSUBSCRIBE: cls.get_unsubscribe_directive, URL_MARK_READ: cls.get_mark_read_directive}
        return [
            DeferredText(text, [(token, directive_getters[name](message, dispatch)) for name, token in used.items()])
            for dispatch in dispatches
        ]

    # Signed links -----------------------------------------------------------------------------

    @classmethod
    def get_dispatch_hash(cls, dispatch_id, message_id, secret: Optional[str] = None) -> str:
        """Return the 1.4.0 signature of a dispatch's links (HMAC-SHA1, the same for both actions).

        Links are no longer made with it (each action has its own signature, see
        :mod:`sitemessage.links`); it is kept to check links already delivered and for projects
        that call it.
        """
        return salted_hmac(str(dispatch_id), f'{message_id}|{dispatch_id}', secret=secret, algorithm='sha1').hexdigest()

    @classmethod
    def is_dispatch_hash_valid(cls, dispatch_id, message_id, hashed: str) -> bool:
        """Check a 1.4.0 signature in constant time, against ``SECRET_KEY`` and its fallbacks."""
        secrets = [settings.SECRET_KEY, *getattr(settings, 'SECRET_KEY_FALLBACKS', [])]
        return any(
            constant_time_compare(cls.get_dispatch_hash(dispatch_id, message_id, secret), str(hashed))
            for secret in secrets
        )

    @classmethod
    def get_unsubscribe_directive(cls, message_model, dispatch_model) -> str:
        """Return the signed unsubscribe URL of a dispatch ('' without one).

        Its token names the recipient, the message type and the messenger, so it still
        unsubscribes after the dispatch has been cleaned up; it cannot mark anything read.
        """
        return cls._get_url(URL_UNSUBSCRIBE, message_model, dispatch_model)

    @classmethod
    def get_mark_read_directive(cls, message_model, dispatch_model) -> str:
        """Return the signed mark-read URL of a dispatch ('' without one); it cannot unsubscribe."""
        return cls._get_url(URL_MARK_READ, message_model, dispatch_model)

    @classmethod
    def _get_url(cls, name: str, message_model, dispatch_model) -> str:
        if dispatch_model is None:
            return ''
        placeholders = _DIRECTIVE_PLACEHOLDERS.get()
        if placeholders is not None:
            return placeholders[name]
        if getattr(dispatch_model, 'pk', None) is None:
            return ''
        return signed_link_url(name, cls.get_alias(), message_model, dispatch_model)

    @classmethod
    def get_list_id(cls) -> str:
        """Return the ``List-Id`` header (RFC 2919) of this type's e-mails; '' sends none.

        By default ``Title <alias.site-domain>``; override it to name your own list.
        """
        return default_list_id(cls.title, cls.get_alias())

    # Requests from the bundled views ----------------------------------------------------------

    @classmethod
    def handle_unsubscribe_request(
        cls, request: HttpRequest, message: 'Message', dispatch: 'Dispatch', hash_is_valid: bool, redirect_to: str
    ) -> HttpResponse:
        """Cancel the subscription behind a dispatch when its link is valid and redirect; else say it is invalid.

        After a cleanup, ``message`` and ``dispatch`` are unsaved instances rebuilt from the link.
        """
        from ..models import Subscription

        if hash_is_valid:
            Subscription.cancel(dispatch.recipient_id or dispatch.address, cls.get_alias(), dispatch.messenger)
            sig_unsubscribe_success.send(cls, request=request, message=message, dispatch=dispatch)
            return unsubscribed_response(request, str(cls.title), redirect_to)
        sig_unsubscribe_failed.send(cls, request=request, message=message, dispatch=dispatch)
        return invalid_link_response(request, ACTION_UNSUBSCRIBE)

    @classmethod
    def handle_mark_read_request(
        cls, request: HttpRequest, message: 'Message', dispatch: 'Dispatch', hash_is_valid: bool, redirect_to: str
    ) -> HttpResponse:
        """Mark a dispatch read when its link is valid and redirect; else answer the blank image with 400."""
        if hash_is_valid:
            dispatch.mark_read()
            dispatch.save(update_fields=['read_status'])
            sig_mark_read_success.send(cls, request=request, message=message, dispatch=dispatch)
            return redirect(redirect_to)
        sig_mark_read_failed.send(cls, request=request, message=message, dispatch=dispatch)
        return invalid_link_response(request, ACTION_MARK_READ)


_BASE_GET_SUBSCRIBERS = MessageBase.get_subscribers.__func__  # type: ignore[attr-defined]
