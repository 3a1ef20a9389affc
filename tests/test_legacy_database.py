"""A database made by sitemessage 1.4.0 migrates forward, keeps every row and is delivered.

The project runs in a subprocess (settings: tests/legacy_settings.py) on a copy of
tests/fixtures/sitemessage_1_4_0.sqlite3, sending to this test's SMTP server.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from django.core.signing import Signer

ROOT = Path(__file__).resolve().parent.parent
FIXTURE = ROOT / 'tests' / 'fixtures' / 'sitemessage_1_4_0.sqlite3'

SCRIPT = r"""
import json, os
from collections import Counter

import django
django.setup()

from django.core.management import call_command
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

executor = MigrationExecutor(connection)
plan = [f'{m.app_label}.{m.name}' for m, backwards in executor.migration_plan(executor.loader.graph.leaf_nodes())]
call_command('migrate', verbosity=0)

from django.contrib.auth.models import User
from django.test import Client
from sitemessage.messages.base import MessageBase
from sitemessage.messengers.smtp import SMTPMessenger
from sitemessage.models import Dispatch, DispatchError, Message, Subscription
from sitemessage.toolbox import register_message_types, register_messenger_objects, send_scheduled_messages


class LegacyGroupedMessage(MessageBase):
    alias = 'legacy_grouped'
    group_mark = 'grp'
    supported_messengers = ['smtp']


def dispatches():
    return {d.pk: {'status': d.dispatch_status, 'retry_count': d.retry_count, 'address': d.address,
                   'recipient': d.recipient_id, 'message': d.message_id, 'cache': d.message_cache,
                   'new_fields': [d.claim_token, d.lease_until, d.next_attempt_at]}
            for d in Dispatch.objects.order_by('pk')}


result = {'plan': plan}
result['counts'] = {model._meta.db_table: model.objects.count()
                    for model in (User, Message, Dispatch, DispatchError, Subscription)}
result['statuses'] = dict(Counter(Dispatch.objects.values_list('dispatch_status', flat=True)))
result['errors'] = sorted(DispatchError.objects.values_list('dispatch_id', 'error_log'))
result['subscriptions'] = sorted(Subscription.objects.values_list('message_cls', 'messenger_cls', 'recipient_id',
                                                                   'address'), key=str)
result['messages'] = {m.pk: {'cls': m.cls, 'context': m.context, 'priority': m.priority, 'ready': m.dispatches_ready,
                             'group_mark': m.group_mark} for m in Message.objects.order_by('pk')}
result['before'] = dispatches()

register_messenger_objects(SMTPMessenger('robot@example.com', host='127.0.0.1',
                                         port=int(os.environ['LEGACY_SMTP_PORT']), timeout=5))
register_message_types(LegacyGroupedMessage)
report = send_scheduled_messages()
result['report'] = {'sent': report.sent, 'errors': report.errors, 'failed': report.failed}
result['after'] = dispatches()

legacy_hash = os.environ['LEGACY_HASH']
result['hash_valid'] = MessageBase.is_dispatch_hash_valid(2, 1, legacy_hash)
result['hash_derived'] = MessageBase.get_dispatch_hash(2, 1)
client = Client()
alice_subscribed = lambda: Subscription.objects.filter(recipient_id=1, message_cls='email_plain').exists()
client.post(f'/messages/unsubscribe/1/2/{"0" * 40}/')
result['subscribed_after_forged_link'] = alice_subscribed()
result['unsubscribe_status'] = client.post(f'/messages/unsubscribe/1/2/{legacy_hash}/').status_code
result['subscribed_after_legacy_link'] = alice_subscribed()
print(json.dumps(result, default=str))
"""


def legacy_dispatch_hash(dispatch_id, message_id, secret='legacy-secret'):
    """The signature 1.4.0 put in links: Django's salted_hmac (SHA-1), re-derived by hand."""
    key = hashlib.sha1(f'{dispatch_id}{secret}'.encode()).digest()
    return hmac.new(key, f'{message_id}|{dispatch_id}'.encode(), hashlib.sha1).hexdigest()


