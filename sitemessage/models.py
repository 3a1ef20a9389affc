"""Models: messages, their dispatches (one per recipient and messenger), errors, subscriptions.

Names, fields, db columns and tables are those of django-sitemessage 1.4.0, so its databases
migrate forward unchanged. All queries and locking of the delivery queue live here, in
:class:`DispatchQuerySet`.
"""

from __future__ import annotations

import collections.abc
import json
import random
import time
from datetime import timedelta
from functools import lru_cache
from typing import Any, Callable, Iterable, Iterator, List, NamedTuple, Optional, Sequence, Tuple, Union
from uuid import uuid4

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.serializers.json import DjangoJSONEncoder
from django.db import IntegrityError, connections, models, transaction
from django.db.models import Case, Exists, ExpressionWrapper, OuterRef, Q, Value, When
from django.db.models.query_utils import DeferredAttribute
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from .delivery.outcomes import Attempt
from .headers import check_message_type_context, check_recipients, unique_recipients
from .languages import LanguageResolver
from .recipients import Recipient
from .registry import get_registered_message_type, get_registered_message_types, get_registered_messenger_objects
from .settings import get_positive_int_setting, get_setting
from .signals import queue_changed

USER_MODEL = getattr(settings, 'AUTH_USER_MODEL', 'auth.User')
IDEMPOTENCY_KEY_LENGTH = 200


class UnreadableContext(dict):
    """The context of a message row that cannot be parsed: empty, with the reason in ``error``.

    Reading such a row never raises (a claim of its batch, a view), so the engine can fail that
    message's dispatches alone, with the reason.
    """

    def __init__(self, error: str):
        super().__init__()
        self.error = error


def _truncated(text: str, limit: int = 300) -> str:
    return text if len(text) <= limit else f'{text[:limit]}... ({len(text)} characters)'


class ContextField(models.TextField):
    """Stores a dict as JSON text (dates, decimals and UUIDs are stored as strings)."""

    @classmethod
    def parse_value(cls, value: str) -> Any:
        try:
            return json.loads(value)
        except (ValueError, RecursionError):  # nested too deep: RecursionError
            raise ValidationError(
                _('Value `%r` is not a valid context.'),
                code='invalid_context',
                params={'value': _truncated(value, 100)},
            ) from None

    def from_db_value(self, value, expression, connection, *rest):
        if value is None:
            return {}
        try:
            parsed = json.loads(value)
        except (ValueError, RecursionError) as error:
            return UnreadableContext(_truncated(describe_parse_error(error)))
        if not isinstance(parsed, dict):
            return UnreadableContext(f'a JSON object was expected, got {_truncated(repr(parsed), 100)}')
        return parsed

    def to_python(self, value):
        if not value:
            return {}
        if isinstance(value, dict):
            return value
        return self.parse_value(value)

    def get_prep_value(self, value):
        try:
            return json.dumps(value, ensure_ascii=False, cls=DjangoJSONEncoder)
        except TypeError as err:
            raise TypeError(f'Message context must be JSON-serialisable: {err} (context: {value!r})') from err

    def value_to_string(self, obj):
        return self.get_prep_value(self.value_from_object(obj))


def describe_parse_error(error: BaseException) -> str:
    if isinstance(error, RecursionError):
        return f'nested too deeply to parse ({error})'
    return f'not valid JSON ({type(error).__name__}: {error})'


def context_problem(message: 'Message') -> Optional[str]:
    """Why the stored context of ``message`` cannot be used (None when it can), naming the message."""
    context = message.context
    if isinstance(context, UnreadableContext):
        return f'The context of message {message.pk} cannot be read: {context.error}'
    return None


class DeferredText:
    """A dispatch's compiled text held as the message's one shared text plus the dispatch's own links.

    Forty recipients of a 5 MB e-mail then cost one 5 MB text, not forty: the full text is built
    each time ``dispatch.message_cache`` is read (a messenger builds its e-mail, the engine stores
    it) and dropped by the reader.
    """

    __slots__ = ('shared', 'replacements')

    def __init__(self, shared: str, replacements: Sequence[Tuple[str, str]]):
        self.shared = shared
        self.replacements = tuple(replacements)

    def __len__(self) -> int:
        return len(self.shared)

    def render(self) -> str:
        text = self.shared
        for token, value in self.replacements:
            text = text.replace(token, value)
        return text

    def __repr__(self):
        return f'<DeferredText of {len(self.shared)} characters, {len(self.replacements)} link(s)>'


class _TextAttribute(DeferredAttribute):
    """``message_cache`` reads as a ``str`` even while it is held as a :class:`DeferredText`."""

    def __get__(self, instance, cls=None):
        if instance is None:
            return self
        value = instance.__dict__.get(self.field.attname, _UNSET)
        if value is _UNSET:
            return super().__get__(instance, cls)  # a deferred field: loaded from the database
        return value.render() if isinstance(value, DeferredText) else value

    def __set__(self, instance, value):
        instance.__dict__[self.field.attname] = value


_UNSET = object()


class CompiledTextField(models.TextField):
    """A ``TextField`` whose value may be held as a :class:`DeferredText` (same column, no migration)."""

    descriptor_class = _TextAttribute

    def deconstruct(self):
        name, _path, args, kwargs = super().deconstruct()
        return name, 'django.db.models.TextField', args, kwargs


def raw_text(dispatch: 'Dispatch'):
    """``message_cache`` as held: a ``str``, a :class:`DeferredText`, or None (never rendered here)."""
    return dispatch.__dict__.get('message_cache')


def has_text(dispatch: 'Dispatch') -> bool:
    """Whether the dispatch has a compiled text (without rendering a deferred one)."""
    return bool(raw_text(dispatch))


class PreparationLost(Exception):
    """Another ``prepare_dispatches()`` run took the message over (this one outlived its lease)."""


class MessageQuerySet(models.QuerySet):
    """Queries of ``prepare_dispatches()``: claiming a message, writing its dispatches chunk by chunk.

    A message is claimed with a guarded UPDATE (a token and a lease), so two workers never prepare
    it at once; each chunk of dispatches is written in one transaction with the id of its last
    subscription, so a preparation cut short (an error, a killed worker) is resumed after it, with
    nothing created twice.
    """

    def claim_preparation(self, message: 'Message', lease_seconds: int) -> bool:
        """Take ``message`` for preparation (its free, or its lease ran out); load the resume point."""
        now, token = timezone.now(), uuid4().hex
        free = Q(preparation_token__isnull=True) | Q(preparation_lease_until__lt=now)
        taken = self.filter(free, pk=message.pk, dispatches_ready=False).update(
            preparation_token=token, preparation_lease_until=now + timedelta(seconds=lease_seconds)
        )
        if not taken:
            return False
        message.preparation_token, message.preparation_claimed = token, True
        message.prepared_through = self.filter(pk=message.pk).values_list('prepared_through', flat=True).get()
        return True

    def write_prepared_chunk(
        self,
        message: 'Message',
        dispatches: List['Dispatch'],
        through: int,
        lease_seconds: int,
        check_existing: bool = True,
    ) -> int:
        """Create a chunk of dispatches and move the resume point past it, atomically; return the count.

        With ``check_existing``, a (messenger, address) that already has a dispatch of the message
        (from an earlier chunk) is left out, as one list of recipients would have been deduplicated.
        Raises :class:`PreparationLost` (nothing written) when the claim is no longer ours.
        """
        now = timezone.now()
        with transaction.atomic(using=self.db):
            # First: the row lock keeps a worker that would take the message over waiting until we commit.
            moved = self.filter(pk=message.pk, preparation_token=message.preparation_token).update(
                prepared_through=through, preparation_lease_until=now + timedelta(seconds=lease_seconds)
            )
            if not moved:
                raise PreparationLost(f'Message {message.pk} is prepared by another run now.')
            if dispatches and check_existing:
                existing = set(
                    Dispatch.objects.using(self.db)
                    .filter(message_id=message.pk, address__in={d.address for d in dispatches})
                    .values_list('messenger', 'address')
                )
                if existing:
                    dispatches = [d for d in dispatches if (d.messenger, d.address) not in existing]
            if dispatches:
                suppressed = fail_suppressed_new(dispatches, self.db)
                Dispatch.objects.using(self.db).bulk_create(dispatches)
                log_suppressed_new(suppressed, self.db)
                queue_changed.send(sender=Dispatch, using=self.db, inserted=True)
        message.prepared_through = through
        return len(dispatches)

    def finish_preparation(self, message: 'Message') -> bool:
        """Mark the message ready if it has dispatches now (else it waits for subscribers); free it."""
        ready = Dispatch.objects.using(self.db).filter(message_id=message.pk).exists()
        self.filter(pk=message.pk, preparation_token=message.preparation_token).update(
            dispatches_ready=ready, preparation_token=None, preparation_lease_until=None, prepared_through=None
        )
        message.dispatches_ready, message.preparation_token, message.prepared_through = ready, None, None
        message.preparation_claimed = False
        return ready

    def release_preparation(self, message: 'Message') -> None:
        """Free a claimed message at once, keeping its resume point (the next run continues from it)."""
        if message.preparation_claimed:
            self.filter(pk=message.pk, preparation_token=message.preparation_token).update(
                preparation_token=None, preparation_lease_until=None
            )
            message.preparation_token, message.preparation_claimed = None, False

    def join_digest(
        self,
        message_class: str,
        key: str,
        recipient: Recipient,
        context: dict,
        window: timedelta,
        merge: Callable[[Optional[dict], dict], dict],
        *,
        sender=None,
        priority: Optional[int] = None,
    ) -> Tuple['Message', 'Dispatch']:
        """Add ``context`` to the open digest window of ``key``, or open one; return the digest and its dispatch.

        A window takes messages while its dispatch waits (pending, not yet due): joining locks that
        row, so a sender cannot claim it half-joined, and one that was claimed already makes the
        joiner seal the window and open the next. The unique constraint on open windows settles
        two schedulers opening one at once: the loser joins the winner's. ``merge(digest context or
        None, context)`` builds the stored context.
        """
        for _attempt in range(10):
            try:
                with transaction.atomic(using=self.db):
                    return self._join_or_open_digest(
                        message_class, key, recipient, context, window, merge, sender, priority
                    )
            except IntegrityError:
                continue  # another scheduler opened this window meanwhile: join it
        raise RuntimeError(f'Could not open or join the digest window `{key}` of `{message_class}`.')

    def _join_or_open_digest(self, message_class, key, recipient, context, duration, merge, sender, priority):
        now = timezone.now()
        window = self.filter(cls=message_class, digest_key=key, digest_open=True)
        # A write first takes the lock before anything is read: the window's row (a row lock), or on
        # SQLite the database (a transaction that read first could not write once another has).
        digest = window.first() if window.update(digest_open=True) else None
        if digest is not None:
            waiting = Dispatch.objects.using(self.db).filter(
                message=digest, dispatch_status=Dispatch.DISPATCH_STATUS_PENDING, next_attempt_at__gt=now
            )
            if waiting.update(message_cache=''):  # locks the dispatch: the text is compiled at send time
                digest.context = merge(digest.context, context)
                digest.save(update_fields=['context'])
                return digest, waiting.get()
            self.filter(pk=digest.pk).update(digest_open=None)  # closed (or being sent): seal it
        closes_at = now + duration
        digest = self.model(
            cls=message_class,
            context=merge(None, context),
            sender=sender,
            dispatches_ready=True,
            group_mark='',
            digest_key=key,
            digest_closes_at=closes_at,
            digest_open=True,
        )
        if priority is not None:
            digest.priority = priority
        digest.save(using=self.db)
        dispatch = Dispatch.for_recipient(recipient, message=digest, next_attempt_at=closes_at)
        dispatch.save(
            using=self.db, force_insert=True
        )  # nothing is due before the window closes: no wake-up for the workers
        return digest, dispatch


