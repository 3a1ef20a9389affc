"""A messenger's connections for one delivery run: opened once, fed batch after batch, closed at the end.

With one connection, each batch is delivered on the calling thread, as a messenger written for
1.4.0 expects, over a connection kept open for the whole run. With several, or with one where the
messenger sets ``deliver_on_own_thread`` (the built-in ones), each connection has a thread of its
own and they pull work from one queue; :meth:`DeliverySession.submit` returns at once, so the
caller can claim the next batch from the database while the connections are still busy with this
one, and they never wait for each other (or for the database) between batches.
"""

from __future__ import annotations

import collections
import contextvars
import logging
import math
import threading
from typing import TYPE_CHECKING, Callable, Deque, Dict, List, NamedTuple, Optional, Set

from django.db import connections as db_connections
from django.utils import translation

from ..exceptions import UnknownMessageTypeError
from ..messages.render_cache import RenderCache, keeping_renderings
from ..models import Dispatch, MessageTuple
from .handover import compile_texts, deliver, messenger_lock, store_outcomes
from .outcomes import MessageWork, warm_up_failure
from .recorder import SentRecorder, configured_flush_size, is_sqlite
from .suppression import fail_suppressed, suppress_after_failures

if TYPE_CHECKING:  # pragma: nocover
    from ..messengers.base import MessengerBase

LOGGER = logging.getLogger(__name__)

UNITS_PER_CONNECTION = 16  # how finely a batch is cut for the connections to pull
# One connection on a thread of its own has nobody to share with: a few units are enough for the
# next batch to be claimed while the last ones go out (a unit boundary costs SMTP a pipeline drain).
UNITS_ALONE = 4


class SubmittedBatch:
    """One messenger's share of a claimed batch, from its submission until its outcomes are stored."""

    def __init__(self, dispatches: List[Dispatch]):
        self.dispatches = dispatches
        self.untouched: List[Dispatch] = []  # given back to the queue as they were (no attempt)
        self.unknown_types: Set[str] = set()  # unregistered message types: their dispatches are untouched
        self.error: Optional[UnknownMessageTypeError] = None  # raised once the batch is stored
        self.outstanding = 0  # units not delivered yet; guarded by the session's condition
        self.inline_work: list = []  # one connection: delivered on the caller's thread by finish()
        self.stored = False


class _Unit(NamedTuple):
    """A few dispatches, of one message or of several, that one connection delivers in one go.

    ``language``: the one active where the batch was submitted. Django keeps it per thread (not in
    the context a thread copies), so the connection's thread activates it for what the messenger
    writes itself (a default subject, a footer).
    """

    items: List[MessageWork]
    batch: SubmittedBatch
    language: Optional[str] = None

    @property
    def dispatches(self) -> List[Dispatch]:
        return [dispatch for _cls, _message, group in self.items for dispatch in group]


