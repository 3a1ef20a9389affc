"""XMPPSleekMessenger against a real Prosody server on loopback, received by real XMPP clients.

The session fixture writes a throw-away Prosody config, registers the accounts with
``prosodyctl`` and runs ``prosody`` for the session; it skips only when Prosody is not installed.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Dict, List, NamedTuple
from unittest import mock

import pytest
from django.core.management import CommandError, call_command

from sitemessage.exceptions import (
    MessengerWarmupException,
    PermanentDeliveryError,
    SiteMessageConfigurationError,
    TemporaryDeliveryError,
)
from sitemessage.messengers.xmpp import XMPPSleekMessenger
from sitemessage.models import Dispatch, DispatchError
from sitemessage.shortcuts import schedule_jabber_message
from sitemessage.toolbox import recipients, schedule_messages, send_scheduled_messages
from sitemessage.utils import register_messenger_objects
from tests.certificates import RSA_KEY, self_signed
from tests.fakes import free_port
from tests.messengers.contract import MessengerContract

DOMAIN = 'localhost'
GATEWAY = f'gateway.{DOMAIN}'  # a component declared in the config that never connects
BOT, BOT_PASSWORD = f'bot@{DOMAIN}', 'secret'
PEERS = {f'alice@{DOMAIN}': 'alicepw', f'carol@{DOMAIN}': 'carolpw', f'dave@{DOMAIN}': 'davepw'}
ALICE = f'alice@{DOMAIN}'

CONFIG = """\
-- Throw-away Prosody for the sitemessage tests; nothing outside {root} is touched.
run_as_root = true  -- prosodyctl and prosody must not switch to the `prosody` user
pidfile = "{root}/prosody.pid"
data_path = "{root}/data"
certificates = "{root}"
log = {{ {{ levels = {{ min = "info" }}, to = "file", filename = "{root}/prosody.log" }} }}
interfaces = {{ "127.0.0.1" }}
c2s_ports = {{ {c2s_port} }}
c2s_direct_tls_ports = {{ {tls_port} }}
component_interfaces = {{ "127.0.0.1" }}
component_ports = {{ {component_port} }}
s2s_ports = {{ }}
http_ports = {{ }}
https_ports = {{ }}
modules_enabled = {{ "roster", "saslauth", "tls", "disco", "ping", "presence", "posix" }}
modules_disabled = {{ "s2s" }}
authentication = "internal_plain"
c2s_require_encryption = false
allow_unencrypted_plain_auth = true
ssl = {{ certificate = "{root}/localhost.pem", key = "{root}/localhost.key" }}

VirtualHost "{domain}"

Component "{gateway}"
    component_secret = "never-connected"