class PreparedDispatches(collections.abc.Sequence):
    """The dispatches one ``prepare_dispatches()`` call created, read back from the database when used.

    Holding a million ``Dispatch`` objects is what made preparing a large mailing cost gigabytes:
    this keeps only, per message, the range of ids its dispatches were created in. ``len()`` costs
    no query; iterating (or indexing) reads the dispatches in their current state, in creation order.
    Compares equal to a list of the same dispatches.
    """

    def __init__(self) -> None:
        self._parts: List[Union[List['Dispatch'], Tuple[int, int, int, int]]] = []

    def add(self, part: Union[Sequence['Dispatch'], 'PreparedDispatches']) -> None:
        """Append what preparing one message created: a list, or another :class:`PreparedDispatches`."""
        if isinstance(part, PreparedDispatches):
            self._parts.extend(part._parts)
        elif part:
            self._parts.append(list(part))

    def add_range(self, message_id: int, after_pk: int, through_pk: int, count: int) -> None:
        """Append ``count`` dispatches of a message created with ids in ``(after_pk, through_pk]``."""
        if count:
            self._parts.append((message_id, after_pk, through_pk, count))

    def __len__(self) -> int:
        return sum(len(part) if isinstance(part, list) else part[3] for part in self._parts)

    def __iter__(self) -> Iterator['Dispatch']:
        for part in self._parts:
            if isinstance(part, list):
                yield from part
            else:
                yield from Dispatch.objects.created_in_range(*part[:3]).iterator(chunk_size=2000)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return list(self)[index]
        position = index + len(self) if index < 0 else index
        if not 0 <= position < len(self):
            raise IndexError('PreparedDispatches index out of range')
        for part in self._parts:
            size = len(part) if isinstance(part, list) else part[3]
            if position < size:
                if isinstance(part, list):
                    return part[position]
                return Dispatch.objects.created_in_range(*part[:3])[position]
            position -= size
        raise IndexError(index)  # pragma: no cover - the length is checked above

    def __eq__(self, other) -> bool:
        if isinstance(other, (list, tuple, PreparedDispatches)):
            return list(self) == list(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]  # mutable, like a list

    def __repr__(self) -> str:
        return f'<PreparedDispatches: {len(self)} dispatch(es)>'


class Message(models.Model):
    """A message of some type with its context; delivered through one or more dispatches."""

    time_created = models.DateTimeField(_('Time created'), auto_now_add=True, editable=False)
    sender = models.ForeignKey(USER_MODEL, verbose_name=_('Sender'), null=True, blank=True, on_delete=models.CASCADE)
    cls = models.CharField(
        _('Message class'), max_length=250, db_index=True, help_text=_('Message logic class identifier.')
    )
    group_mark = models.CharField(
        _('Group mark'),
        max_length=128,
        db_index=True,
        db_column='gmark',
        help_text=_('An identifier to group several messages into one.'),
    )
    context = ContextField(_('Message context'))
    priority = models.PositiveIntegerField(
        _('Priority'),
        default=0,
        db_index=True,
        help_text=_(
            'Number describing message sending priority. '
            'Messages with different priorities can be sent with different periodicity.'
        ),
    )
    dispatches_ready = models.BooleanField(
        _('Dispatches ready'),
        db_index=True,
        default=False,
        help_text=_('Indicates whether dispatches for this message are already formed and ready to delivery.'),
    )
    # prepare_dispatches() of a message scheduled without recipients: who is preparing it, until when,
    # and the last subscription whose dispatches are written (a killed preparation resumes after it).
    preparation_token = models.CharField(
        _('Preparation token'),
        max_length=32,
        null=True,
        blank=True,
        editable=False,
        help_text=_('Identifies the prepare_dispatches() run creating the dispatches of this message.'),
    )
    preparation_lease_until = models.DateTimeField(
        _('Preparation lease until'),
        null=True,
        blank=True,
        editable=False,
        help_text=_('Another prepare_dispatches() run may take the message over after this time.'),
    )
    prepared_through = models.BigIntegerField(
        _('Prepared through'),
        null=True,
        blank=True,
        editable=False,
        help_text=_('ID of the last subscription whose dispatches are already created.'),
    )

    # Options of its scheduling: its dispatches are not sent before ``send_at`` nor after ``expires_at``
    # (dispatches hold them: see Dispatch), and the idempotency key of the call that stored it.
    send_at = models.DateTimeField(
        _('Send at'),
        null=True,
        blank=True,
        editable=False,
        help_text=_('Its dispatches are not sent before this time.'),
    )
    expires_at = models.DateTimeField(
        _('Expires at'),
        null=True,
        blank=True,
        editable=False,
        help_text=_('Its dispatches not sent by this time are not sent at all.'),
    )
    idempotency_key = models.CharField(
        _('Idempotency key'),
        max_length=IDEMPOTENCY_KEY_LENGTH,
        null=True,
        blank=True,
        editable=False,
        db_index=True,
        help_text=_('The key given when it was scheduled: another scheduling with this key stores nothing.'),
    )
    # Digest windows (sitemessage.digests): the recipient's key, when the window closes, and whether it
    # still takes messages (True; NULL once sealed, so the unique constraint covers open windows only).
    digest_key = models.CharField(
        _('Digest key'),
        max_length=250,
        blank=True,
        default='',
        help_text=_('The recipient and key of the digest window this message collects; empty: not a digest.'),
    )
    digest_closes_at = models.DateTimeField(
        _('Digest window closes at'),
        null=True,
        blank=True,
        editable=False,
        help_text=_('The digest is sent when its window closes.'),
    )
    digest_open = models.BooleanField(
        _('Digest window open'),
        null=True,
        blank=True,
        default=None,
        editable=False,
        help_text=_('Set while later messages may still join the digest (until its window is sealed).'),
    )

    # Not a field: whether this instance holds the claim of its preparation (MessageQuerySet.claim_preparation()).
    preparation_claimed = False

    objects = MessageQuerySet.as_manager()

    class Meta:
        verbose_name = _('Message')
        verbose_name_plural = _('Messages')
        constraints = [
            # One open digest window per type and key: concurrent schedulers join it, never open a second.
            # NULLs differ from each other, so sealed digests and other messages are not constrained.
            models.UniqueConstraint(fields=['cls', 'digest_key', 'digest_open'], name='sitemessage_digest_open_uniq'),
        ]

    def __str__(self):
        return self.cls

    def get_type(self):
        """Return the registered message type class of this message."""
        return get_registered_message_type(self.cls)

    @classmethod
    def get_without_dispatches(cls):
        """Return messages whose dispatches are not formed yet (scheduled without recipients)."""
        return cls.objects.filter(dispatches_ready=False)

    @classmethod
    def create(
        cls,
        message_class: str,
        context: dict,
        recipients=None,
        sender=None,
        priority: Optional[int] = None,
        group_mark: str = '',
        context_merge_hook: Optional[Callable[[dict, dict], dict]] = None,
    ) -> Tuple['Message', Union[List['Dispatch'], models.QuerySet]]:
        """Create a message and its dispatches, or merge it into a pending message of its group."""
        if recipients is not None:
            recipients = Dispatch.normalize_recipients(recipients)
        check_message_type_context(message_class, context, recipients)
        with transaction.atomic():
            grouped = cls._find_group_message(message_class, group_mark, sender) if group_mark else None
            if grouped is None:
                message = cls(
                    cls=message_class,
                    context=context,
                    sender=sender,
                    dispatches_ready=recipients is not None,
                    group_mark=group_mark,
                )
                if priority is not None:
                    message.priority = priority
                message.save()
                return message, Dispatch.create(message, recipients)
            return grouped, grouped.merge(context, recipients, context_merge_hook)

    @classmethod
    def _find_group_message(cls, message_class: str, group_mark: str, sender) -> Optional['Message']:
        """Return the oldest message of the group still waiting to be sent, locking it."""
        waiting = Q(dispatch__dispatch_status=Dispatch.DISPATCH_STATUS_PENDING) | Q(dispatches_ready=False)
        candidates = cls.objects.filter(waiting, cls=message_class, group_mark=group_mark)
        candidates = candidates.filter(sender__isnull=True) if sender is None else candidates.filter(sender=sender)
        pk = candidates.order_by('pk').values_list('pk', flat=True).first()
        if pk is None:
            return None
        return cls.objects.select_for_update().get(pk=pk)

    def merge(self, new_context: dict, recipients, context_merge_hook=None):
        """Merge a new context (and recipients) into this grouped message; return its pending dispatches."""
        merged = context_merge_hook(self.context, new_context) if context_merge_hook else new_context
        self.context = merged  # type: ignore[assignment]  # a JSON field holds the dict
        self.save(update_fields=['context'])
        if not self.dispatches_ready:
            return []
        pending = self.dispatch_set.filter(dispatch_status=Dispatch.DISPATCH_STATUS_PENDING)
        # The merged text differs: pending dispatches must be compiled anew.
        pending.update(message_cache='')
        if recipients:
            known = set(self.dispatch_set.values_list('messenger', 'address'))
            extra = [r for r in Dispatch.normalize_recipients(recipients) if (r.messenger, r.address) not in known]
            Dispatch.create(self, extra)
        return self.dispatch_set.filter(dispatch_status=Dispatch.DISPATCH_STATUS_PENDING)