class DeliverySession:
    """Deliver batches through one messenger over its configured number of connections.

    Use it as a context manager: it holds the messenger's lock (a registered instance is shared)
    until it is closed, and closing stores every batch submitted, whatever happened meanwhile.
    """

    def __init__(self, messenger: 'MessengerBase'):
        self.messenger = messenger
        self.parallel = messenger.get_parallel_connections()
        self.limits = messenger.rate_limits()  # read once a run; a bad value is raised here, not in a thread
        self.flush_size = configured_flush_size()  # the same: before any batch is in hand
        suppress_after_failures()  # a bad SITEMESSAGE_SUPPRESS_AFTER_FAILURES is named now, not after sending
        self._lock = messenger_lock(messenger)
        guard = threading.Lock()
        self._work_added = threading.Condition(guard)  # wakes idle connections
        self._progress = threading.Condition(guard)  # wakes the caller: a batch done, the queue low, a thread gone
        self._queue: Deque[_Unit] = collections.deque()
        self._threads: List[threading.Thread] = []
        self._live = 0  # connection threads running; the queue, counts and flags are guarded by `guard`
        self._closing = False
        self._inline_warm = False  # the calling thread's connection (one connection) is open
        self._warm_up_error: Optional[BaseException] = None
        self._open: List[SubmittedBatch] = []
        # Records what is sent as it goes (see delivery.recorder); set up with the first batch, whose
        # database decides how. None: outcomes are written only when each batch ends.
        self._recorder: Optional[SentRecorder] = None
        self._recorder_chosen = False
        self._write_due = False  # the claiming thread should record now (SQLite); guarded by `guard`
        # One connection on a thread of its own: what it leaves on the messenger, for the caller
        # (see MessengerBase.connection_state_snapshot).
        self._handed_back: object = None
        self._renderings = RenderCache()

    def __enter__(self) -> 'DeliverySession':
        self._lock.acquire()
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    # Batches ----------------------------------------------------------------------------------

    def submit(self, messages: Dict[int, MessageTuple], ignore_unknown_message_types: bool = False) -> SubmittedBatch:
        """Compile ``messages`` and hand them to the connections.

        With several connections their threads start on them at once; with one they are
        delivered on this thread by :meth:`finish`. Messages of an unknown type stay untouched; the error is
        raised by :meth:`finish` unless ``ignore_unknown_message_types``.
        """
        messenger = self.messenger
        batch = SubmittedBatch([dispatch for _message, group in messages.values() for dispatch in group])
        self._open.append(batch)  # from here on, close() stores it whatever happens
        if not self._recorder_chosen and batch.dispatches:
            self._recorder_chosen = True
            self._recorder = self._make_recorder(batch.dispatches[0])
        if self._recorder is not None and self._recorder.background:
            for dispatch in batch.dispatches:  # told as each is marked sent, whatever the unit
                if dispatch.attempt is not None:
                    dispatch.attempt.on_sent = self._recorder.observe
        work = []
        with keeping_renderings(self._renderings):  # the run's later batches of a message reuse its rendering
            for message, group in messages.values():
                try:
                    message_cls = message.get_type()
                except UnknownMessageTypeError as error:
                    batch.untouched.extend(group)
                    batch.unknown_types.add(message.cls)
                    if not ignore_unknown_message_types:
                        batch.error = batch.error or error
                    continue
                compiled = compile_texts(messenger, message_cls, message, fail_suppressed(messenger, group))
                if compiled:
                    work.append(MessageWork(message_cls, message, compiled))
        if work:
            note_subscribers(work)
            try:
                messenger.prepare_batch(work)
            except Exception:  # logged; delivery goes on without what it would have found
                LOGGER.exception('%s: prepare_batch() raised', messenger.get_alias())
            if not self.threaded:
                batch.inline_work = work
            else:
                self._enqueue(batch, work)
        return batch

    def _make_recorder(self, dispatch: Dispatch) -> Optional[SentRecorder]:
        """A recorder for ``dispatch``'s database (how it writes depends on it), or None."""
        if self.flush_size is None:
            return None
        name = f'sitemessage-{self.messenger.get_alias()}-recorder'
        return SentRecorder(self.flush_size, background=not is_sqlite(dispatch), name=name)

    @property
    def unit_size(self) -> Optional[int]:
        """The largest unit of work when what is sent is recorded between units (not in the background)."""
        recorder = self._recorder
        return recorder.flush_size if recorder is not None and not recorder.background else None

    @property
    def threaded(self) -> bool:
        """Whether connection threads deliver, so the caller may work meanwhile.

        They do with several connections, and with one where the messenger says it may
        (``deliver_on_own_thread``); otherwise the caller's thread delivers, as 1.4.0 did.
        """
        return self.parallel > 1 or bool(getattr(self.messenger, 'deliver_on_own_thread', False))

    def wait_until_drained(self) -> None:
        """Return once the connections have taken all but about two units each of the queued work.

        The caller claims and submits its next batch then, while these units are on the wire.
        """
        self._wait(lambda: len(self._queue) <= 2 * self.parallel)

    def finish(self, batch: SubmittedBatch) -> None:
        """Deliver or wait until every dispatch of ``batch`` has an outcome, store them, raise its type error."""
        work, batch.inline_work = batch.inline_work, []
        if work:
            self._deliver_inline(work)
        self._wait(lambda: batch.outstanding == 0)
        self._store(batch)
        if batch.error is not None:
            raise batch.error

    def close(self) -> None:
        """Store every open batch (work not taken yet goes back to the queue), then disconnect."""
        try:
            with self._progress:
                while self._queue:  # only when the caller bails out before finishing its batches
                    unit = self._queue.popleft()
                    unit.batch.untouched.extend(unit.dispatches)
                    unit.batch.outstanding -= 1
                self._closing = True
                self._work_added.notify_all()
            for batch in self._open:  # one connection: not delivered yet, so untouched
                batch.untouched.extend(d for _cls, _message, group in batch.inline_work for d in group)
                batch.inline_work = []
            self._wait(lambda: all(batch.outstanding == 0 for batch in self._open))
            for batch in list(self._open):
                self._store(batch)
        finally:
            for thread in self._threads:
                thread.join()
            if self._handed_back is not None:
                self.messenger.adopt_connection_state(self._handed_back)
            if self._recorder is not None:
                self._recorder.close()
            if self._inline_warm:
                self._inline_warm = False
                self._cool_down()
            self._lock.release()

    def _store(self, batch: SubmittedBatch) -> None:
        if not batch.stored:
            batch.stored = True
            self._open.remove(batch)
            if self._recorder is not None:
                self._recorder.forget(batch.dispatches)
            store_outcomes(batch.dispatches, batch.untouched)

    def _wait(self, ready: Callable[[], bool]) -> None:
        """Wait until ``ready()``; meanwhile record what was sent when the recorder asks this thread to."""
        while True:
            with self._progress:
                while not ready() and not self._write_due:
                    if self._live == 0:
                        if not self._queue:
                            return  # nothing left that could change
                        self._fail_queued()  # no connection could warm up
                        continue
                    self._progress.wait()
                if ready():
                    return
                self._write_due = False
            if self._recorder is not None:
                self._recorder.write()

    # One connection: the calling thread ---------------------------------------------------------------

    def _deliver_inline(self, work: list) -> None:
        if not self._inline_warm:
            error = self._warm_up()
            if error is not None:
                for message_cls, _message, group in work:
                    for dispatch in group:
                        self.messenger.mark_error(dispatch, warm_up_failure(error), message_cls)
                return  # the next batch tries to connect again
            self._inline_warm = True
        recorder = self._recorder
        if recorder is None or recorder.background:  # nothing to do between units
            deliver(self.messenger, work, self.limits)
            return
        units = bundle_work(work, 1, unit_size=recorder.flush_size)
        for number, unit in enumerate(units, 1):
            deliver(self.messenger, unit, self.limits)
            full = recorder.add(dispatch for item in unit for dispatch in item.dispatches)
            if full and number < len(units):  # after the last unit the batch's store records everything
                recorder.write()

    # Several connections: a thread each ----------------------------------------------------------------

    def _enqueue(self, batch: SubmittedBatch, work: list) -> None:
        units = bundle_work(work, self.parallel, unit_size=self.unit_size)
        language = translation.get_language()
        with self._work_added:
            self._queue.extend(_Unit(items, batch, language) for items in units)
            batch.outstanding += len(units)
            while self._live < min(self.parallel, len(self._queue)):
                self._start_connection()
            self._work_added.notify_all()

    def _start_connection(self) -> None:
        # Called holding the guard. The thread runs in a copy of the caller's context (each unit
        # brings the caller's language: Django keeps that per thread, outside the context).
        self._live += 1
        thread = threading.Thread(
            target=contextvars.copy_context().run,
            args=(self._connection,),
            daemon=True,
            name=f'sitemessage-{self.messenger.get_alias()}-{len(self._threads) + 1}',
        )
        self._threads.append(thread)
        thread.start()

    def _connection(self) -> None:
        """One connection's thread: warm up on the first unit, deliver units until the session closes."""
        warm = False
        try:
            while True:
                with self._work_added:
                    while not self._queue and not self._closing:
                        self._work_added.wait()
                    if not self._queue:
                        return
                    unit = self._queue.popleft()
                    if len(self._queue) <= 2 * self.parallel:
                        self._progress.notify_all()  # the caller may claim the next batch now
                if not warm:
                    error = self._warm_up()
                    if error is not None:
                        with self._work_added:  # the unit goes to a connection that did warm up
                            self._queue.appendleft(unit)
                            self._warm_up_error = error
                            self._work_added.notify()
                        return
                    warm = True
                try:
                    with translation.override(unit.language):
                        deliver(self.messenger, unit.items, self.limits)
                finally:
                    recorder = self._recorder
                    write_due = recorder is not None and not recorder.background and recorder.add(unit.dispatches)
                    with self._progress:
                        unit.batch.outstanding -= 1
                        self._write_due = self._write_due or write_due
                        if not unit.batch.outstanding or write_due:
                            self._progress.notify_all()
        finally:
            try:
                if warm:
                    self._cool_down()
                if self.parallel == 1:
                    self._handed_back = self.messenger.connection_state_snapshot()
            finally:
                with self._progress:
                    self._live -= 1
                    self._progress.notify_all()
                db_connections.close_all()  # only this thread's, if a messenger opened any

    def _fail_queued(self) -> None:
        """Every connection failed to warm up: the queued units are errors, with the reason."""
        while self._queue:
            unit = self._queue.popleft()
            for message_cls, _message, group in unit.items:
                for dispatch in group:
                    self.messenger.mark_error(dispatch, warm_up_failure(self._warm_up_error), message_cls)
            unit.batch.outstanding -= 1

    # Warm-up and cool-down ------------------------------------------------------------------------------

    def _warm_up(self) -> Optional[BaseException]:
        try:
            self.messenger.before_send()
        except Exception as error:
            LOGGER.warning('%s: warm-up failed: %s', self.messenger.get_alias(), error)
            return error
        return None

    def _cool_down(self) -> None:
        try:
            self.messenger.after_send()
        except Exception as error:
            # Outcomes are already recorded: a failed QUIT does not unsend mail.
            LOGGER.warning('%s: cool-down failed: %s', self.messenger.get_alias(), error)


