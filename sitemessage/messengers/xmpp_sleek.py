"""1.4.0's XMPP calls, kept for projects whose test suites stand in for ``sleekxmpp``.

A 1.4.0 project's suite builds ``XMPPSleekMessenger`` with a ``unittest.mock`` object as
``sys.modules['sleekxmpp']``, or assigns ``messenger.xmpp`` and ``messenger._session_started``
itself, and asserts on the calls 1.4.0 made:
``xmpp.send_message(mfrom=from_jid, mto=address, mbody=text, mtype='chat')``. This module makes
exactly those calls, in 1.4.0's order, on whatever client object it is given. Real deliveries on
supported Pythons go through slixmpp (:mod:`sitemessage.messengers.xmpp`): sleekxmpp does not
import on Python 3.10+.
"""

from __future__ import annotations

import sys
from importlib import import_module
from importlib.util import find_spec
from typing import TYPE_CHECKING, Any, Optional

from ..exceptions import MessengerException, MessengerWarmupException

if TYPE_CHECKING:  # pragma: nocover
    from .xmpp import XMPPSleekMessenger


class LegacyState:
    """What 1.4.0 kept on the messenger: its client and whether the session has started."""

    xmpp: Any = None
    started: bool = False


def sleekxmpp_module() -> Optional[Any]:
    """Return ``sleekxmpp`` when it imports (a test's stand-in, or a real one on an old Python), else None."""
    try:
        if sys.modules.get('sleekxmpp') is None and find_spec('sleekxmpp') is None:
            return None
        return import_module('sleekxmpp')
    except Exception:  # noqa: BLE001 -- a real sleekxmpp fails on Python 3.10+ (collections.MutableSet)
        return None


def before_send(messenger: 'XMPPSleekMessenger') -> None:
    """1.4.0's warm-up: a client, a ``session_start`` handler, ``connect()`` and ``process()``."""
    lib, state = messenger.lib, messenger._legacy_state()
    state.xmpp = xmpp = lib.ClientXMPP(messenger.from_jid, messenger.password)

    def on_session_start(event):
        try:
            xmpp.send_presence()
            xmpp.get_roster()
            state.started = True
        except lib.exceptions.XMPPError as error:
            raise MessengerWarmupException(f'XMPP Error: {error}') from error

    xmpp.add_event_handler('session_start', on_session_start)
    connected = xmpp.connect(
        address=(messenger.host, messenger.port), reattempt=False, use_tls=messenger.use_tls, use_ssl=messenger.use_ssl
    )
    if connected:
        xmpp.process(block=False)


def after_send(messenger: 'XMPPSleekMessenger') -> None:
    """1.4.0's cool-down: disconnect a started session and mark it stopped."""
    state = messenger._legacy_state()
    if state.started:
        state.xmpp.disconnect(wait=True)
        state.started = False


def send_message(messenger: 'XMPPSleekMessenger', to: Optional[str], text: str) -> Any:
    """Send one chat message through the client, with 1.4.0's four keyword arguments."""
    return messenger._legacy_state().xmpp.send_message(mfrom=messenger.from_jid, mto=to, mbody=text, mtype='chat')


def send(messenger: 'XMPPSleekMessenger', message_cls, dispatch_models) -> None:
    """Send each dispatch once the session has started; a dispatch is sent or in error, never left."""
    if not messenger._legacy_state().started:
        for dispatch in dispatch_models:
            messenger.mark_error(dispatch, MessengerException('XMPP Error: the session has not started'), message_cls)
        return
    for dispatch in dispatch_models:
        try:
            send_message(messenger, dispatch.address, dispatch.message_cache)
        except Exception as error:  # noqa: BLE001 -- as in 1.4.0: any failure is this dispatch's error
            messenger.mark_error(dispatch, error, message_cls)
        else:
            messenger.mark_sent(dispatch)