class MessageTuple(NamedTuple):
    message: Message
    dispatches: List['Dispatch']


# The alias of the built-in in-app inbox messenger (sitemessage.messengers.inbox): its sent
# dispatches are the users' feed items (see docs/inbox.rst).
INBOX_ALIAS = 'inbox'


class InboxQueries:
    """Queries of the in-app inbox: a user's sent ``inbox`` dispatches are the feed.

    Every method takes the user and filters on them, so a view built on these can never show or
    change another user's items. Changes are bulk UPDATEs, never a query per item.
    """

    def inbox(self, user) -> models.QuerySet:
        """The feed of ``user``: their delivered, not archived inbox items, newest first."""
        if user is None or not getattr(user, 'pk', None):
            return self.none()  # type: ignore[attr-defined]
        return self.filter(  # type: ignore[attr-defined]
            recipient_id=user.pk,
            messenger=INBOX_ALIAS,
            dispatch_status=Dispatch.DISPATCH_STATUS_SENT,
            time_archived__isnull=True,
        ).order_by('-time_dispatched', '-pk')

    def inbox_unread_count(self, user) -> int:
        """How many items of the feed of ``user`` are unread."""
        return self.inbox(user).filter(read_status=Dispatch.READ_STATUS_UNREAD).count()

    def inbox_mark_read(self, user, ids: Optional[Sequence[int]] = None) -> int:
        """Mark items of ``user`` read (all of them when ``ids`` is None); return how many changed."""
        items = self.inbox(user).filter(read_status=Dispatch.READ_STATUS_UNREAD)
        if ids is not None:
            items = items.filter(pk__in=list(ids))
        return Dispatch.objects.filter(pk__in=items.values('pk')).update(read_status=Dispatch.READ_STATUS_READ)

    def inbox_archive(self, user, ids: Sequence[int]) -> int:
        """Take items of ``user`` out of their feed (read, and kept until a cleanup); return how many."""
        items = self.inbox(user).filter(pk__in=list(ids))
        return Dispatch.objects.filter(pk__in=items.values('pk')).update(
            time_archived=timezone.now(), read_status=Dispatch.READ_STATUS_READ
        )