def note_subscribers(work: List[MessageWork]) -> None:
    """Make sure each dispatch says whether its recipient subscribes (a claim did it already), on this thread.

    Connection threads then never query the database (on SQLite they would wait for the claiming
    thread's write lock). A failed lookup is logged: those e-mails go without one-click unsubscribe.
    """
    unknown = [
        dispatch
        for item in work
        if item.message_cls.allow_user_subscription
        for dispatch in item.dispatches
        if dispatch.recipient_subscribes is None and dispatch.pk is not None
    ]
    if unknown:
        try:
            Dispatch.objects.using(unknown[0]._state.db or 'default').note_subscribers(unknown)
        except Exception:
            LOGGER.exception('Could not find which recipients subscribe')


def bundle_work(
    work: List[MessageWork], connections_count: int, unit_size: Optional[int] = None
) -> List[List[MessageWork]]:
    """Cut a batch into units of about the same number of dispatches: sixteen per connection, four for one alone.

    A message with many dispatches is split; messages with few are packed together (SMTP
    streams the e-mails of a unit, see ``send_many()``). Units stay small so that, when the
    queue runs dry, no connection is left with much more work than the others. ``unit_size``
    caps their size (what is sent is recorded between units).
    """
    total = sum(len(group) for _cls, _message, group in work)
    per_connection = UNITS_PER_CONNECTION if connections_count > 1 else UNITS_ALONE
    size = max(math.ceil(total / (connections_count * per_connection)), 1)
    if unit_size is not None:
        size = min(size, unit_size) if connections_count > 1 else unit_size
    units: List[list] = []
    current: list = []
    room = size
    for message_cls, message, group in work:
        start = 0
        while start < len(group):
            piece = group[start : start + room]
            current.append(MessageWork(message_cls, message, piece))
            start += len(piece)
            room -= len(piece)
            if not room:
                units.append(current)
                current, room = [], size
    if current:
        units.append(current)
    return units
