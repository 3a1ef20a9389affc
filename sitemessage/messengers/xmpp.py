"""XMPP (Jabber) chat messages, spoken through slixmpp.

Protocol: RFC 6120 (XMPP Core) and RFC 6121 (Instant Messaging and Presence),
https://xmpp.org/rfcs/rfc6120.html and https://xmpp.org/rfcs/rfc6121.html; the server's
confirmation is an XEP-0199 ping, https://xmpp.org/extensions/xep-0199.html.
Client library: slixmpp, https://slixmpp.readthedocs.io/ — the maintained asyncio successor of
sleekxmpp, which 1.4.0 used and which cannot be imported on Python 3.10+ (it relies on
``collections.MutableSet``). The documented class name and alias keep their sleekxmpp names.

A stream lives on its own asyncio event loop in a background thread (one per thread delivering
a batch), so the messenger works from Django's synchronous code and from worker threads; that
thread never touches the database.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
from concurrent.futures import TimeoutError as FutureTimeoutError
from typing import Any, Dict, List, NamedTuple, Optional, Tuple

from django.utils.translation import gettext_lazy

from ..exceptions import (
    MessengerException,
    MessengerWarmupException,
    PermanentDeliveryError,
    SiteMessageConfigurationError,
    TemporaryDeliveryError,
)
from ..optional import import_optional
from ..settings import get_setting
from . import xmpp_sleek
from .base import MessengerBase, PerThread

#: Stanza error types after which retrying cannot help (RFC 6120 section 8.3.2); ``wait`` is
#: temporary and ``continue`` is only a warning.
PERMANENT_ERROR_TYPES = frozenset({'cancel', 'modify', 'auth'})


class Refusal(NamedTuple):
    """A stanza error the server returned for one message."""

    type: str
    condition: str
    text: str

    def describe(self, address: str) -> str:
        details = f': {self.text}' if self.text else ''
        return f'XMPP Error: the server refused the message to `{address}`: {self.condition} ({self.type}){details}'


class _ThreadState:
    session: Optional['_Session'] = None
    failure: Optional[MessengerWarmupException] = None  # a reconnection that failed in this batch


class _Session:
    """One client stream on its own event loop, run by a background thread.

    The methods without a leading underscore are called from the messenger's thread and wait
    for the coroutines they hand to the loop.
    """

    def __init__(self, messenger: 'XMPPSleekMessenger', jid: str):
        self.lib = messenger.lib
        self.jid = jid
        self.password = messenger.password
        self.host, self.port = messenger.host, messenger.port
        self.use_tls, self.use_ssl, self.ca_certs = messenger.use_tls, messenger.use_ssl, messenger.ca_certs
        # The argument, else the setting; with no bound there either, the 20 s of earlier releases.
        self.timeout = (
            get_setting(
                'CONNECT_TIMEOUT', value=messenger.timeout, check='seconds', argument='XMPPSleekMessenger(timeout=...)'
            )
            or 20
        )
        self.client: Any = None  # a slixmpp ClientXMPP while connected
        self.alive = False
        self.refusals: Dict[str, Refusal] = {}  # stanza id -> error, filled on the loop
        self.lost: Any = None  # an asyncio.Future, done when the stream has ended
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name='sitemessage-xmpp', daemon=True)
        self._thread.start()

    @property
    def where(self) -> str:
        return f'{self.host}:{self.port}'

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_forever()
        finally:
            for _round in range(3):  # cancelling a task may start another (slixmpp event handlers)
                tasks = asyncio.all_tasks(self.loop)
                if not tasks:
                    break
                for task in tasks:
                    task.cancel()
                self.loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
            self.loop.run_until_complete(self.loop.shutdown_asyncgens())
            self.loop.close()

    def _call(self, coroutine) -> Any:
        future = asyncio.run_coroutine_threadsafe(coroutine, self.loop)
        try:
            # The coroutines bound their own waits; this only guards against a stuck loop.
            return future.result(2 * self.timeout + 5)
        except FutureTimeoutError:
            future.cancel()
            self.alive = False
            raise MessengerException(f'XMPP Error: no answer from {self.where} in time') from None

    # Called from the messenger ----------------------------------------------------------------

    def open(self) -> None:
        """Connect, log in and wait for the session; raise MessengerWarmupException on failure."""
        self._call(self._open())

    def deliver(self, items: List[Tuple[str, str]]) -> List[Tuple[str, Optional[Refusal]]]:
        """Send ``(to, text)`` chat messages; return ``(stanza id, refusal or None)`` for each.

        Returns once the server has answered a ping sent after the messages: it handles a
        stream's stanzas in order, so each message was accepted or its error came before.
        """
        return self._call(self._deliver(items))

    def close(self) -> None:
        """Flush what is queued, close the stream, and stop the loop and its thread."""
        try:
            if self.client is not None:
                self._call(self._close())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(self.timeout)

    # On the loop --------------------------------------------------------------------------------

    def _make_client(self):
        plugin_config = {}
        if not (self.use_tls or self.use_ssl):
            # Plain text was asked for: allow SCRAM (it never sends the password), never PLAIN.
            plugin_config['feature_mechanisms'] = {'unencrypted_scram': True}
        client = self.lib.ClientXMPP(self.jid, self.password, plugin_config=plugin_config)
        client.register_plugin('xep_0199')  # ping: the server's confirmation
        client.enable_direct_tls = bool(self.use_ssl)
        client.enable_starttls = bool(self.use_tls and not self.use_ssl)
        client.enable_plaintext = not (self.use_tls or self.use_ssl)
        if self.ca_certs:
            client.ca_certs = self.ca_certs
        return client

    async def _open(self) -> None:
        client = self.client = self._make_client()
        started = self.loop.create_future()
        self.lost = self.loop.create_future()
        auth_failures: List[str] = []

        def fail(reason: str) -> None:
            if not started.done():
                started.set_exception(MessengerWarmupException(f'XMPP Error: {reason}'))

        def on_failed_all_auth(_event=None) -> None:
            if auth_failures:
                fail(f'authentication as {self.jid} failed: {", ".join(dict.fromkeys(auth_failures))}')
            elif self.use_tls and not self.use_ssl and 'starttls' not in client.features:
                fail(f'{self.where} does not offer STARTTLS, but use_tls is set; refusing to log in in plain text')
            else:
                fail(f'{self.where} offers no login method usable on this connection')

        def on_disconnected(reason=None) -> None:
            self.alive = False
            if not self.lost.done():
                self.lost.set_result(reason)
            fail(f'the connection to {self.where} was closed' + (f': {reason}' if reason else ''))

        def on_message_error(message) -> None:
            error = message['error']
            self.refusals[message['id']] = Refusal(error['type'] or '', error['condition'] or '', error['text'] or '')

        def on_session_start(_event) -> None:
            if not started.done():
                started.set_result(True)

        client.add_event_handler('session_start', on_session_start)
        client.add_event_handler('failed_auth', lambda stanza: auth_failures.append(stanza['condition']))
        client.add_event_handler('failed_all_auth', on_failed_all_auth)
        client.add_event_handler('connection_failed', lambda error: fail(f'cannot connect to {self.where}: {error}'))
        client.add_event_handler('ssl_invalid_chain', lambda error: fail(f'TLS with {self.where} failed: {error}'))
        client.add_event_handler(
            'stream_error',
            lambda error: fail(f'stream error from {self.where}: {error["condition"]} {error["text"] or ""}'.rstrip()),
        )
        client.add_event_handler('disconnected', on_disconnected)
        client.add_event_handler('message_error', on_message_error)
        client.connect(self.host, self.port)
        try:
            try:
                await asyncio.wait_for(started, self.timeout)
            except asyncio.TimeoutError:
                raise MessengerWarmupException(
                    f'XMPP Error: no session with {self.where} within {self.timeout} seconds'
                ) from None
            # As 1.4.0 did: be present (priority -1, so messages to the bot's bare JID still go to
            # offline storage instead of this session) and fetch the roster, which also proves
            # the session answers requests.
            client.send_presence(ppriority=-1)
            try:
                await client.get_roster(timeout=self.timeout)
            except self.lib.exceptions.IqTimeout:
                raise MessengerWarmupException(f'XMPP Error: {self.where} did not send the roster in time') from None
            except self.lib.exceptions.IqError as error:
                raise MessengerWarmupException(
                    f'XMPP Error: roster request refused: {describe_iq_error(error)}'
                ) from None
        except BaseException:
            self._abort()
            raise
        self.alive = True

    async def _deliver(self, items: List[Tuple[str, str]]) -> List[Tuple[str, Optional[Refusal]]]:
        if not self.alive:
            raise MessengerException(f'XMPP Error: the connection to {self.where} was lost')
        client = self.client
        ids = []
        for to, text in items:
            message = client.make_message(mto=to, mbody=text, mtype='chat')
            message['id'] = client.new_id()
            message.send()
            ids.append(message['id'])
        ping = asyncio.ensure_future(client.plugin['xep_0199'].send_ping(client.boundjid.host, timeout=self.timeout))
        await asyncio.wait({ping, self.lost}, return_when=asyncio.FIRST_COMPLETED)
        if not ping.done():
            ping.cancel()
            raise MessengerException(
                f'XMPP Error: the connection to {self.where} was lost before the server confirmed the messages'
            )
        try:
            ping.result()
        except self.lib.exceptions.IqTimeout:
            self.alive = False
            self._abort()
            raise MessengerException(
                f'XMPP Error: {self.where} did not confirm the messages within {self.timeout} seconds'
            ) from None
        except self.lib.exceptions.IqError:
            pass  # an error reply answers the ping too: the stanzas before it were handled
        return [(stanza_id, self.refusals.pop(stanza_id, None)) for stanza_id in ids]

    async def _close(self) -> None:
        client, self.alive = self.client, False
        try:
            if client.transport is not None:
                # Sends what is still queued, closes the stream and waits for the server's close.
                await client.disconnect(wait=self.timeout)
        except Exception:  # noqa: BLE001 -- every message was confirmed already; only the goodbye failed
            pass
        finally:
            self._abort()

    def _abort(self) -> None:
        self.client.cancel_connection_attempt()  # slixmpp would otherwise retry with a back-off
        if self.client.transport is not None:
            self.client.abort()


def describe_iq_error(error) -> str:
    iq_error = error.iq['error']
    return f'{iq_error["condition"]} ({iq_error["type"]}) {iq_error["text"] or ""}'.rstrip()


class XMPPSleekMessenger(MessengerBase):
    """Send XMPP chat messages from ``from_jid`` through the server at ``host``:``port``.

    ``use_tls`` requires STARTTLS (the server's certificate is verified; ``ca_certs`` names a CA
    bundle to trust), ``use_ssl`` connects with direct TLS (XEP-0368, usually port 5223), and
    with neither the stream is plain text (SCRAM login only). ``timeout`` bounds connecting,
    logging in and each confirmation (default: ``SITEMESSAGE_CONNECT_TIMEOUT``); ``connections``
    sets parallel connections.

    Where ``sleekxmpp`` imports (a 1.4.0 project's test stand-in in ``sys.modules``), it is used
    with 1.4.0's calls (:mod:`~sitemessage.messengers.xmpp_sleek`); so is a client assigned to
    ``xmpp`` together with ``_session_started = True``, as 1.4.0 suites do.
    """

    alias = 'xmppsleek'
    title = gettext_lazy('XMPP')
    address_attr = 'jabber'

    timeout: Optional[float] = None  # None: SITEMESSAGE_CONNECT_TIMEOUT

    _state = PerThread(_ThreadState)  # this connection's stream

    def __init__(
        self,
        from_jid: str,
        password: str,
        host: str = 'localhost',
        port: int = 5222,
        use_tls: bool = True,
        use_ssl: bool = False,
        *,
        ca_certs: Optional[str] = None,
        timeout: Optional[float] = None,
        connections: Optional[int] = None,
    ):
        sleekxmpp = xmpp_sleek.sleekxmpp_module()
        self.lib = sleekxmpp if sleekxmpp is not None else import_optional('slixmpp', extra='xmpp')
        self._slixmpp = None if sleekxmpp is not None else self.lib
        self.from_jid = from_jid
        self.password = password
        self.host = host
        self.port = port
        self.use_tls = use_tls
        self.use_ssl = use_ssl
        self.ca_certs = ca_certs
        if timeout is not None:
            self.timeout = timeout
        if connections is not None:
            self.parallel_connections = connections
        problem = self.address_problem(from_jid)
        if problem:
            raise SiteMessageConfigurationError(f'XMPPSleekMessenger: from_jid {problem}')
        self._resources = itertools.count(1)

    # 1.4.0's path ------------------------------------------------------------------------------

    def _legacy_state(self) -> xmpp_sleek.LegacyState:
        return self.__dict__.setdefault('_legacy', xmpp_sleek.LegacyState())

    def _sleek_library(self) -> bool:
        """Whether ``lib`` is not slixmpp: sleekxmpp, or a stand-in a project assigned, as 1.4.0 allowed."""
        return self.lib is not self.__dict__.get('_slixmpp')

    def _legacy_path(self) -> bool:
        """Whether sending uses 1.4.0's calls: a sleekxmpp-like library, or a client the project assigned."""
        return self._sleek_library() or self._legacy_state().xmpp is not None

    @property
    def xmpp(self):
        """This thread's slixmpp client, or None outside a batch; assignable, as in 1.4.0."""
        if self._legacy_path():
            return self._legacy_state().xmpp
        session = self._state.session
        return session.client if session is not None else None

    @xmpp.setter
    def xmpp(self, client) -> None:
        self._legacy_state().xmpp = client

    @property
    def _session_started(self) -> bool:
        if self._legacy_path():
            return self._legacy_state().started
        session = self._state.session
        return bool(session is not None and session.alive)

    @_session_started.setter
    def _session_started(self, started: bool) -> None:
        self._legacy_state().started = bool(started)

    def _session_jid(self) -> str:
        jid = self.lib.JID(self.from_jid)
        if jid.resource and self.get_parallel_connections() > 1:
            # Two streams bound to one full JID would make the server close the older one.
            jid.resource = f'{jid.resource}.{next(self._resources)}'
        return str(jid)

    def _open_session(self) -> _Session:
        session = _Session(self, self._session_jid())
        try:
            session.open()
        except BaseException:
            session.close()
            raise
        return session

    def _close_session(self) -> None:
        state = self._state
        session, state.session = state.session, None
        if session is not None:
            session.close()

    def _live_session(self) -> _Session:
        """This thread's session; reconnects once per batch if the stream was lost."""
        state = self._state
        if state.session is not None and state.session.alive:
            return state.session
        if state.failure is not None:
            raise state.failure
        self._close_session()
        try:
            state.session = self._open_session()
        except MessengerWarmupException as error:
            state.failure = error
            raise
        return state.session

    def before_send(self) -> None:
        """Connect, log in and wait until the session has started (bounded by ``timeout``)."""
        if self._sleek_library():
            xmpp_sleek.before_send(self)
            return
        self.__dict__.pop('_legacy', None)  # a client assigned by the project gives way, as in 1.4.0
        self._close_session()  # left over by a batch on this thread that did not cool down
        state = self._state
        state.failure = None
        state.session = self._open_session()

    def after_send(self) -> None:
        """Flush the stream, close it and wait for the server to close its side."""
        if self._sleek_library():
            xmpp_sleek.after_send(self)
            return
        self._state.failure = None
        self._close_session()

    # Messages ---------------------------------------------------------------------------------

    def address_problem(self, address: str) -> str:
        """Return why ``address`` is not a usable JID, or ''."""
        if not address:
            return 'The recipient has no XMPP address (JID)'
        try:
            self.lib.JID(address)
        except self.lib.jid.InvalidJID as error:
            return f'`{address}` is not a valid JID: {error}'
        return ''

    def _send_message(self, msg: str, to: Optional[str] = None) -> str:
        """Send the chat message ``msg`` to ``to`` and return its stanza id; a refusal raises a delivery error.

        The signature is every messenger's (1.4.0's XMPP one was ``(to, text)``).
        """
        if self._legacy_path():
            return xmpp_sleek.send_message(self, to, msg)
        to = to or ''
        problem = self.address_problem(to)
        if problem:
            raise PermanentDeliveryError(f'XMPP Error: {problem}')
        ((stanza_id, refusal),) = self._live_session().deliver([(to, msg)])
        if refusal is not None and refusal.type != 'continue':
            error_cls = PermanentDeliveryError if refusal.type in PERMANENT_ERROR_TYPES else TemporaryDeliveryError
            raise error_cls(refusal.describe(to))
        return stanza_id

    def send(self, message_cls, message_model, dispatch_models) -> None:
        """Send a chat message per dispatch; mark each once the server has confirmed it."""
        if self._legacy_path():
            xmpp_sleek.send(self, message_cls, dispatch_models)
            return
        deliverable = []
        for dispatch in dispatch_models:
            problem = self.address_problem(dispatch.address)
            if problem:
                self.mark_failed(dispatch, f'XMPP Error: {problem}')
            else:
                deliverable.append(dispatch)
        if not deliverable:
            return
        try:
            outcomes = self._live_session().deliver(
                [(dispatch.address, dispatch.message_cache or '') for dispatch in deliverable]
            )
        except MessengerException as error:
            # Not confirmed: the server may or may not have them, so they are sent again later.
            for dispatch in deliverable:
                self.mark_error(dispatch, error, message_cls)
            return
        for dispatch, (_stanza_id, refusal) in zip(deliverable, outcomes):
            if refusal is None or refusal.type == 'continue':
                self.mark_sent(dispatch)
            elif refusal.type in PERMANENT_ERROR_TYPES:
                self.mark_failed(dispatch, refusal.describe(dispatch.address))
            else:
                self.mark_error(dispatch, MessengerException(refusal.describe(dispatch.address)), message_cls)