def run_legacy_project(tmp_path, smtp_port):
    database = tmp_path / 'legacy.sqlite3'
    shutil.copyfile(FIXTURE, database)
    env = {
        **os.environ,
        'DJANGO_SETTINGS_MODULE': 'tests.legacy_settings',
        'SITEMESSAGE_LEGACY_DB': str(database),
        'LEGACY_SMTP_PORT': str(smtp_port),
        'LEGACY_HASH': legacy_dispatch_hash(2, 1),
    }
    process = subprocess.run(
        [sys.executable, '-c', SCRIPT], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert process.returncode == 0, process.stderr
    return json.loads(process.stdout.strip().splitlines()[-1])


def test_legacy_database_migrates_keeps_every_row_and_is_delivered(tmp_path, smtp_server):
    result = run_legacy_project(tmp_path, smtp_server.port)

    # Only the new migration is applied.
    assert result['plan'] == [
        'sitemessage.0005_dispatch_lease_and_retry_time',
        'sitemessage.0006_subscription_unique',
        'sitemessage.0007_message_preparation_and_dispatch_address_index',
        'sitemessage.0008_send_at_expiry_idempotency',
        'sitemessage.0009_dispatch_language',
        'sitemessage.0010_digest_windows_and_throttles',
        'sitemessage.0011_suppression_and_provider_status',
        'sitemessage.0012_inbox',
        'sitemessage.0013_channel_fallback',
        'sitemessage.0014_dispatch_insert_notify',
    ]

    # Every row survived, as 1.4.0 left it.
    assert result['counts'] == {
        'auth_user': 2,
        'sitemessage_message': 8,
        'sitemessage_dispatch': 8,
        'sitemessage_dispatcherror': 2,
        'sitemessage_subscription': 2,
    }
    assert result['statuses'] == {'1': 4, '2': 1, '3': 1, '4': 1, '5': 1}
    assert result['errors'] == [[4, 'legacy failure'], [6, 'legacy error']]
    assert result['subscriptions'] == [
        ['email_html', 'smtp', None, 'eve@example.com'],
        ['email_plain', 'smtp', 1, None],
    ]
    messages = result['messages']
    assert messages['2']['context']['contents'] == '<b>html</b>'
    assert messages['2']['priority'] == 5
    assert messages['7']['ready'] is False
    assert messages['8']['group_mark'] == 'grp'
    before = result['before']
    assert before['2']['recipient'] == 1 and before['5']['recipient'] == 2
    assert before['6']['retry_count'] == 2 and before['4']['retry_count'] == 10
    assert all(dispatch['new_fields'] == [None, None, None] for dispatch in before.values())

    # Pending, error and abandoned-processing dispatches are delivered; failed and sent are not.
    assert result['report'] == {'sent': 6, 'errors': 0, 'failed': 0}
    delivered = sorted(rcpt for envelope in smtp_server.handler.envelopes for rcpt in envelope.rcpt_tos)
    assert delivered == sorted(
        [
            'carol@example.com',
            'alice@example.com',
            'dave@example.com',
            'error@example.com',
            'processing@example.com',
            'frank@example.com',
        ]
    )
    after = result['after']
    assert {pk: d['status'] for pk, d in after.items()} == {
        '1': 2,
        '2': 2,
        '3': 2,
        '4': 4,
        '5': 2,
        '6': 2,
        '7': 2,
        '8': 2,
    }
    assert after['6']['retry_count'] == 2  # success does not count as a retry
    assert after['8']['cache'] == 'Grouped hello'
    bodies = {m['To']: m for m in smtp_server.handler.messages()}
    assert 'Grouped hello' in bodies['frank@example.com'].get_content()
    assert bodies['dave@example.com']['Subject'] == 'Html pending'

    # Links signed by 1.4.0 still work.
    expected_hash = legacy_dispatch_hash(2, 1)
    assert result['hash_valid'] is True
    assert result['hash_derived'] == expected_hash
    # New links carry a per-action token naming the recipient (issue 9), not the 1.4.0 hash.
    prefix = '<https://legacy.example.com/messages/unsubscribe/1/2/'
    header = bodies['alice@example.com']['List-Unsubscribe']
    assert header.startswith(prefix) and expected_hash not in header
    assert Signer(key='legacy-secret', salt='sitemessage.links.unsubscribe', algorithm='sha256').unsign_object(
        header[len(prefix) : -2]
    ) == [1, 2, 'email_plain', 'smtp', 1, '']
    assert result['subscribed_after_forged_link'] is True
    assert result['unsubscribe_status'] == 302
    assert result['subscribed_after_legacy_link'] is False


def test_get_dispatch_hash_with_the_legacy_secret_matches_1_4_0():
    from sitemessage.messages.base import MessageBase

    assert MessageBase.get_dispatch_hash(2, 1, secret='legacy-secret') == legacy_dispatch_hash(2, 1)
    assert MessageBase.get_dispatch_hash(2, 1, secret='other-secret') != legacy_dispatch_hash(2, 1)