class DispatchQuerySet(InboxQueries, models.QuerySet):
    """Queries of the delivery queue: claiming, releasing and storing outcomes."""

    def sendable(self, now=None):
        """Dispatches that may be sent now: due pending/error ones, and claims whose lease expired."""
        now = now or timezone.now()
        due = Q(next_attempt_at__isnull=True) | Q(next_attempt_at__lte=now)
        waiting = Q(dispatch_status__in=Dispatch.SENDABLE_STATUSES) & due
        abandoned = Q(dispatch_status=Dispatch.DISPATCH_STATUS_PROCESSING, lease_until__lt=now)
        # A claim stored without a lease (a crash of a sender that took no lease) is sendable again too.
        legacy = Q(dispatch_status=Dispatch.DISPATCH_STATUS_PROCESSING, lease_until__isnull=True)
        return self.filter(waiting | abandoned | legacy)

    def claim(
        self,
        limit: int,
        lease_seconds: int,
        *,
        priority=None,
        attempted_before=None,
        exclude_messengers: Iterable[str] = (),
        exclude_types: Iterable[str] = (),
    ) -> List['Dispatch']:
        """Claim up to ``limit`` sendable dispatches, oldest first, for ``lease_seconds``.

        ``SELECT ... FOR UPDATE SKIP LOCKED`` keeps concurrent workers from waiting on each
        other where the database has it; the guarded UPDATE (it re-checks sendability) with a
        fresh token is what makes a claim exclusive, also on SQLite.
        """
        now = timezone.now()
        token = uuid4().hex
        rows = self.claim_candidates(
            now,
            priority=priority,
            attempted_before=attempted_before,
            exclude_messengers=exclude_messengers,
            exclude_types=exclude_types,
        )
        features = connections[self.db].features
        marked = 0
        for _attempt in range(100):
            if features.has_select_for_update_skip_locked:
                with transaction.atomic(using=self.db):
                    # MariaDB has SKIP LOCKED but no FOR UPDATE OF (Django raises NotSupportedError).
                    of = ('self',) if features.has_select_for_update_of else ()
                    picked = list(rows.select_for_update(skip_locked=True, of=of)[:limit])
                    live = self._expire(picked, now)
                    marked = self._mark_claimed(live, token, now, lease_seconds)
                if marked or len(live) == len(picked):
                    break  # claimed, or the queue is empty (for this worker)
            else:
                # No row locks to hold: the guarded UPDATE alone decides who gets each row. A worker
                # whose whole pick went to others meanwhile picks again: the queue is not empty.
                picked = list(rows[:limit])
                live = self._expire(picked, now)
                marked = self._mark_claimed(live, token, now, lease_seconds) if live else 0
                if not picked or marked:
                    break
            # Every dispatch picked had expired (or went to others): pick again.
        if not marked:
            return []  # the queue is empty (for this worker): nothing to load

        claimed = attach_messages(*self._claimed_rows(token))
        # One query for the batch: the engine fails the suppressed ones without an attempt.
        reasons = Suppression.objects.using(self.db).reasons_for((d.messenger, d.address) for d in claimed)
        for dispatch in claimed:
            dispatch.start_attempt()
            dispatch.suppressed_reason = reasons.get((dispatch.messenger, dispatch.address))
        return claimed

    def claim_candidates(
        self,
        now,
        *,
        priority=None,
        attempted_before=None,
        exclude_messengers: Iterable[str] = (),
        exclude_types: Iterable[str] = (),
    ) -> models.QuerySet:
        """The query a claim picks from: ``(id, expires_at)`` of sendable dispatches, oldest first.

        Sendable means due: ``next_attempt_at`` (a retry time, or the ``send_at`` of its scheduling)
        passed or unset. benchmarks/claim_plan.py shows its plan on a queue of a million rows.
        """
        candidates = self.sendable(now)
        if priority is not None:
            candidates = candidates.filter(message__priority=priority)
        if attempted_before is not None:
            candidates = candidates.filter(Q(time_dispatched__isnull=True) | Q(time_dispatched__lt=attempted_before))
        if exclude_messengers:
            candidates = candidates.exclude(messenger__in=list(exclude_messengers))
        if exclude_types:
            candidates = candidates.exclude(message__cls__in=list(exclude_types))
        return candidates.order_by('pk').values_list('pk', 'expires_at')

    def _claimed_rows(self, token: str) -> Tuple[List['Dispatch'], Any]:
        """The dispatches claimed with ``token`` (noting who subscribes) and a query of their messages.

        From SQL compiled once per database: building these queries with the ORM cost more than
        running them, once a batch.
        """
        if self.query.has_filters():  # a narrowed queryset: its own conditions apply
            rows = self.filter(claim_token=token)
            return (
                list(rows.annotate(recipient_subscribes=recipient_subscribes()).order_by('pk')),
                Message.objects.filter(pk__in=rows.values('message_id')),
            )
        dispatches = list(self.model.objects.raw(*_claim_sql(self.db, 'dispatches', token), using=self.db))
        for dispatch in dispatches:  # a raw column: 0/1 on SQLite and MySQL
            dispatch.recipient_subscribes = bool(dispatch.recipient_subscribes)
        return dispatches, Message.objects.raw(*_claim_sql(self.db, 'messages', token), using=self.db)

    def record_sent(self, dispatches: Sequence['Dispatch']) -> int:
        """Record claimed dispatches as sent, in one query, before their batch is stored.

        They keep their claim token: the batch's :meth:`store_outcomes` completes them (texts,
        claim). Only rows still held by their claim are touched; return how many.
        """
        ids = [dispatch.pk for dispatch in dispatches]
        tokens = list({dispatch.claim_token for dispatch in dispatches})
        if not ids:
            return 0
        # Written by hand, not by update(): building that query cost more than running it, and this
        # runs every few e-mails beside the sending threads (the GIL is theirs too).
        connection = connections[self.db]
        ops = connection.ops

        def column(name: str) -> str:
            return ops.quote_name(Dispatch._meta.get_field(name).column)

        def among(name: str, values: list) -> Tuple[str, list]:
            if connection.vendor == 'postgresql':
                return f'{column(name)} = ANY(%s)', [values]
            return f'{column(name)} IN ({", ".join(["%s"] * len(values))})', values

        where, params = among('id', ids)
        if None not in tokens:
            token_where, token_params = among('claim_token', tokens)
            where, params = f'{where} AND {token_where}', params + token_params
        sql = (
            f'UPDATE {ops.quote_name(Dispatch._meta.db_table)} SET {column("dispatch_status")} = %s, '
            f'{column("time_dispatched")} = %s, {column("lease_until")} = NULL WHERE {where}'
        )
        now = ops.adapt_datetimefield_value(timezone.now())
        with connection.cursor() as cursor:
            cursor.execute(sql, [Dispatch.DISPATCH_STATUS_SENT, now, *params])
            return cursor.rowcount

    def count_recent(self, message_class: str, recipients: Sequence[Recipient], since) -> dict:
        """Dispatches of a type to each recipient created since ``since``: ``{(messenger, address): count}``.

        Failed ones (throttled ones among them) reached nobody and are not counted. One query
        for up to 500 recipients.
        """
        counts: dict = {}
        addresses = sorted({'' if r.address is None else r.address for r in recipients})
        messengers = sorted({r.messenger for r in recipients})
        for start in range(0, len(addresses), _CHUNK):
            rows = (
                self.filter(
                    message__cls=message_class,
                    time_created__gte=since,
                    messenger__in=messengers,
                    address__in=addresses[start : start + _CHUNK],
                )
                .exclude(dispatch_status=Dispatch.DISPATCH_STATUS_FAILED)
                .order_by()
                .values_list('messenger', 'address')
                .annotate(count=models.Count('pk'))
            )
            counts.update({(messenger, address): count for messenger, address, count in rows})
        return counts

    def create_throttled(self, message: Message, recipients: Sequence[Recipient], reason: str) -> List['Dispatch']:
        """Record dispatches that were not sent because of a throttle: failed, with ``reason`` as their error."""
        if not recipients:
            return []
        now = timezone.now()
        dispatches = [
            Dispatch.for_recipient(
                r,
                message=message,
                dispatch_status=Dispatch.DISPATCH_STATUS_FAILED,
                time_dispatched=now,
            )
            for r in recipients
        ]
        with transaction.atomic(using=self.db):
            if connections[self.db].features.can_return_rows_from_bulk_insert:
                dispatches = self.bulk_create(dispatches)
            else:
                for dispatch in dispatches:
                    dispatch.save(using=self.db)
            DispatchError.objects.using(self.db).bulk_create(
                [DispatchError(dispatch=dispatch, error_log=reason) for dispatch in dispatches]
            )
        for dispatch in dispatches:
            dispatch.error_log = reason
        return dispatches

    def failed_for_fallback(self, ids: Sequence[int]) -> List['Dispatch']:
        """Those of ``ids`` stored Failed, with their recipient and no fallback yet (one query a chunk).

        Read back rather than trusted from memory: a dispatch whose outcome was not stored (another
        worker claimed it meanwhile) gets no fallback.
        """
        found: List['Dispatch'] = []
        for start in range(0, len(ids), _CHUNK):
            found.extend(
                self.filter(
                    pk__in=ids[start : start + _CHUNK],
                    dispatch_status=Dispatch.DISPATCH_STATUS_FAILED,
                    recipient__isnull=False,
                    fallback_dispatch__isnull=True,
                )
                .select_related('recipient')
                .only('pk', 'message_id', 'messenger', 'recipient')
            )
        return found

    def existing_routes(self, dispatches: Sequence['Dispatch']) -> set:
        """The ``(message id, messenger, recipient id)`` of ``dispatches`` a dispatch already takes (one query)."""
        if not dispatches:
            return set()
        routes = {(d.message_id, d.messenger, d.recipient_id) for d in dispatches}
        rows = self.filter(
            message_id__in={route[0] for route in routes},
            messenger__in={route[1] for route in routes},
            recipient_id__in={route[2] for route in routes},
        ).values_list('message_id', 'messenger', 'recipient_id')
        return set(rows) & routes

    def create_fallbacks(self, fallbacks: Sequence['Dispatch']) -> None:
        """Insert fallback dispatches in one query; one already there for a dispatch wins (unique ``fallback_of``)."""
        if not fallbacks:
            return
        self.bulk_create(fallbacks, ignore_conflicts=True)
        queue_changed.send(sender=Dispatch, using=self.db)

    def last_pk(self) -> int:
        """The highest dispatch id so far (0: none); what ``prepare_dispatches()`` creates comes after it."""
        return self.aggregate(last=models.Max('pk'))['last'] or 0

    def created_in_range(self, message_id: int, after_pk: int, through_pk: int) -> models.QuerySet:
        """Dispatches of a message with ids in ``(after_pk, through_pk]``, in creation order."""
        return self.filter(message_id=message_id, pk__gt=after_pk, pk__lte=through_pk).order_by('pk')

    def note_subscribers(self, dispatches: Sequence['Dispatch']) -> None:
        """Set ``recipient_subscribes`` on each of ``dispatches`` that lacks it, in one query a few hundred.

        A claim sets it already (in the query that loads the batch); this serves dispatches a
        project hands to ``process_messages()`` itself.
        """
        unknown = {dispatch.pk: dispatch for dispatch in dispatches if dispatch.recipient_subscribes is None}
        unknown.pop(None, None)
        ids = list(unknown)
        for start in range(0, len(ids), _CHUNK):
            found = dict(
                self.filter(pk__in=ids[start : start + _CHUNK])
                .annotate(subscribes=recipient_subscribes())
                .values_list('pk', 'subscribes')
            )
            for pk in ids[start : start + _CHUNK]:
                unknown[pk].recipient_subscribes = bool(found.get(pk))

    def _expire(self, picked: Sequence[Tuple[int, Any]], now) -> List[int]:
        """Fail the picked dispatches past their ``expires_at`` with the reason "expired"; return the others' ids.

        A few queries for all of them, and only when some expired: the update is guarded (still
        sendable) and marks them with a token, so each expired dispatch gets its reason once even
        when two workers picked it.
        """
        expired = {pk: expires_at for pk, expires_at in picked if expires_at is not None and expires_at <= now}
        if expired:
            token = uuid4().hex
            done = (
                self.model.objects.sendable(now)
                .filter(pk__in=list(expired), expires_at__lte=now)
                .update(dispatch_status=Dispatch.DISPATCH_STATUS_FAILED, claim_token=token, lease_until=None)
            )
            if done:
                ids = list(self.model.objects.filter(claim_token=token).values_list('pk', flat=True))
                DispatchError.objects.bulk_create(
                    [DispatchError(dispatch_id=pk, error_log=expired_reason(expired[pk])) for pk in ids]
                )
                self.model.objects.filter(claim_token=token).update(claim_token=None)
        return [pk for pk, _expires_at in picked if pk not in expired]

    def _mark_claimed(self, ids: Sequence[int], token: str, now, lease_seconds: int) -> int:
        if not ids:
            return 0
        return (
            self.model.objects.sendable(now)
            .filter(pk__in=ids)
            .update(
                dispatch_status=Dispatch.DISPATCH_STATUS_PROCESSING,
                claim_token=token,
                lease_until=now + timedelta(seconds=lease_seconds),
            )
        )

    def release(self, dispatches: Sequence['Dispatch']) -> int:
        """Return claimed dispatches to the queue untouched (no attempt was made)."""
        by_token: dict = {}
        for dispatch in dispatches:
            by_token.setdefault(dispatch.claim_token, []).append(dispatch.pk)
        released = 0
        for token, ids in by_token.items():
            released += self.model.objects.filter(pk__in=ids, claim_token=token).update(
                dispatch_status=Case(
                    When(retry_count=0, then=Value(Dispatch.DISPATCH_STATUS_PENDING)),
                    default=Value(Dispatch.DISPATCH_STATUS_ERROR),
                ),
                claim_token=None,
                lease_until=None,
            )
        for dispatch in dispatches:
            dispatch.claim_token = dispatch.lease_until = None
        return released

    def store_outcomes(self, dispatches: Sequence['Dispatch']) -> None:
        """Write the outcome of an attempt for each dispatch: a few bulk queries, never one per row.

        Sent dispatches share their new values, so one UPDATE sets them all (plus one for the
        compiled texts); dispatches in error carry their own retry time and count.
        """
        if not dispatches:
            return
        now = timezone.now()
        tokens = {d.claim_token for d in dispatches}
        target = self.model.objects.all()
        if None not in tokens:
            # Never overwrite a dispatch another worker has claimed since (our lease expired).
            target = target.filter(claim_token__in=tokens)
        for dispatch in dispatches:
            dispatch.time_dispatched = now
            dispatch.lease_until = dispatch.claim_token = None
            dispatch.next_attempt_at = (
                now + retry_delay(dispatch) if dispatch.dispatch_status == Dispatch.DISPATCH_STATUS_ERROR else None
            )

        failed = [d for d in dispatches if d.dispatch_status in Dispatch.ERROR_STATUSES]
        others = [d for d in dispatches if d.dispatch_status not in Dispatch.ERROR_STATUSES]
        # Texts and provider ids first: the status updates below release the claim that ``target`` filters on.
        self._store_texts(target, [d for d in dispatches if _text_changed(d)])
        with_ids = [d for d in others if d.dispatch_status == Dispatch.DISPATCH_STATUS_SENT and d.provider_message_id]
        if with_ids:  # each sent message has its own id
            self._store_provider_ids(with_ids, None if None in tokens else list(tokens))
        by_status: dict = {}
        for dispatch in others:  # sent (or deferred): they share their new values
            by_status.setdefault(dispatch.dispatch_status, []).append(dispatch.pk)
        for status, ids in by_status.items():
            target.filter(pk__in=ids).update(
                dispatch_status=status, time_dispatched=now, lease_until=None, claim_token=None, next_attempt_at=None
            )
        if failed:  # each has its own retry count and time
            target.bulk_update(failed, [name for name in Dispatch.OUTCOME_FIELDS if name != 'message_cache'])
        # A sent dispatch may carry a note too (recipients an SMTP server refused among others).
        errors = [DispatchError(dispatch=d, error_log=str(d.error_log)) for d in dispatches if d.error_log is not None]
        DispatchError.objects.bulk_create(errors)

    def _store_provider_ids(self, dispatches: Sequence['Dispatch'], tokens: Optional[List[str]]) -> None:
        """Write each dispatch's own ``provider_message_id``: one UPDATE per few hundred, written by hand.

        ``bulk_update()`` builds a ``Case``/``When`` expression per row, which cost more than the
        rest of storing a batch (60 ms for 200 on the benchmark machine); this SQL costs a fraction.
        """
        connection = connections[self.db]
        quote = connection.ops.quote_name
        table, pk, column, token = (
            quote(Dispatch._meta.db_table),
            quote(Dispatch._meta.pk.column),
            quote(Dispatch._meta.get_field('provider_message_id').column),
            quote(Dispatch._meta.get_field('claim_token').column),
        )
        size = 300 if tokens is None else max(50, 300 - len(tokens))  # under SQLite's 999 parameters
        with connection.cursor() as cursor:
            for start in range(0, len(dispatches), size):
                chunk = dispatches[start : start + size]
                cases = ' '.join(['WHEN %s THEN %s'] * len(chunk))
                params: list = [value for d in chunk for value in (d.pk, d.provider_message_id)]
                params += [d.pk for d in chunk]
                where = f'{pk} IN ({", ".join(["%s"] * len(chunk))})'
                if tokens is not None:
                    where += f' AND {token} IN ({", ".join(["%s"] * len(tokens))})'
                    params += tokens
                cursor.execute(
                    f'UPDATE {table} SET {column} = CASE {pk} {cases} ELSE {column} END WHERE {where}', params
                )

    @staticmethod
    def _store_texts(target, dispatches: Sequence['Dispatch']) -> None:
        """Persist compiled texts: one query for a batch of small texts, one per distinct text for large ones.

        Large texts are built and written one at a time, so a batch never holds every
        recipient's copy at once; dispatches holding one and the same text share its UPDATE.
        """
        if sum(len(raw_text(d) or '') for d in dispatches) <= TEXTS_PER_QUERY:
            texts = {dispatch.message_cache for dispatch in dispatches}
            if len(texts) == 1:
                target.filter(pk__in=[d.pk for d in dispatches]).update(message_cache=texts.pop())
            elif texts:
                target.bulk_update(dispatches, ['message_cache'])
            return
        groups: dict = {}  # identity of the text held -> (a dispatch holding it, [pk])
        for dispatch in dispatches:
            held = raw_text(dispatch)
            if isinstance(held, DeferredText):
                key = id(dispatch) if held.replacements else id(held.shared)
            else:
                key = id(held)
            groups.setdefault(key, (dispatch, []))[1].append(dispatch.pk)
        for first, pks in groups.values():
            target.filter(pk__in=pks).update(message_cache=first.message_cache)