"""


class ProsodyServer(NamedTuple):
    root: Path
    port: int  # c2s, STARTTLS offered but not required
    tls_port: int  # c2s with direct TLS (XEP-0368)
    ca_file: str  # the server's self-signed certificate


def wait_for_port(port: int, process: subprocess.Popen, log: Path, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f'prosody exited with {process.returncode}:\n{log.read_text(errors="replace")}')
        try:
            socket.create_connection(('127.0.0.1', port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f'prosody did not listen on {port} within {timeout}s:\n{log.read_text(errors="replace")}')


@pytest.fixture(scope='session')
def prosody(tmp_path_factory):
    """A Prosody server for the session: accounts bot, alice, carol and dave on ``localhost``."""
    binary, ctl = shutil.which('prosody'), shutil.which('prosodyctl')
    if not binary or not ctl:
        pytest.skip('Prosody is not installed (Debian/Ubuntu: apt-get install prosody)')
    root = tmp_path_factory.mktemp('prosody')
    (root / 'data').mkdir()
    cert, _key = self_signed(root, 'localhost', DOMAIN, san=f'DNS:{DOMAIN}', key_options=RSA_KEY)
    # Prosody's configuration must name its ports before it starts.
    server = ProsodyServer(root, free_port(), free_port(), cert)
    config = root / 'prosody.cfg.lua'
    config.write_text(
        CONFIG.format(
            root=root,
            c2s_port=server.port,
            tls_port=server.tls_port,
            component_port=free_port(),
            domain=DOMAIN,
            gateway=GATEWAY,
        )
    )
    for jid, password in {BOT: BOT_PASSWORD, **PEERS}.items():
        user, _, host = jid.partition('@')
        subprocess.run(
            [ctl, '--config', str(config), 'register', user, host, password],
            check=True,
            capture_output=True,
            timeout=60,
        )
    log = root / 'prosody.log'
    with open(root / 'stdout.log', 'wb') as output:
        process = subprocess.Popen([binary, '--config', str(config), '-F'], stdout=output, stderr=subprocess.STDOUT)
    try:
        wait_for_port(server.port, process, log)
        wait_for_port(server.tls_port, process, log)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


class Received(NamedTuple):
    to: str  # bare JID of the receiving account
    sender: str  # full JID of the sender
    text: str


class Peers:
    """Accounts logged in on their own event loop thread; they keep the chat messages they get."""

    def __init__(self, port: int, accounts: Dict[str, str]):
        self.port, self.accounts = port, accounts
        self.messages: List[Received] = []
        self.clients = []
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self._run, name='xmpp-test-peers', daemon=True)
        self.thread.start()
        self.call(self._start())

    def _run(self):
        try:
            self.loop.run_forever()
        finally:
            tasks = asyncio.all_tasks(self.loop)
            for task in tasks:
                task.cancel()
            self.loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
            self.loop.close()

    def call(self, coroutine, timeout: float = 20):
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    async def _start(self):
        import slixmpp

        started = []
        for jid, password in self.accounts.items():
            client = slixmpp.ClientXMPP(
                jid, password, plugin_config={'feature_mechanisms': {'unencrypted_scram': True}}
            )
            client.enable_starttls = client.enable_direct_tls = False
            client.enable_plaintext = True
            client.register_plugin('xep_0199')
            future = self.loop.create_future()

            def on_start(_event, client=client, future=future):
                client.send_presence()  # available: the server delivers chat messages to this session
                future.set_result(True)

            client.add_event_handler('session_start', on_start)
            client.add_event_handler('message', self._on_message)
            client.connect('127.0.0.1', self.port)
            self.clients.append(client)
            started.append(future)
        await asyncio.wait_for(asyncio.gather(*started), 15)

    def _on_message(self, message):
        if message['type'] in ('chat', 'normal'):
            self.messages.append(Received(message['to'].bare, str(message['from']), message['body']))

    async def _sync(self):
        # The server answers a ping after writing whatever it routed to this stream before it.
        import slixmpp

        for client in self.clients:
            try:
                await client.plugin['xep_0199'].send_ping(DOMAIN, timeout=10)
            except slixmpp.exceptions.IqError:
                pass

    def received(self) -> List[Received]:
        """Everything received so far (all messages the server routed before this call)."""
        self.call(self._sync())
        return list(self.messages)

    def texts(self) -> List[str]:
        return [item.text for item in self.received()]

    def stop(self):
        async def disconnect():
            await asyncio.gather(*(client.disconnect(wait=2) for client in self.clients), return_exceptions=True)

        try:
            self.call(disconnect())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(5)


@pytest.fixture(scope='session')
def _peers(prosody):
    peers = Peers(prosody.port, PEERS)
    yield peers
    peers.stop()


@pytest.fixture
def peers(_peers):
    """The receiving accounts (alice, carol, dave), their inboxes emptied."""
    _peers.received()
    _peers.messages.clear()
    return _peers


class Relay:
    """A TCP relay in front of Prosody that can delay the server's bytes or stop forwarding."""

    def __init__(self, port: int, delay: float = 0.0, rewrite=None):
        self.target, self.delay, self.rewrite = port, delay, rewrite
        self.frozen = threading.Event()
        self.closed = threading.Event()
        self.sockets = []
        self.listener = socket.create_server(('127.0.0.1', 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while not self.closed.is_set():
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(('127.0.0.1', self.target))
            self.sockets += [client, server]
            threading.Thread(target=self._pump, args=(client, server, 0.0, None), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, self.delay, self.rewrite), daemon=True).start()

    def _pump(self, source, target, delay, rewrite):
        try:
            while True:
                data = source.recv(65536)
                if not data:
                    break
                time.sleep(delay)
                data = rewrite(data) if rewrite else data
                while self.frozen.is_set() and not self.closed.is_set():
                    time.sleep(0.02)
                if self.closed.is_set():
                    break  # what was held back while frozen is dropped, as a dead network would
                target.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, target):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self):
        self.closed.set()
        self.listener.close()
        for sock in self.sockets:
            sock.close()


@pytest.fixture
def relay(prosody):
    relays = []

    def make(delay=0.0, rewrite=None):
        relays.append(Relay(prosody.port, delay, rewrite))
        return relays[-1]

    yield make
    for item in relays:
        item.close()


