"""Fixtures: a real SMTP server on loopback, an isolated registry per test, users."""

from __future__ import annotations

import os
import time
from unittest import mock

import pytest

from sitemessage import registry, utils
from tests.fakes import refused_port
from tests.smtp_handlers import RefusingHandler, loopback_controller


class Mailbox(RefusingHandler):
    """aiosmtpd handler keeping every accepted envelope; some recipients can be refused."""

    def __init__(self):
        super().__init__()
        self.envelopes = []

    async def handle_DATA(self, server, session, envelope):
        self.envelopes.append(envelope)
        return '250 Message accepted for delivery'

    def messages(self):
        from email import message_from_bytes, policy

        return [message_from_bytes(env.content, policy=policy.default) for env in self.envelopes]


@pytest.fixture(scope='session')
def smtp_controller():
    controller = loopback_controller(Mailbox())
    controller.start()
    yield controller
    controller.stop()


@pytest.fixture
def smtp_server(smtp_controller):
    """The running SMTP server, its mailbox emptied."""
    smtp_controller.handler.envelopes.clear()
    smtp_controller.handler.refuse.clear()
    smtp_controller.handler.rcpt_log.clear()
    smtp_controller.handler.pipelining = True
    return smtp_controller


@pytest.fixture
def smtp_messenger(smtp_server):
    """An SMTPMessenger pointed at the local server, registered as ``smtp``."""
    from sitemessage.messengers.smtp import SMTPMessenger

    messenger = SMTPMessenger('robot@example.com', host='127.0.0.1', port=smtp_server.port, timeout=5)
    utils.register_messenger_objects(messenger)
    return messenger


@pytest.fixture(autouse=True)
def isolated_registry():
    """Each test starts from the registries as discovered at start-up, and leaves them so."""
    with (
        mock.patch.dict(registry._MESSENGERS_REGISTRY),
        mock.patch.dict(registry._MESSAGES_REGISTRY),
        mock.patch.dict(registry._MESSAGES_FOR_APPS),
    ):
        fake = registry._MESSENGERS_REGISTRY['fake']
        fake.reset()
        yield


@pytest.fixture(autouse=True)
def suppression_list_unknown():
    """What a test knew of the suppression list (it may have rolled back rows) does not reach the next."""
    from sitemessage.models import forget_empty_suppression_list

    forget_empty_suppression_list()
    yield


@pytest.fixture(autouse=True)
def no_shared_pauses():
    """A provider's pause (kept in the shared cache) does not outlive the test that caused it."""
    from django.core.cache import caches

    caches['default'].clear()
    yield
    caches['default'].clear()


@pytest.fixture
def fake_messenger():
    return utils.get_registered_messenger_object('fake')


@pytest.fixture
def closed_port():
    """A loopback port that refuses connections for the whole test (held bound, never listening)."""
    with refused_port() as port:
        yield port


@pytest.fixture
def user(django_user_model):
    return django_user_model.objects.create_user('user1', email='user1@example.com', password='x')


def wait_for(predicate, timeout=5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


@pytest.fixture(scope='session')
def _api_server():
    from tests.http_api import LocalAPIServer

    server = LocalAPIServer().start()
    yield server
    server.stop()


@pytest.fixture
def api_server(_api_server):
    """A local imitation of a provider's HTTP API (tests/http_api.py), emptied for each test."""
    _api_server.reset()
    return _api_server


# Fixtures of tests that start real processes (workers, Celery): process_db, procs, sink.
pytest_plugins = ['tests.processes']


# In CI (SITEMESSAGE_TEST_STRICT=1) a real peer that is missing (Prosody, Chromium, Redis, Celery...)
# must fail the run: only skips that are about the database in use stay allowed.
_ALLOWED_SKIPS = ('SITEMESSAGE_TEST_DB', 'Django version:')
_STRICT_SKIPS = []


def pytest_runtest_logreport(report):
    if report.skipped and os.environ.get('SITEMESSAGE_TEST_STRICT'):
        reason = str(report.longrepr[-1] if isinstance(report.longrepr, tuple) else report.longrepr)
        if not any(allowed in reason for allowed in _ALLOWED_SKIPS):
            _STRICT_SKIPS.append(f'{report.nodeid}: {reason}')


def pytest_sessionfinish(session, exitstatus):
    if _STRICT_SKIPS:
        print('\nSITEMESSAGE_TEST_STRICT: these tests were skipped but must run in CI:')
        for line in _STRICT_SKIPS:
            print(f'  {line}')
        session.exitstatus = 1