# Above this many characters of distinct compiled texts in a batch, each text is written on its own.
TEXTS_PER_QUERY = 1_000_000


_CHUNK = 500  # ids in one IN (...): under every database's parameter limit


def recipient_subscribes() -> ExpressionWrapper:
    """Whether a dispatch's recipient subscribes to its message's type over its messenger (an annotation).

    A user's dispatch matches the user's subscription, an address' dispatch an address subscription.
    """
    same_type = Subscription.objects.filter(message_cls=OuterRef('message__cls'), messenger_cls=OuterRef('messenger'))
    users = Q(Exists(same_type.filter(recipient_id=OuterRef('recipient_id'))), recipient__isnull=False)
    addresses = Q(Exists(same_type.filter(recipient__isnull=True, address=OuterRef('address'))), recipient__isnull=True)
    return ExpressionWrapper(users | addresses, output_field=models.BooleanField())


_TOKEN = '<claim token>'  # stands for the claim token among the parameters of a compiled query


def _claim_sql(using: str, rows: str, token: str) -> Tuple[str, list]:
    """The SQL and parameters loading what a claim took: ``rows`` is ``'dispatches'`` or ``'messages'``."""
    sql, params = _compiled_claim_sql(using, rows)
    return sql, [token if param == _TOKEN else param for param in params]


@lru_cache(maxsize=16)
def _compiled_claim_sql(using: str, rows: str) -> Tuple[str, tuple]:
    claimed = Dispatch.objects.using(using).filter(claim_token=_TOKEN)
    if rows == 'dispatches':
        query = claimed.annotate(recipient_subscribes=recipient_subscribes()).order_by('pk')
    else:
        query = Message.objects.using(using).filter(pk__in=claimed.values('message_id'))
    sql, params = query.query.get_compiler(using).as_sql()
    if sum(param == _TOKEN for param in params) != 1:  # the shortcut needs the token as one parameter
        raise RuntimeError('The claim token is not a parameter of the compiled query.')
    return sql, tuple(params)


def _text_changed(dispatch: 'Dispatch') -> bool:
    held = raw_text(dispatch)
    if isinstance(held, DeferredText):
        return True  # compiled in this attempt
    return held != (dispatch.attempt.stored_text if dispatch.attempt is not None else None)


def attach_messages(dispatches: List['Dispatch'], messages: Optional[models.QuerySet] = None) -> List['Dispatch']:
    """Load the messages of ``dispatches`` in one query, one instance per message; return the dispatches.

    ``select_related`` would make one instance per dispatch, each parsing its own copy of the
    context: forty recipients of a 5 MB e-mail would hold forty copies. A dispatch whose message
    was deleted meanwhile is gone too (cascade): it is left out. ``messages`` may select them
    (a claim selects them by a subquery: no list of ids to pass).
    """
    if not dispatches:
        return dispatches
    if messages is None:
        messages = Message.objects.using(dispatches[0]._state.db).in_bulk({d.message_id for d in dispatches})
    else:
        messages = {message.pk: message for message in messages.using(dispatches[0]._state.db)}
    kept = []
    for dispatch in dispatches:
        message = messages.get(dispatch.message_id)
        if message is not None:
            dispatch.message = message
            kept.append(dispatch)
    return kept


def expired_reason(expires_at) -> str:
    """The error log of a dispatch that expired: it starts with the reason, ``expired``."""
    return f'expired: not sent by its expires_at, {expires_at.isoformat()}'


def retry_delay(dispatch: 'Dispatch') -> timedelta:
    """Exponential backoff with jitter before the next attempt of a dispatch in error."""
    hint = dispatch.attempt.retry_after if dispatch.attempt is not None else None
    base = get_setting('RETRY_DELAY_SECONDS')
    delay = base * 2 ** max(dispatch.retry_count - 1, 0) if base else 0
    delay = min(delay, get_setting('RETRY_DELAY_MAX_SECONDS'))
    if delay:
        delay = random.uniform(delay / 2, delay)  # jitter spreads retries of a failed burst
    if hint:
        delay = max(delay, float(hint))
    return timedelta(seconds=delay)