def make_messenger(prosody, **kwargs) -> XMPPSleekMessenger:
    kwargs.setdefault('ca_certs', prosody.ca_file)
    kwargs.setdefault('timeout', 5)
    return XMPPSleekMessenger(
        kwargs.pop('from_jid', BOT),
        kwargs.pop('password', BOT_PASSWORD),
        '127.0.0.1',
        kwargs.pop('port', prosody.port),
        **kwargs,
    )


@pytest.fixture
def messenger(prosody):
    messenger = make_messenger(prosody)
    register_messenger_objects(messenger)
    return messenger


def statuses() -> List[int]:
    return list(Dispatch.objects.order_by('pk').values_list('dispatch_status', flat=True))


def error_of(address: str) -> str:
    """The error text stored for the (single) dispatch to ``address``."""
    return '\n'.join(DispatchError.objects.filter(dispatch__address=address).values_list('error_log', flat=True))


def xmpp_threads() -> List[threading.Thread]:
    return [thread for thread in threading.enumerate() if thread.name == 'sitemessage-xmpp']


SENT, ERROR, FAILED = Dispatch.DISPATCH_STATUS_SENT, Dispatch.DISPATCH_STATUS_ERROR, Dispatch.DISPATCH_STATUS_FAILED


class TestXMPPContract(MessengerContract):
    """The contract against Prosody: good addresses are the accounts alice, carol and dave.

    A JID is refused for what it is, not for what the server does to it at the moment, so
    ``fail_permanently`` / ``fail_temporarily`` swap the address for one the server refuses when
    it is scheduled: an account that does not exist (``service-unavailable``, type ``cancel``),
    or an address on a gateway component that is not connected (``remote-server-timeout``, type
    ``wait``; Prosody's answer while a gateway is down).
    """

    secrets = [BOT_PASSWORD, 'wrong-password-never-shown']

    @pytest.fixture(autouse=True)
    def _server(self, prosody, peers):
        self.prosody, self.peers, self.replaced = prosody, peers, {}

    def make_messenger(self):
        self.messenger = make_messenger(self.prosody)
        return self.messenger

    def good_address(self, index):
        return list(PEERS)[index]

    def received_texts(self):
        return self.peers.texts()

    def break_warm_up(self):
        self.messenger.password = self.secrets[1]

    def fail_permanently(self, address):
        self.replaced[address] = f'gone-{address.partition("@")[0]}@{DOMAIN}'

    def fail_temporarily(self, address):
        self.replaced[address] = f'{address.partition("@")[0]}@{GATEWAY}'

    def schedule(self, messenger, text, addresses):
        addresses = [addresses] if isinstance(addresses, str) else addresses
        super().schedule(messenger, text, [self.replaced.get(address, address) for address in addresses])


pytestmark = pytest.mark.django_db


def test_scheduled_message_arrives_with_its_text_from_the_bot(messenger, peers):
    schedule_messages('Hello, Alice', recipients('xmppsleek', ALICE))
    send_scheduled_messages()
    assert statuses() == [SENT]
    [received] = peers.received()
    assert (received.to, received.text) == (ALICE, 'Hello, Alice')
    assert received.sender.partition('/')[0] == BOT


def test_users_are_addressed_through_their_jabber_attribute(messenger, peers, django_user_model):
    user = django_user_model.objects.create_user('carol', password='x')
    user.jabber = f'carol@{DOMAIN}'
    schedule_messages('For a user', recipients('xmppsleek', [user]))
    send_scheduled_messages()
    assert [(item.to, item.text) for item in peers.received()] == [(f'carol@{DOMAIN}', 'For a user')]


def test_many_messages_in_one_batch_all_arrive_over_one_stream(messenger, peers):
    for number in range(30):
        schedule_messages(f'batch {number}', recipients('xmppsleek', list(PEERS)))
    send_scheduled_messages()
    assert statuses() == [SENT] * 90
    received = peers.received()
    for account in PEERS:
        assert [item.text for item in received if item.to == account] == [f'batch {n}' for n in range(30)]
    assert len({item.sender for item in received}) == 1  # one stream (one bound resource) for the batch


def test_sending_waits_for_a_late_session_and_skips_nothing(prosody, peers, relay):
    # Every reply of the server comes 50 ms late: the session starts long after connect().
    messenger = make_messenger(prosody, port=relay(delay=0.05).port)
    register_messenger_objects(messenger)
    schedule_messages('late session', recipients('xmppsleek', list(PEERS)))
    started = time.monotonic()
    messenger.before_send()
    assert time.monotonic() - started > 0.3
    assert messenger._session_started and messenger.xmpp.sessionstarted
    messenger.after_send()
    send_scheduled_messages()
    assert statuses() == [SENT] * 3
    assert sorted(item.to for item in peers.received() if item.text == 'late session') == sorted(PEERS)


