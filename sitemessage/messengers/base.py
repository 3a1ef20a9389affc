"""The base of messengers: delivery of compiled messages to addresses over one protocol.

A messenger is a plugin of the delivery engine (:mod:`sitemessage.delivery`): it implements
public hooks (``before_send``, ``send`` or ``send_many``, ``after_send``, optionally
``prepare_batch``) and never touches the database: ``mark_sent`` / ``mark_error`` /
``mark_failed`` record each dispatch's outcome in memory, and the engine stores all outcomes of
a batch with a few bulk queries.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Tuple, Type

from django.contrib.auth.base_user import AbstractBaseUser

from ..delivery import handover, ratelimit
from ..delivery.outcomes import MessageWork, describe_error
from ..delivery.session import DeliverySession
from ..exceptions import RecipientRefusedError
from ..models import Dispatch, Message, MessageTuple
from ..recipients import Recipient, is_iterable
from ..settings import get_setting

if TYPE_CHECKING:  # pragma: nocover
    from ..messages.base import MessageBase

__all__ = [
    'MessengerBase',
    'RequestsMessengerBase',  # noqa: F822  (deprecated here, served lazily by __getattr__)
    'TypeProxy',  # noqa: F822  (the same)
    'Message',
    'Dispatch',
    'MessageTuple',
    'Recipient',
    'MessageWork',
    'describe_error',
]


class PerThread:
    """A messenger attribute holding one ``factory()`` object per instance and per thread.

    Why: a registered messenger is shared, and with ``parallel_connections`` above 1 each
    connection runs on a thread of its own, so connection state must not be shared. Created on
    first use, so it works in subclasses whose ``__init__`` does not call the base's (1.4.0 allowed that).
    """

    def __init__(self, factory: Callable[[], Any]):
        self.factory = factory
        self.name = ''

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = f'_per_thread{name}'

    def __get__(self, instance: Any, owner: Optional[type] = None) -> Any:
        if instance is None:
            return self
        local = instance.__dict__.get(self.name)
        if local is None:
            local = instance.__dict__.setdefault(self.name, threading.local())
        state = getattr(local, 'state', None)
        if state is None:
            state = local.state = self.factory()
        return state


class MessengerBase:
    """Base class of messengers: subclass it, set ``alias`` and ``title``, implement :meth:`send`.

    :meth:`before_send` connects, :meth:`send` delivers one message's dispatches and marks each
    with :meth:`mark_sent`, :meth:`mark_error` (retried later) or :meth:`mark_failed` (given up),
    and :meth:`after_send` disconnects. A dispatch left unmarked is recorded as an error.
    """

    alias: Optional[str] = None
    title: Optional[str] = None
    allow_user_subscription: bool = True
    address_attr: Optional[str] = None
    # Connections delivering one batch at once (one thread each). Above 1, a messenger must keep
    # its connection state per thread, as SMTPMessenger does. See get_parallel_connections().
    parallel_connections: int = 1
    # With one connection, deliver on a thread of the session's own (as with several) rather than
    # on the thread that runs the loop, so the database work of the next and the previous batch
    # (claim, store) overlaps the wait for the service's replies. For messengers that keep their
    # connection state per thread and do not rely on the caller's thread (the built-in ones).
    deliver_on_own_thread: bool = False

    # 1.4.0 kept per-run status buckets here; outcomes now live on the dispatches themselves.
    _st = None

    def __str__(self):
        return self.get_alias()

    @classmethod
    def get_alias(cls) -> str:
        """Return the alias of this messenger: ``alias``, or the class name when it is not set."""
        return cls.alias if cls.alias is not None else cls.__name__

    @classmethod
    def get_address(cls, recipient: Any) -> Any:
        """Return the address of a recipient (a user's ``address_attr``), or the recipient itself."""
        if cls.address_attr:
            address = getattr(recipient, cls.address_attr, None)
            if address:
                return address
        return recipient

    @classmethod
    def structure_recipients_data(cls, recipients) -> List[Recipient]:
        """Turn users and/or addresses into :class:`~sitemessage.utils.Recipient` items."""
        if not is_iterable(recipients):
            recipients = (recipients,)
        structured = []
        for item in recipients:
            user = item if isinstance(item, AbstractBaseUser) else None
            address = cls.get_address(item)
            if user is not None and address is item:
                address = ''  # the user has no address for this messenger: sending fails with a reason
            structured.append(Recipient(cls.get_alias(), user, address))
        return structured

    # Hooks ------------------------------------------------------------------------------------

    def before_send(self) -> None:
        """Warm up (connect) before sending; raise :class:`MessengerWarmupException` on failure."""

    def after_send(self) -> None:
        """Cool down (disconnect) after sending."""

    def send(self, message_cls: Type['MessageBase'], message_model: Message, dispatch_models: List[Dispatch]) -> None:
        """Deliver ``dispatch_models`` (their compiled text is in ``message_cache``) and mark each."""
        raise NotImplementedError(f'{type(self).__name__} must implement send()')

    def send_many(self, items: List[MessageWork]) -> None:
        """Deliver several messages at once: ``items`` are :class:`~sitemessage.delivery.outcomes.MessageWork`.

        Each unpacks as ``(message type, message, dispatches)``. The engine hands a connection its
        share this way. By default it calls :meth:`send` for each message (a failure in one does
        not touch the others); override it to stream over a connection, as ``SMTPMessenger``
        pipelines e-mails. Not used when a rate limit applies.
        """
        for message_cls, message, dispatches in items:
            handover.send_guarded(self, message_cls, message, dispatches)

    def prepare_batch(self, items: List[MessageWork]) -> None:
        """Look up, in one go, what delivering a claimed batch needs from the database.

        The one place where a project's messenger may query the database (the built-in ones never
        do). Called once a batch on the thread that claimed it, before the batch is cut for the
        connections, so that their threads need not query the database (on SQLite they would wait
        for the claiming thread's write lock). ``items`` are as :meth:`send_many` gets them. The
        default does nothing; an error here is logged and delivery goes on without what it found.
        """

    def _build_message(self, to: Any, text: str) -> Any:
        """Hook: return what :meth:`_send_message` sends to ``to`` for ``text``; by default ``text`` itself.

        One signature for every messenger (1.4.0's order); a messenger may accept more keyword
        arguments after these two, as ``SMTPMessenger`` does. Raise a delivery error for an
        address that cannot work.
        """
        return text

    def _send_message(self, msg: Any, to: Optional[str] = None) -> Any:
        """Hook: send ``msg`` (built by :meth:`_build_message`) to ``to`` and return the service's answer.

        Raise :class:`~sitemessage.exceptions.PermanentDeliveryError` or
        :class:`~sitemessage.exceptions.TemporaryDeliveryError` when the service refuses it.
        """
        raise NotImplementedError(
            f'{type(self).__name__} must implement _send_message() or _test_message() to be probed'
        )

    def _test_message(self, to: Optional[str], text: str) -> Any:
        return self._send_message(self._build_message(to, text), to=to)

    def send_test_message(self, to: Optional[str], text: str) -> Any:
        """Send ``text`` to ``to`` right away, bypassing the queue; errors reach the caller."""
        with handover.messenger_lock(self):
            self.before_send()
            try:
                return self._test_message(to, text)
            finally:
                self.after_send()

    # Outcomes ---------------------------------------------------------------------------------

    def mark_pending(self, dispatch: Dispatch) -> None:
        """Put a dispatch back in the queue without counting an attempt."""
        dispatch.set_outcome(Dispatch.DISPATCH_STATUS_PENDING)

    def mark_sent(self, dispatch: Dispatch, provider_id: Any = None) -> None:
        """Record that a dispatch was delivered; ``provider_id`` is the service's id of the message, if any.

        The id is stored as ``Dispatch.provider_message_id`` (e-mail ``Message-ID``, Telegram
        ``message_id``, post id), so that the service's delivery reports can find the dispatch.
        """
        dispatch.set_outcome(Dispatch.DISPATCH_STATUS_SENT, provider_id=provider_id)

    def mark_error(
        self,
        dispatch: Dispatch,
        error_log: Any,
        message_cls: Optional[Type['MessageBase']] = None,
        *,
        retry_after: Optional[float] = None,
    ) -> None:
        """Record a failed attempt to be retried; past the type's ``send_retry_limit`` it is failed."""
        if message_cls is None:
            message_cls = dispatch.message.get_type()
        limit = message_cls.send_retry_limit
        if limit is not None and dispatch.attempt_number >= limit:
            self.mark_failed(dispatch, error_log)
            return
        dispatch.set_outcome(Dispatch.DISPATCH_STATUS_ERROR, describe_error(error_log), retry_after=retry_after)

    def mark_failed(self, dispatch: Dispatch, error_log: Any) -> None:
        """Record a failure that will not be retried automatically.

        A :class:`~sitemessage.exceptions.RecipientRefusedError` says the service refused the address
        itself: it counts toward suppressing the address (``SITEMESSAGE_SUPPRESS_AFTER_FAILURES``).
        """
        dispatch.set_outcome(
            Dispatch.DISPATCH_STATUS_FAILED,
            describe_error(error_log),
            recipient_refused=isinstance(error_log, RecipientRefusedError),
        )

    # Delivery ---------------------------------------------------------------------------------

    def process_messages(self, messages: Dict[int, MessageTuple], ignore_unknown_message_types: bool = False) -> None:
        """Deliver claimed dispatches of several messages and store every outcome.

        Whatever fails, each dispatch ends sent, in error (to retry), failed, or back in the
        queue untouched. ``UnknownMessageTypeError`` reaches the caller (after the other
        messages are delivered) unless ``ignore_unknown_message_types`` is set. A thin adapter
        over the engine: the delivery loop itself keeps one
        :class:`~sitemessage.delivery.session.DeliverySession` open for a whole run instead, so
        connections stay open from batch to batch.
        """
        with DeliverySession(self) as session:
            session.finish(session.submit(messages, ignore_unknown_message_types))

    def connection_state_snapshot(self) -> object:
        """What the connection's thread leaves for the caller's, or None (see :meth:`adopt_connection_state`).

        With one connection on a thread of its own (``deliver_on_own_thread``), the caller of
        ``send_scheduled_messages()`` would otherwise find none of the per-thread state that 1.4.0
        left on the messenger after a run (a test reading ``messenger.smtp``, say).
        """
        return None

    def adopt_connection_state(self, snapshot: object) -> None:
        """Take over, on the calling thread, what :meth:`connection_state_snapshot` returned at the end of a run."""

    def get_parallel_connections(self) -> int:
        """How many connections deliver a batch at once: the constructor's, the setting's, or 1."""
        # A constructor's `connections=` lands on the instance; the class attribute is the default.
        return get_setting(
            'PARALLEL_CONNECTIONS',
            alias=self.get_alias(),
            value=vars(self).get('parallel_connections'),
            default=type(self).parallel_connections,
            check='positive_int',
            argument=f'The parallel connections of messenger `{self.get_alias()}`',
        )

    def rate_limits(self) -> Tuple[Optional[float], Optional[float]]:
        """The configured limits of this messenger: (messages a second, per recipient); None is no limit."""
        return ratelimit.limit_for(self.get_alias()), ratelimit.limit_for(self.get_alias(), per_recipient=True)

    # 1.4.0 helpers kept for projects' messengers --------------------------------------------------

    @contextmanager
    def before_after_send_handling(self, messages: Optional[List[MessageTuple]] = None):
        """Run the body between :meth:`before_send` and :meth:`after_send` (for ad hoc calls)."""
        with handover.messenger_lock(self):
            self.before_send()
            try:
                yield
            finally:
                self.after_send()


class _DispatchProcessingHandler:
    """1.4.0's ``DispatchProcessingHandler(messenger=..., messages=...)``: a messenger's warm-up and cool-down.

    Now :meth:`MessengerBase.before_after_send_handling`, which this delegates to; errors reach
    the caller (1.4.0 swallowed them).
    """

    def __init__(self, *, messenger: MessengerBase, messages: Optional[List[MessageTuple]] = None):
        self.messenger = messenger
        self.messages = messages
        self._context = None

    def __enter__(self):
        self._context = self.messenger.before_after_send_handling(self.messages)
        self._context.__enter__()
        return self

    def __exit__(self, *exc_info):
        return self._context.__exit__(*exc_info)


def __getattr__(name):
    from ..deprecation import warn_deprecated

    # RequestsMessengerBase lives in base_http; importable from here as in 1.4.0.
    if name in ('RequestsMessengerBase', 'TypeProxy'):
        from . import base_http

        warn_deprecated(f'{__name__}.{name}', f'sitemessage.messengers.base_http.{name}')
        return getattr(base_http, name)
    if name == 'DispatchProcessingHandler':
        warn_deprecated(f'{__name__}.{name}', 'MessengerBase.before_after_send_handling()')
        return _DispatchProcessingHandler
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
