"""A real Postfix on loopback for the tests: its own configuration, queue and Maildirs in a temporary folder.

The Debian package ``postfix`` is run as a separate instance (``postfix -c DIR start``) listening on
127.0.0.1 at a free port only, so it never clashes with a system Postfix on port 25 and never relays:
mail for the test domains goes to Maildirs, anything else bounces locally (``error`` transport).
Refusal rules (see :data:`REFUSALS`) let tests provoke each kind of SMTP refusal a relay gives.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from email import message_from_bytes, policy
from pathlib import Path
from typing import Dict, List

from tests.fakes import free_port

POSTFIX = shutil.which('postfix') or '/usr/sbin/postfix'
DOMAIN = 'sitemessage.test'
IDN_DOMAIN = 'xn--bcher-kva.example'  # bücher.example
START_TIMEOUT = 20.0

# address -> (stage, reply): stage 'rcpt' refuses at RCPT TO, 'eod' at the end of DATA (after the content).
REFUSALS = {
    f'busy@{DOMAIN}': ('rcpt', '450 4.2.1 Mailbox busy, try later'),
    f'spam@{DOMAIN}': ('eod', '554 5.7.1 Content refused at end of data'),
    f'spam2@{DOMAIN}': ('eod', '554 5.7.1 Content refused at end of data'),
    f'later@{DOMAIN}': ('eod', '451 4.7.1 Content deferred at end of data'),
}
UNKNOWN_USER = f'nobody@{DOMAIN}'  # not in the mailbox table: 550 5.1.1 User unknown

MAIN_CF = """\
compatibility_level = 3.6
queue_directory = {root}/queue
data_directory = {root}/data
mail_owner = postfix
setgid_group = postdrop
maillog_file = {root}/postfix.log
maillog_file_prefixes = {root}
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
myhostname = mx.{domain}
mydomain = {domain}
myorigin = $mydomain
mydestination =
mynetworks = 127.0.0.0/8
relayhost =
default_transport = error:tests never relay
relay_transport = error:tests never relay
alias_maps =
alias_database =
biff = no
smtputf8_enable = yes
smtpd_tls_security_level = none
smtpd_peername_lookup = no
in_flow_delay = 0s
smtpd_error_sleep_time = 0s
smtpd_soft_error_limit = 10000
smtpd_hard_error_limit = 10000
smtpd_junk_command_limit = 100000
smtpd_client_connection_count_limit = 0
virtual_mailbox_domains = {domain}, {idn_domain}
virtual_mailbox_base = {root}/mail
virtual_mailbox_maps = texthash:{root}/mailboxes
virtual_uid_maps = static:{uid}
virtual_gid_maps = static:{gid}
virtual_minimum_uid = 1
smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination
smtpd_recipient_restrictions = check_recipient_access texthash:{root}/rcpt_access
smtpd_end_of_data_restrictions = check_recipient_access texthash:{root}/eod_access
"""

MASTER_CF = """\
127.0.0.1:{port} inet n - n - - smtpd
pickup unix n - n 60 1 pickup
cleanup unix n - n - 0 cleanup
qmgr unix n - n 300 1 qmgr
rewrite unix - - n - - trivial-rewrite
bounce unix - - n - 0 bounce
defer unix - - n - 0 bounce
trace unix - - n - 0 bounce
verify unix - - n - 1 verify
flush unix n - n 1000? 0 flush
proxymap unix - - n - - proxymap
showq unix n - n - - showq
error unix - - n - - error
retry unix - - n - - error
discard unix - - n - - discard
virtual unix - n n - - virtual
anvil unix - - n - 1 anvil
scache unix - - n - 1 scache
postlog unix-dgram n - n - 1 postlogd
"""


def why_postfix_cannot_run() -> str:
    """'' when a Postfix instance can be started here, else why not (the reason a test skips with)."""
    if not os.path.exists(POSTFIX):
        return 'Postfix is not installed (Debian/Ubuntu: apt-get install postfix)'
    if os.geteuid() != 0:
        return 'the test Postfix instance must be started as root (as the Debian package runs it)'
    return ''


class Postfix:
    """One running Postfix instance; ``mailboxes`` names the addresses that exist."""

    def __init__(self, mailboxes: List[str]):
        self.root = Path(tempfile.mkdtemp(prefix='sitemessage-postfix-'))
        self.root.chmod(0o755)  # Postfix's daemons (user postfix) and the delivery user walk into it
        self.config = self.root / 'etc'
        self.port = free_port()  # Postfix's master.cf must name it before Postfix starts
        self.host = '127.0.0.1'
        self.mailboxes = mailboxes
        self.log_file = self.root / 'postfix.log'

    # Life cycle ---------------------------------------------------------------------------------

    def start(self, timeout: float = START_TIMEOUT) -> 'Postfix':
        uid = gid = 65534  # nobody/nogroup owns the Maildirs
        self.config.mkdir()
        (self.root / 'queue').mkdir()  # root's; `postfix start` creates its subfolders
        (self.root / 'data').mkdir()
        shutil.chown(self.root / 'data', 'postfix')
        mail = self.root / 'mail'
        mail.mkdir()
        os.chown(mail, uid, gid)
        values = {
            'root': self.root,
            'domain': DOMAIN,
            'idn_domain': IDN_DOMAIN,
            'uid': uid,
            'gid': gid,
            'port': self.port,
        }
        (self.config / 'main.cf').write_text(MAIN_CF.format(**values))
        (self.config / 'master.cf').write_text(MASTER_CF.format(**values))
        (self.root / 'mailboxes').write_text(
            ''.join(
                f'{address} {address.rpartition("@")[2]}/{address.partition("@")[0]}/\n' for address in self.mailboxes
            )
        )
        (self.root / 'rcpt_access').write_text(
            ''.join(f'{address} {reply}\n' for address, (stage, reply) in REFUSALS.items() if stage == 'rcpt')
        )
        (self.root / 'eod_access').write_text(
            ''.join(f'{address} {reply}\n' for address, (stage, reply) in REFUSALS.items() if stage == 'eod')
        )
        self.log_file.touch()
        result = self._postfix('start')
        if result.returncode != 0:
            raise RuntimeError(
                f'postfix -c {self.config} start failed ({result.returncode}):\n'
                f'{result.stdout}{result.stderr}\n{self.log()}'
            )
        self._wait_for_smtp(timeout)
        return self

    def stop(self) -> None:
        self._postfix('stop')
        deadline = time.monotonic() + 10
        while (self.root / 'queue' / 'pid' / 'master.pid').exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        shutil.rmtree(self.root, ignore_errors=True)

    def _postfix(self, command: str) -> subprocess.CompletedProcess:
        return subprocess.run([POSTFIX, '-c', str(self.config), command], capture_output=True, text=True, timeout=60)

    def _wait_for_smtp(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        last_error: Exception = TimeoutError()
        while time.monotonic() < deadline:
            try:
                with socket.create_connection((self.host, self.port), timeout=2) as sock:
                    if sock.recv(512).startswith(b'220'):
                        return
            except OSError as error:
                last_error = error
            time.sleep(0.1)
        self._postfix('stop')
        raise RuntimeError(
            f'Postfix did not answer on {self.host}:{self.port} within {timeout:.0f}s '
            f'({last_error!r}); its log:\n{self.log()}'
        )

    def log(self) -> str:
        try:
            return self.log_file.read_text(errors='replace')
        except OSError as error:
            return f'(no log: {error})'

    # What arrived ---------------------------------------------------------------------------------

    def clear(self) -> None:
        """Empty every Maildir (between tests)."""
        for path in self._delivered_files():
            path.unlink()

    def _delivered_files(self) -> List[Path]:
        return sorted((self.root / 'mail').glob('*/*/new/*'))

    def delivered(self) -> Dict[str, list]:
        """Address -> the messages in its Maildir (parsed)."""
        found: Dict[str, list] = {}
        for path in self._delivered_files():
            domain, user = path.parts[-4], path.parts[-3]
            found.setdefault(f'{user}@{domain}', []).append(
                message_from_bytes(path.read_bytes(), policy=policy.default)
            )
        return found

    def wait_until_idle(self, expected: int, timeout: float = 20.0) -> int:
        """Wait until ``expected`` messages are in the Maildirs and the queue is empty; return the count."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            count = len(self._delivered_files())
            if count >= expected and self.queue_is_empty():
                break
            time.sleep(0.1)
        time.sleep(0.3)  # anything more (a duplicate, an empty message) would show up by now
        return len(self._delivered_files())

    def queue_is_empty(self) -> bool:
        queue = self.root / 'queue'
        return not any(
            any((queue / name).rglob('*')) if (queue / name).exists() else False
            for name in ('incoming', 'active', 'deferred', 'maildrop')
        )