def test_session_not_started_in_time_is_a_warm_up_error(prosody, peers, relay):
    messenger = make_messenger(prosody, port=relay(delay=0.5).port, timeout=0.5)
    register_messenger_objects(messenger)
    schedule_messages('too slow', recipients('xmppsleek', ALICE))
    send_scheduled_messages()
    assert statuses() == [ERROR]
    assert error_of(ALICE).startswith('Messenger warm-up failed: XMPP Error: no session with 127.0.0.1:')
    assert error_of(ALICE).endswith('within 0.5 seconds')
    assert peers.received() == []


def test_wrong_password_is_a_warm_up_error_with_the_servers_reason(prosody):
    messenger = make_messenger(prosody, password='wrong-password-never-shown')
    with pytest.raises(MessengerWarmupException) as caught:
        messenger.before_send()
    assert str(caught.value) == f'XMPP Error: authentication as {BOT} failed: not-authorized'
    assert xmpp_threads() == []


def test_refused_connection_is_a_warm_up_error(prosody):
    port = free_port()
    with pytest.raises(
        MessengerWarmupException,
        match=rf'cannot connect to 127\.0\.0\.1:{port}: .*refused|'
        rf'cannot connect to 127\.0\.0\.1:{port}: .*Connect call failed',
    ):
        make_messenger(prosody, port=port).before_send()
    assert xmpp_threads() == []


def test_use_tls_verifies_the_servers_certificate(prosody):
    messenger = make_messenger(prosody, ca_certs=None)  # the self-signed certificate is not trusted
    with pytest.raises(MessengerWarmupException, match='CERTIFICATE_VERIFY_FAILED'):
        messenger.before_send()


def test_use_tls_refuses_to_log_in_when_starttls_was_stripped(prosody, relay):
    # A man in the middle removes STARTTLS from the server's stream features (a downgrade).
    front = relay(
        rewrite=lambda data: re.sub(
            rb'<starttls xmlns=.urn:ietf:params:xml:ns:xmpp-tls.(/>|>.*?</starttls>)', b'', data
        )
    )
    with pytest.raises(MessengerWarmupException) as caught:
        make_messenger(prosody, port=front.port).before_send()
    assert str(caught.value) == (
        f'XMPP Error: 127.0.0.1:{front.port} does not offer STARTTLS, but use_tls is set; '
        'refusing to log in in plain text'
    )


@pytest.mark.parametrize(
    'options, encrypted',
    [
        ({}, True),  # STARTTLS (use_tls=True, the default)
        ({'use_ssl': True}, True),  # direct TLS
        ({'use_tls': False}, False),  # plain text, asked for explicitly
    ],
)
def test_stream_is_encrypted_as_configured_and_delivers(prosody, peers, options, encrypted):
    if options.get('use_ssl'):
        options['port'] = prosody.tls_port
    messenger = make_messenger(prosody, **options)
    messenger.before_send()
    try:
        assert isinstance(messenger.xmpp.socket, (ssl.SSLObject, ssl.SSLSocket)) is encrypted
        messenger._test_message(ALICE, f'over {options or "starttls"}')
    finally:
        messenger.after_send()
    assert peers.texts() == [f'over {options or "starttls"}']


def test_jabber_shortcut_schedules_for_this_messenger(messenger, peers):
    schedule_jabber_message('Via the shortcut', [ALICE, f'dave@{DOMAIN}'])
    send_scheduled_messages()
    assert statuses() == [SENT, SENT]
    assert sorted((item.to, item.text) for item in peers.received()) == [
        (ALICE, 'Via the shortcut'),
        (f'dave@{DOMAIN}', 'Via the shortcut'),
    ]


def test_invalid_jid_fails_naming_it_and_others_are_sent(messenger, peers):
    schedule_messages('some text', recipients('xmppsleek', [ALICE, 'not a jid@@']))
    send_scheduled_messages()
    assert statuses() == [SENT, FAILED]
    assert error_of('not a jid@@').startswith('XMPP Error: `not a jid@@` is not a valid JID')
    assert peers.texts() == ['some text']


def test_server_refusals_are_mapped_by_error_type(messenger, peers):
    schedule_messages('refused', recipients('xmppsleek', [f'nobody@{DOMAIN}', f'someone@{GATEWAY}', ALICE]))
    send_scheduled_messages()
    assert statuses() == [FAILED, ERROR, SENT]
    assert error_of(f'nobody@{DOMAIN}') == (
        f'XMPP Error: the server refused the message to `nobody@{DOMAIN}`: service-unavailable (cancel)'
    )
    assert error_of(f'someone@{GATEWAY}') == (
        f'XMPP Error: the server refused the message to `someone@{GATEWAY}`: '
        'remote-server-timeout (wait): Component unavailable'
    )
    assert DispatchError.objects.count() == 2