class Dispatch(models.Model):
    """A message's delivery to one address through one messenger."""

    DISPATCH_STATUS_PENDING = 1
    DISPATCH_STATUS_SENT = 2
    DISPATCH_STATUS_ERROR = 3
    DISPATCH_STATUS_FAILED = 4
    DISPATCH_STATUS_PROCESSING = 5

    DISPATCH_STATUSES = (
        (DISPATCH_STATUS_PENDING, _('Pending')),
        (DISPATCH_STATUS_PROCESSING, _('Processing')),
        (DISPATCH_STATUS_SENT, _('Sent')),
        (DISPATCH_STATUS_ERROR, _('Error')),
        (DISPATCH_STATUS_FAILED, _('Failed')),
    )

    READ_STATUS_UNREAD = 0
    READ_STATUS_READ = 1

    READ_STATUSES = (
        (READ_STATUS_UNREAD, _('Unread')),
        (READ_STATUS_READ, _('Read')),
    )

    SENDABLE_STATUSES = (DISPATCH_STATUS_PENDING, DISPATCH_STATUS_ERROR)
    ERROR_STATUSES = (DISPATCH_STATUS_ERROR, DISPATCH_STATUS_FAILED)
    OUTCOME_FIELDS = (
        'dispatch_status',
        'retry_count',
        'message_cache',
        'time_dispatched',
        'next_attempt_at',
        'lease_until',
        'claim_token',
    )

    # Provider statuses, ranked: a later event only replaces an earlier one of a lower rank (a replayed
    # or late "delivered" never hides a bounce). See sitemessage.tracking.
    PROVIDER_STATUS_DELIVERED = 1
    PROVIDER_STATUS_OPENED = 2
    PROVIDER_STATUS_CLICKED = 3
    PROVIDER_STATUS_UNSUBSCRIBED = 4
    PROVIDER_STATUS_BOUNCED = 5
    PROVIDER_STATUS_COMPLAINED = 6

    PROVIDER_STATUSES = (
        (PROVIDER_STATUS_DELIVERED, _('Delivered')),
        (PROVIDER_STATUS_OPENED, _('Opened')),
        (PROVIDER_STATUS_CLICKED, _('Clicked')),
        (PROVIDER_STATUS_UNSUBSCRIBED, _('Unsubscribed')),
        (PROVIDER_STATUS_BOUNCED, _('Bounced')),
        (PROVIDER_STATUS_COMPLAINED, _('Complained')),
    )

    # Not fields: the text of this attempt's error (as 1.4.0 set it) and the attempt itself, while claimed.
    error_log = None
    attempt: Optional[Attempt] = None
    # Whether the recipient subscribes to this message type over this messenger (one-click unsubscribe
    # means something only then): set by a claim, or by DispatchQuerySet.note_subscribers(); None: not known.
    recipient_subscribes: Optional[bool] = None
    # Why the (messenger, address) of this dispatch is suppressed (set by a claim), or None.
    suppressed_reason: Optional[str] = None

    time_created = models.DateTimeField(_('Time created'), auto_now_add=True, editable=False)
    time_dispatched = models.DateTimeField(
        _('Time dispatched'), editable=False, null=True, blank=True, help_text=_('Time of the last delivery attempt.')
    )
    message = models.ForeignKey(Message, verbose_name=_('Message'), on_delete=models.CASCADE)
    messenger = models.CharField(
        _('Messenger'), max_length=250, db_index=True, help_text=_('Messenger class identifier.')
    )
    recipient = models.ForeignKey(
        USER_MODEL, verbose_name=_('Recipient'), null=True, blank=True, on_delete=models.CASCADE
    )
    address = models.CharField(_('Address'), max_length=250, help_text=_('Recipient address.'))
    retry_count = models.PositiveIntegerField(
        _('Retry count'), default=0, help_text=_('A number of delivery retries has already been made.')
    )
    message_cache = CompiledTextField(_('Message cache'), null=True, editable=False)
    dispatch_status = models.PositiveIntegerField(
        _('Dispatch status'), choices=DISPATCH_STATUSES, default=DISPATCH_STATUS_PENDING
    )
    read_status = models.PositiveIntegerField(_('Read status'), choices=READ_STATUSES, default=READ_STATUS_UNREAD)
    # The lease of a worker's claim, and the earliest time of the next attempt.
    claim_token = models.CharField(
        _('Claim token'),
        max_length=32,
        null=True,
        blank=True,
        editable=False,
        db_index=True,
        help_text=_('Identifies the delivery run that has claimed this dispatch.'),
    )
    lease_until = models.DateTimeField(
        _('Lease until'),
        null=True,
        blank=True,
        editable=False,
        help_text=_('A claimed dispatch becomes sendable again after this time (its worker is gone).'),
    )
    next_attempt_at = models.DateTimeField(
        _('Next attempt at'),
        null=True,
        blank=True,
        editable=False,
        help_text=_('The dispatch is not sent before this time (its send_at, or the retry time of one in error).'),
    )
    expires_at = models.DateTimeField(
        _('Expires at'),
        null=True,
        blank=True,
        editable=False,
        help_text=_('Not sent by this time: it fails with the reason "expired" instead.'),
    )
    # Resolved when the dispatch is created (sitemessage.languages); empty on dispatches from before 2.0.
    language = models.CharField(
        _('Language'),
        max_length=15,
        null=True,
        blank=True,
        editable=False,
        help_text=_('The language the message is rendered in for this recipient.'),
    )
    # What became of it at the provider (docs/provider-status.rst): its id there, and the latest news.
    provider_message_id = models.CharField(
        _('Provider message ID'),
        max_length=255,
        null=True,
        blank=True,
        editable=False,
        db_index=True,
        help_text=_('The id the service gave the sent message (e-mail Message-ID, Telegram message id, post id).'),
    )
    provider_status = models.PositiveSmallIntegerField(
        _('Provider status'),
        choices=PROVIDER_STATUSES,
        null=True,
        blank=True,
        editable=False,
        help_text=_('The latest delivery event the service reported for the sent message.'),
    )
    provider_status_time = models.DateTimeField(
        _('Provider status time'), null=True, blank=True, editable=False, help_text=_('When the service reported it.')
    )
    # In-app inbox items (messenger `inbox`) leave the user's feed when archived.
    time_archived = models.DateTimeField(
        _('Time archived'),
        null=True,
        blank=True,
        editable=False,
        help_text=_('An in-app inbox item the user archived leaves their feed.'),
    )
    # Unique: two workers storing one failure create its fallback once (see delivery.fallback).
    fallback_of = models.OneToOneField(
        'self',
        verbose_name=_('Fallback of'),
        null=True,
        blank=True,
        editable=False,
        on_delete=models.SET_NULL,
        related_name='fallback_dispatch',
        help_text=_('The failed dispatch (through the previous messenger) this one replaces.'),
    )

    objects = DispatchQuerySet.as_manager()

    class Meta:
        verbose_name = _('Dispatch')
        verbose_name_plural = _('Dispatches')
        indexes = [
            models.Index(fields=['dispatch_status', 'next_attempt_at'], name='sitemessage_disp_queue_idx'),
            # prepare_dispatches() looks up each chunk's addresses among the message's dispatches.
            models.Index(fields=['message', 'address'], name='sitemessage_disp_msg_addr_idx'),
            # Throttles count a recipient's recent dispatches (DispatchQuerySet.count_recent()).
            models.Index(fields=['address', 'time_created'], name='sitemessage_disp_addr_time_idx'),
            # A user's in-app inbox feed and its unread count.
            models.Index(
                fields=['recipient', 'messenger', 'dispatch_status', 'read_status'], name='sitemessage_disp_inbox_idx'
            ),
        ]

    def __str__(self):
        return f'{self.address} [{self.messenger}]'

    def is_read(self) -> bool:
        return self.read_status == self.READ_STATUS_READ

    def mark_read(self) -> None:
        """Set the read status (does not save)."""
        self.read_status = self.READ_STATUS_READ

    # In-memory bookkeeping of one delivery attempt (see Attempt); the engine writes it out in bulk.

    def start_attempt(self) -> None:
        """Begin an attempt: outcomes marked from here on count as one attempt."""
        self.attempt = Attempt(self.retry_count, self.message_cache)
        self.error_log = None

    def set_outcome(
        self,
        status: int,
        error_log=None,
        *,
        retry_after: Optional[float] = None,
        provider_id: Any = None,
        recipient_refused: bool = False,
    ) -> None:
        """Record this attempt's outcome in memory; a dispatch marked sent stays sent.

        ``retry_after`` is the service's hint (seconds) before the next attempt of a dispatch in error.
        ``provider_id`` is the service's id of the sent message (kept as ``provider_message_id``);
        ``recipient_refused`` says the service refused the address for good (see :mod:`sitemessage.suppression`).
        """
        attempt = self.attempt
        if attempt is None:  # marked outside a claim (a project's own loop): this is its attempt
            attempt = self.attempt = Attempt(self.retry_count, None)
        if attempt.marked and self.dispatch_status == self.DISPATCH_STATUS_SENT:
            return
        self.retry_count = attempt.retry_count + 1 if status in self.ERROR_STATUSES else attempt.retry_count
        self.dispatch_status = status
        self.error_log = error_log
        attempt.marked = True
        attempt.retry_after = retry_after
        attempt.recipient_refused = recipient_refused and status == self.DISPATCH_STATUS_FAILED
        if provider_id is not None and status == self.DISPATCH_STATUS_SENT:
            self.provider_message_id = str(provider_id)[:255]
        if status == self.DISPATCH_STATUS_SENT and attempt.on_sent is not None:
            attempt.on_sent(self)

    @property
    def has_outcome(self) -> bool:
        """Whether the current attempt has an outcome (a messenger marked it)."""
        return self.attempt is not None and self.attempt.marked

    @property
    def attempt_number(self) -> int:
        """Which attempt of this dispatch the current one is (1: the first)."""
        return (self.attempt.retry_count if self.attempt is not None else self.retry_count) + 1

    @classmethod
    def normalize_recipients(cls, recipients) -> List[Recipient]:
        """Accept one Recipient or any iterable of them (list, tuple, set, generator).

        Addresses are checked (:mod:`sitemessage.headers`) and a (messenger, address) pair named
        several times is kept once, in order of first appearance: it is sent once.
        """
        if not recipients:
            return []
        if isinstance(recipients, Recipient):
            check_recipients((recipients,))
            return [recipients]
        result = []
        for item in recipients:
            if isinstance(item, Recipient):
                result.append(item)
            elif (
                isinstance(item, (list, tuple))
                and not isinstance(item, Recipient)
                and all(isinstance(r, Recipient) for r in item)
            ):
                result.extend(item)  # e.g. `recipients(...),` -- a tuple holding a list
            else:
                raise ValueError(f'Expected a Recipient (see sitemessage.toolbox.recipients()), got {item!r}.')
        check_recipients(result)
        return unique_recipients(result)

    @classmethod
    def for_recipient(cls, recipient: Recipient, **fields: Any) -> 'Dispatch':
        """An unsaved dispatch to ``recipient`` (its messenger, user and address; '' for none) with ``fields``."""
        address = '' if recipient.address is None else recipient.address
        return cls(messenger=recipient.messenger, recipient=recipient.user, address=address, **fields)

    @classmethod
    def create(cls, message_model: Message, recipients, strict_language: bool = True) -> List['Dispatch']:
        """Create one pending dispatch per recipient of the message, each in its recipient's language.

        An unknown language of a recipient raises :class:`~sitemessage.languages.UnknownLanguageError`
        (nothing created); with ``strict_language=False`` it is logged and the fallback is used.
        """
        items = cls.normalize_recipients(recipients)
        if not items:
            return []
        language_of = LanguageResolver(strict=strict_language)
        objects = [
            cls.for_recipient(
                r,
                message=message_model,
                next_attempt_at=message_model.send_at,
                expires_at=message_model.expires_at,
                language=language_of(r),
            )
            for r in items
        ]
        suppressed = fail_suppressed_new(objects)
        objects = cls.objects.bulk_create(objects)
        log_suppressed_new(suppressed)
        queue_changed.send(sender=cls, using=None, inserted=True)
        if not message_model.dispatches_ready:
            message_model.dispatches_ready = True
            message_model.save(update_fields=['dispatches_ready'])
        return objects

    @classmethod
    def get_unsent(cls, priority=None) -> List['Dispatch']:
        """Claim and return the next batch of sendable dispatches (status: processing).

        At most ``SITEMESSAGE_SEND_BATCH_SIZE`` dispatches, oldest first, under a lease, so
        that several senders share the queue: whoever takes them must store an outcome or release them.
        """
        return cls.objects.claim(
            get_positive_int_setting('SEND_BATCH_SIZE'),
            get_positive_int_setting('SEND_LEASE_SECONDS'),
            priority=priority,
        )

    @classmethod
    def get_unread(cls):
        return cls.objects.filter(read_status=cls.READ_STATUS_UNREAD).prefetch_related('message')

    @staticmethod
    def group_by_messengers(dispatches: Iterable['Dispatch']) -> dict:
        """Group dispatches as ``{messenger alias: {message pk: MessageTuple}}``, keeping input order."""
        by_messengers: dict = {}
        for dispatch in dispatches:
            by_message = by_messengers.setdefault(dispatch.messenger, {})
            if dispatch.message_id not in by_message:
                by_message[dispatch.message_id] = MessageTuple(dispatch.message, [])
            by_message[dispatch.message_id].dispatches.append(dispatch)
        return by_messengers

    @classmethod
    def set_dispatches_statuses(cls, **statuses: List['Dispatch']) -> None:
        """Set statuses in bulk: keyword ``sent``, ``error``, ``failed`` or ``pending`` -> dispatches.

        Only failed attempts (``error``, ``failed``) increase ``retry_count``.
        """
        mapping = {
            'sent': cls.DISPATCH_STATUS_SENT,
            'error': cls.DISPATCH_STATUS_ERROR,
            'failed': cls.DISPATCH_STATUS_FAILED,
            'pending': cls.DISPATCH_STATUS_PENDING,
        }
        unknown = set(statuses) - set(mapping)
        if unknown:
            raise ValueError(f'Unknown dispatch status keyword(s): {", ".join(sorted(unknown))}.')
        now = timezone.now()
        for name, status in mapping.items():
            ids = [d.pk for d in statuses.get(name) or ()]
            if not ids:
                continue
            update = {'time_dispatched': now, 'dispatch_status': status, 'lease_until': None, 'claim_token': None}
            if status in cls.ERROR_STATUSES:
                update['retry_count'] = models.F('retry_count') + 1
            cls.objects.filter(pk__in=ids).update(**update)

    @classmethod
    def log_dispatches_errors(cls, dispatches: List['Dispatch']) -> None:
        """Save error log entries (and compiled caches) of dispatches that failed."""
        if not dispatches:
            return
        cls.objects.bulk_update(dispatches, ['message_cache'])
        DispatchError.objects.bulk_create([DispatchError(dispatch=d, error_log=str(d.error_log)) for d in dispatches])


