"""Fixtures of the inbox tests (loaded with ``pytest_plugins``): the registered ``inbox`` messenger, two users."""

from __future__ import annotations

import pytest

from sitemessage.messengers.inbox import InboxMessenger
from sitemessage.toolbox import register_messenger_objects


@pytest.fixture
def inbox():
    messenger = InboxMessenger()
    register_messenger_objects(messenger)
    return messenger


@pytest.fixture
def ann(inbox, django_user_model):
    return django_user_model.objects.create_user('ann', email='ann@example.com', password='pw')


@pytest.fixture
def bob(inbox, django_user_model):
    return django_user_model.objects.create_user('bob', email='bob@example.com', password='pw')