def test_server_that_stops_answering_mid_batch_leaves_dispatches_to_retry(prosody, peers, relay):
    front = relay()
    messenger = make_messenger(prosody, port=front.port, timeout=2)
    register_messenger_objects(messenger)
    schedule_messages('first', recipients('xmppsleek', ALICE))
    schedule_messages('second', recipients('xmppsleek', ALICE))
    original_send = messenger.send

    def send_then_freeze(*args):
        front.frozen.set()  # the network to the server goes silent once the session is up
        original_send(*args)

    messenger.send = send_then_freeze
    started = time.monotonic()
    send_scheduled_messages()
    assert time.monotonic() - started < 8
    assert statuses() == [ERROR, ERROR]
    first, second = DispatchError.objects.order_by('dispatch_id').values_list('error_log', flat=True)
    assert first == f'XMPP Error: 127.0.0.1:{front.port} did not confirm the messages within 2 seconds'
    assert second.startswith('XMPP Error: no session with')  # one reconnection attempt, then no more
    assert peers.received() == []
    assert xmpp_threads() == []


def test_parallel_connections_use_one_stream_per_thread(prosody, peers):
    messenger = make_messenger(prosody, from_jid=f'{BOT}/sitemessage', connections=3)
    register_messenger_objects(messenger)
    for number in range(3):
        schedule_messages(f'parallel {number}', recipients('xmppsleek', list(PEERS)))
    send_scheduled_messages()
    assert statuses() == [SENT] * 9
    received = peers.received()
    assert sorted(item.text for item in received) == sorted(f'parallel {n}' for n in range(3) for _ in PEERS)
    # three streams, each bound to its own resource (one full JID twice would make Prosody drop one)
    assert {item.sender for item in received} == {f'{BOT}/sitemessage.{n}' for n in (1, 2, 3)}
    assert xmpp_threads() == []


def test_works_when_called_from_inside_a_running_event_loop(prosody, peers):
    messenger = make_messenger(prosody)

    async def caller():
        return messenger.send_test_message(ALICE, 'from async code')

    assert asyncio.run(caller())
    assert peers.texts() == ['from async code']


def test_probe_command_delivers_and_reports_the_servers_error(messenger, peers, capsys):
    call_command('sitemessage_probe', 'xmppsleek', to=ALICE)
    assert 'Probing function result: ' in capsys.readouterr().out
    assert peers.texts() == ['Test message from sitemessages.']
    with pytest.raises(CommandError):
        call_command('sitemessage_probe', 'xmppsleek', to=f'nobody@{DOMAIN}')
    assert f'refused the message to `nobody@{DOMAIN}`: service-unavailable (cancel)' in capsys.readouterr().err


def test_probe_raises_delivery_errors(messenger, peers):
    with pytest.raises(PermanentDeliveryError, match='not a valid JID'):
        messenger.send_test_message('not a jid@@', 'x')
    with pytest.raises(TemporaryDeliveryError, match='remote-server-timeout'):
        messenger.send_test_message(f'x@{GATEWAY}', 'x')
    assert peers.received() == []
    assert xmpp_threads() == []


def test_constructor_keeps_the_documented_signature_and_identity():
    messenger = XMPPSleekMessenger('bot@example.com', 'pw')
    assert (messenger.host, messenger.port, messenger.use_tls, messenger.use_ssl) == ('localhost', 5222, True, False)
    assert (XMPPSleekMessenger.alias, str(XMPPSleekMessenger.title), XMPPSleekMessenger.address_attr) == (
        'xmppsleek',
        'XMPP',
        'jabber',
    )
    assert messenger.xmpp is None and messenger._session_started is False


def test_invalid_sender_jid_is_a_configuration_error():
    with pytest.raises(SiteMessageConfigurationError, match='from_jid `bot@@example` is not a valid JID'):
        XMPPSleekMessenger('bot@@example', 'pw')


def test_missing_slixmpp_names_the_pip_extra():
    # A None entry in sys.modules is how Python marks a module that cannot be imported.
    with (
        mock.patch.dict(sys.modules, {'slixmpp': None}),
        pytest.raises(SiteMessageConfigurationError, match=r'pip install "django-sitemessage\[xmpp\]"'),
    ):
        XMPPSleekMessenger('bot@example.com', 'pw')