def suppressed_error(reason: str) -> str:
    """The error log of a dispatch not attempted because its address is suppressed."""
    return f'suppressed: {reason}'


class NewSuppressed(NamedTuple):
    """New dispatches failed before insertion because their address is suppressed, with each one's reason."""

    dispatches: List['Dispatch']
    reasons: List[str]


def fail_suppressed_new(dispatches: Sequence['Dispatch'], using: Optional[str] = None) -> NewSuppressed:
    """Before ``dispatches`` are inserted, fail those whose (messenger, address) is suppressed (one query a 500).

    Call :func:`log_suppressed_new` once they are inserted: it records each one's reason.
    """
    hits = NewSuppressed([], [])
    if not dispatches:
        return hits
    if not Suppression.objects.using(using).may_have_active():
        return hits  # nothing is suppressed: scheduling costs no look-up (the claim checks again anyway)
    reasons = Suppression.objects.using(using).reasons_for((d.messenger, d.address) for d in dispatches)
    if not reasons:
        return hits
    now = timezone.now()
    for dispatch in dispatches:
        reason = reasons.get((dispatch.messenger, dispatch.address))
        if reason is not None:
            dispatch.dispatch_status, dispatch.time_dispatched = Dispatch.DISPATCH_STATUS_FAILED, now
            hits.dispatches.append(dispatch)
            hits.reasons.append(reason)
    return hits


def log_suppressed_new(hits: NewSuppressed, using: Optional[str] = None) -> None:
    """Record why the dispatches :func:`fail_suppressed_new` failed were not sent, now that they are inserted."""
    if not hits.dispatches:
        return
    if any(d.pk is None for d in hits.dispatches):  # a database that returns no ids from a bulk insert
        found = {
            (message_id, messenger, address): pk
            for pk, message_id, messenger, address in Dispatch.objects.using(using)
            .filter(
                message_id__in={d.message_id for d in hits.dispatches},
                address__in={d.address for d in hits.dispatches},
                dispatch_status=Dispatch.DISPATCH_STATUS_FAILED,
            )
            .values_list('pk', 'message_id', 'messenger', 'address')
        }
        for dispatch in hits.dispatches:
            dispatch.pk = found.get((dispatch.message_id, dispatch.messenger, dispatch.address))
    DispatchError.objects.using(using).bulk_create(
        [
            DispatchError(dispatch_id=d.pk, error_log=suppressed_error(reason))
            for d, reason in zip(hits.dispatches, hits.reasons)
            if d.pk is not None
        ]
    )


class DispatchError(models.Model):
    """The reason of one failed delivery attempt."""

    time_created = models.DateTimeField(_('Time created'), auto_now_add=True, editable=False)
    dispatch = models.ForeignKey(Dispatch, verbose_name=_('Dispatch'), on_delete=models.CASCADE)
    error_log = models.TextField(_('Text'))

    class Meta:
        verbose_name = _('Dispatch error')
        verbose_name_plural = _('Dispatch errors')

    def __str__(self):
        return f'Dispatch ID {self.dispatch_id} error entry'


class IdempotencyKeyQuerySet(models.QuerySet):
    """Queries of idempotent scheduling: taking a key, recording what it stored, reading that back."""

    def take(self, key: str, retention: Optional[float]) -> Optional['IdempotencyKey']:
        """Take ``key`` for this scheduling (None), or return the earlier scheduling's row holding it.

        Must run inside the scheduling's transaction. The unique key decides between racing
        processes: the second insert waits for the first transaction and then fails (or succeeds,
        if the first rolled back). A key older than ``retention`` seconds is deleted first, so it
        may be used again (``None``: kept until deleted).
        """
        if retention is not None:
            self.filter(key=key, time_created__lt=timezone.now() - timedelta(seconds=retention)).delete()
        try:
            with transaction.atomic(using=self.db):
                self.create(key=key)
            return None
        except IntegrityError:
            return self.get(key=key)

    def record(self, key: str, messages: Sequence[Message]) -> None:
        """Note the messages the scheduling holding ``key`` stored (a repeat returns them)."""
        self.filter(key=key).update(message_ids=json.dumps([message.pk for message in messages]))

    def expired(self, retention: Optional[float]) -> models.QuerySet:
        """Keys older than ``retention`` seconds (none when ``retention`` is None)."""
        if retention is None:
            return self.none()
        return self.filter(time_created__lt=timezone.now() - timedelta(seconds=retention))


class IdempotencyKey(models.Model):
    """An idempotency key given to ``schedule_messages()``, and the messages that call stored (one row a call)."""

    key = models.CharField(_('Key'), max_length=IDEMPOTENCY_KEY_LENGTH, unique=True)
    time_created = models.DateTimeField(_('Time created'), default=timezone.now, editable=False, db_index=True)
    message_ids = models.TextField(_('Message IDs'), default='[]', help_text=_('JSON list of the messages stored.'))

    objects = IdempotencyKeyQuerySet.as_manager()

    class Meta:
        verbose_name = _('Idempotency key')
        verbose_name_plural = _('Idempotency keys')

    def __str__(self):
        return self.key

    def results(self) -> List[MessageTuple]:
        """What the scheduling that took this key returned: its messages (still stored) and their dispatches."""
        ids = json.loads(self.message_ids or '[]')
        messages = Message.objects.using(self._state.db).in_bulk(ids)
        dispatches: dict = {}
        for dispatch in Dispatch.objects.using(self._state.db).filter(message_id__in=ids).order_by('pk'):
            dispatches.setdefault(dispatch.message_id, []).append(dispatch)
        return [MessageTuple(messages[pk], dispatches.get(pk, [])) for pk in ids if pk in messages]


# Per database: (whether the suppression list holds an active row, until when that is taken as
# known, in monotonic seconds). Scheduling skips its look-up while the list is known to be empty;
# writes through this process forget it at once (Suppression.save, SuppressionQuerySet._count),
# another process's are seen within LIST_STATE_SECONDS.
_LIST_STATE: dict = {}
LIST_STATE_SECONDS = 1.0


def forget_empty_suppression_list() -> None:
    """Make the next scheduling look the suppression list up again (a row was added or changed)."""
    _LIST_STATE.clear()


class SuppressionQuerySet(models.QuerySet):
    """Queries of the suppression list: bulk look-ups by (messenger, address), never one per dispatch."""

    def may_have_active(self) -> bool:
        """False when the list held no active row a moment ago (one EXISTS query a second at most).

        Scheduling uses it to skip its look-up on a site that suppresses nothing; a dispatch it lets
        through is still checked when claimed, before any attempt.
        """
        now = time.monotonic()
        known, until = _LIST_STATE.get(self.db, (True, 0.0))
        if until <= now:
            known = self.filter(active=True).exists()
            _LIST_STATE[self.db] = (known, now + LIST_STATE_SECONDS)
        return known

    def reasons_for(self, pairs: Iterable[Tuple[str, str]]) -> dict:
        """``{(messenger, address): reason}`` of the suppressed ones among ``pairs``: one query per 500 addresses."""
        wanted = {(messenger, address) for messenger, address in pairs if address}
        addresses = sorted({address for _messenger, address in wanted})
        found: dict = {}
        for start in range(0, len(addresses), _CHUNK):
            rows = self.filter(active=True, address__in=addresses[start : start + _CHUNK]).values_list(
                'messenger', 'address', 'reason'
            )
            found.update({(messenger, address): reason for messenger, address, reason in rows})
        return {pair: reason for pair, reason in found.items() if pair in wanted}

    def suppress(self, pairs: Iterable[Tuple[str, str]], reason: str, note: str = '') -> int:
        """Suppress each (messenger, address) of ``pairs`` for ``reason`` (already suppressed ones keep theirs)."""
        return self._count(pairs, reason, note, threshold=1)

    def count_refusals(self, pairs: Iterable[Tuple[str, str]], threshold: int, note: str = '') -> int:
        """Count one permanent refusal of each pair; suppress those refused ``threshold`` times; return how many."""
        return self._count(pairs, Suppression.REASON_BOUNCE, note, threshold=threshold)

    def _count(self, pairs: Iterable[Tuple[str, str]], reason: str, note: str, threshold: int) -> int:
        counts: dict = {}
        for messenger, address in pairs:
            if address:
                counts[(messenger, address)] = counts.get((messenger, address), 0) + 1
        if not counts:
            return 0
        now, note, suppressed = timezone.now(), _truncated(note, 1000), 0
        forget_empty_suppression_list()
        with transaction.atomic(using=self.db):
            existing = {
                (row.messenger, row.address): row
                for row in self.select_for_update().filter(address__in=sorted({a for _m, a in counts}))
                if (row.messenger, row.address) in counts
            }
            changed, created = [], []
            for pair, count in counts.items():
                row = existing.get(pair)
                if row is None:
                    row = Suppression(
                        messenger=pair[0],
                        address=pair[1],
                        reason=reason,
                        failures=0,
                        active=False,
                        time_suppressed=None,
                    )
                    created.append(row)
                elif row.active:
                    continue  # suppressed already: its reason and time stay
                else:
                    changed.append(row)
                row.failures += count
                row.note = note
                if row.failures >= threshold:
                    row.active, row.reason, row.time_suppressed = True, reason, now
                    suppressed += 1
            self.bulk_update(changed, ['failures', 'note', 'active', 'reason', 'time_suppressed'])
            self.bulk_create(created, ignore_conflicts=True)  # a concurrent first refusal: one count is lost
        return suppressed


class Suppression(models.Model):
    """An address a messenger must not deliver to any more (a hard bounce, a complaint...), with why.

    Rows that are not ``active`` only count permanent refusals until
    ``SITEMESSAGE_SUPPRESS_AFTER_FAILURES`` is reached. See docs/suppression.rst.
    """

    REASON_BOUNCE = 'bounce'
    REASON_COMPLAINT = 'complaint'
    REASON_UNSUBSCRIBE = 'unsubscribe'
    REASON_MANUAL = 'manual'

    REASONS = (
        (REASON_BOUNCE, _('Hard bounce')),
        (REASON_COMPLAINT, _('Complaint')),
        (REASON_UNSUBSCRIBE, _('Unsubscribed from all')),
        (REASON_MANUAL, _('Manual')),
    )

    time_created = models.DateTimeField(_('Time created'), auto_now_add=True, editable=False)
    time_suppressed = models.DateTimeField(
        _('Time suppressed'), null=True, blank=True, default=timezone.now, help_text=_('When it became suppressed.')
    )
    messenger = models.CharField(
        _('Messenger'), max_length=250, db_index=True, help_text=_('Messenger class identifier.')
    )
    address = models.CharField(_('Address'), max_length=250, help_text=_('Recipient address, as on dispatches.'))
    reason = models.CharField(_('Reason'), max_length=20, choices=REASONS, default=REASON_MANUAL, db_index=True)
    active = models.BooleanField(
        _('Suppressed'),
        default=True,
        db_index=True,
        help_text=_('Nothing is sent to a suppressed address; otherwise it only counts its permanent failures.'),
    )
    failures = models.PositiveIntegerField(
        _('Permanent failures'), default=0, help_text=_('How many times the service refused this address for good.')
    )
    note = models.TextField(_('Note'), blank=True, default='', help_text=_('The last refusal or event reported.'))

    objects = SuppressionQuerySet.as_manager()

    class Meta:
        verbose_name = _('Suppressed address')
        verbose_name_plural = _('Suppressed addresses')
        constraints = [models.UniqueConstraint(fields=['address', 'messenger'], name='sitemessage_suppr_addr_uniq')]

    def save(self, *args, **kwargs):
        super().save(*args, **kwargs)
        forget_empty_suppression_list()

    def __str__(self):
        return f'{self.address} [{self.messenger}]'


class Subscription(models.Model):
    """A user's (or an address') wish to receive a message type through a messenger."""

    time_created = models.DateTimeField(_('Time created'), auto_now_add=True, editable=False)
    message_cls = models.CharField(
        _('Message class'), max_length=250, db_index=True, help_text=_('Message logic class identifier.')
    )
    messenger_cls = models.CharField(
        _('Messenger'), max_length=250, db_index=True, help_text=_('Messenger class identifier.')
    )
    recipient = models.ForeignKey(
        USER_MODEL, verbose_name=_('Recipient'), null=True, blank=True, on_delete=models.CASCADE
    )
    address = models.CharField(_('Address'), max_length=250, null=True, help_text=_('Recipient address.'))

    class Meta:
        verbose_name = _('Subscription')
        verbose_name_plural = _('Subscriptions')
        constraints = [
            models.UniqueConstraint(
                fields=['message_cls', 'messenger_cls', 'recipient'],
                condition=Q(recipient__isnull=False),
                name='sitemessage_subscr_user_uniq',
            ),
            models.UniqueConstraint(
                fields=['message_cls', 'messenger_cls', 'address'],
                condition=Q(recipient__isnull=True),
                name='sitemessage_subscr_addr_uniq',
            ),
        ]

    def __str__(self):
        return f'{self.recipient_id or self.address} [{self.message_cls} - {self.messenger_cls}]'

    @classmethod
    def check(cls, **kwargs):
        # MySQL/MariaDB cannot create conditional unique constraints (models.W036). There ``create()``
        # (get_or_create) and ``replace_for_user()`` (deduplicated, atomic) still keep rows unique, so the
        # warning would only be noise on every management command.
        return [error for error in super().check(**kwargs) if error.id != 'models.W036']

    @classmethod
    def _get_base_kwargs(cls, recipient, message_cls, messenger_cls) -> dict:
        kwargs = {
            'message_cls': message_cls if isinstance(message_cls, str) else message_cls.get_alias(),
            'messenger_cls': messenger_cls if isinstance(messenger_cls, str) else messenger_cls.get_alias(),
        }
        if isinstance(recipient, str):
            kwargs['address'] = recipient
        elif isinstance(recipient, int):
            kwargs['recipient_id'] = recipient
        else:
            kwargs['recipient_id'] = recipient.pk
        return kwargs

    @classmethod
    def create(cls, uid_or_address, message_cls, messenger_cls) -> 'Subscription':
        """Subscribe a user (instance or id) or an address; an existing subscription is reused.

        Both aliases must be registered: a typo would otherwise be stored and never delivered.
        """
        kwargs = cls._get_base_kwargs(uid_or_address, message_cls, messenger_cls)
        _check_registered(kwargs['message_cls'], kwargs['messenger_cls'])
        if 'address' in kwargs:
            kwargs['recipient'] = None  # the row the unique constraint on addresses covers
        # get_or_create() resolves a concurrent insert (IntegrityError) by fetching the winner's row.
        subscription, _created = cls.objects.get_or_create(**kwargs)
        return subscription

    @classmethod
    def cancel(cls, uid_or_address, message_cls, messenger_cls) -> None:
        """Remove the matching subscriptions."""
        cls.objects.filter(**cls._get_base_kwargs(uid_or_address, message_cls, messenger_cls)).delete()

    @classmethod
    def get_for_user(cls, user):
        """Return the user's subscriptions ([] for an anonymous user)."""
        if user.pk is None:
            return []
        return cls.objects.filter(recipient=user)

    @classmethod
    def replace_for_user(cls, user, prefs: List[Tuple[Any, Any]]) -> bool:
        """Replace all subscriptions of the user with ``(message type, messenger)`` pairs, atomically."""
        if user.pk is None:
            return False
        rows = {
            tuple(cls._get_base_kwargs(user, message_cls, messenger_cls).items())
            for message_cls, messenger_cls in prefs
        }
        with transaction.atomic():
            cls.objects.filter(recipient=user).delete()
            cls.objects.bulk_create([cls(**dict(row)) for row in sorted(rows)])
        return True

    @classmethod
    def get_page_for_message_cls(
        cls, message_cls: str, after_pk: Optional[int], limit: int
    ) -> List[Tuple[int, str, Any, Optional[str]]]:
        """The next ``limit`` subscriptions to a message type after the id ``after_pk``, by id (keyset paging).

        Rows are ``(id, messenger alias, user or None, address or None)``. Paging by id rather than
        one long cursor lets ``prepare_dispatches()`` commit between pages and resume after the last
        page it wrote; plain rows and one query for the page's users cost far less than model
        instances joined to their users.
        """
        page = cls.objects.filter(message_cls=message_cls).order_by('pk')
        if after_pk is not None:
            page = page.filter(pk__gt=after_pk)
        rows = list(page.values_list('pk', 'messenger_cls', 'recipient_id', 'address')[:limit])
        user_ids = {user_id for _pk, _messenger, user_id, _address in rows if user_id is not None}
        users = cls._meta.get_field('recipient').related_model._default_manager.in_bulk(user_ids) if user_ids else {}
        return [(pk, messenger, users.get(user_id), address) for pk, messenger, user_id, address in rows]

    @classmethod
    def addresses_are_unique(cls) -> bool:
        """Whether the database keeps address subscriptions unique (MySQL/MariaDB cannot: no partial constraints)."""
        return connections[cls.objects.db].features.supports_partial_indexes

    @classmethod
    def get_for_message_cls(cls, message_cls):
        return cls.objects.select_related('recipient').filter(
            message_cls=message_cls if isinstance(message_cls, str) else message_cls.get_alias()
        )


def _check_registered(message_alias: str, messenger_alias: str) -> None:
    """Raise ``ValueError`` naming an unregistered alias of a subscription and the registered ones."""
    for kind, alias, registry in (
        ('message type', message_alias, get_registered_message_types()),
        ('messenger', messenger_alias, get_registered_messenger_objects()),
    ):
        if alias not in registry:
            known = ', '.join(sorted(registry)) or 'none'
            raise ValueError(f'Cannot subscribe to an unknown {kind} `{alias}` (registered: {known}).')
