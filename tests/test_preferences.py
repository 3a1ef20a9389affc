"""Subscriptions and users' preferences: the table's data, saving a posted form, uniqueness of rows."""

from __future__ import annotations

import threading
from unittest import mock

import pytest
from django.contrib.auth.models import AnonymousUser
from django.core.management import call_command
from django.db import DatabaseError, IntegrityError, connection, connections, transaction
from django.db.migrations.executor import MigrationExecutor
from django.test import RequestFactory

from sitemessage.messages.base import MessageBase
from sitemessage.models import Subscription
from sitemessage.toolbox import (
    get_user_preferences_for_ui,
    register_message_types,
    register_messenger_objects,
    set_user_preferences_from_request,
)
from sitemessage.utils import Recipient
from tests.fakes import FakeMessenger
from tests.testapp.sitemessages import GreetingMessage

needs_partial_unique = pytest.mark.skipif(
    connection.vendor == 'mysql',
    reason='MySQL/MariaDB cannot enforce conditional unique constraints (SITEMESSAGE_TEST_DB=mysql)',
)

pytestmark = pytest.mark.django_db

EMPTY = ('', False, False)


class SecondFake(FakeMessenger):
    alias = 'second'
    title = 'Second messenger'


class Internal(MessageBase):
    """An admin alert nobody may subscribe to."""

    alias = 'internal'
    title = 'Internal alerts'
    allow_user_subscription = False


class FakeOnly(MessageBase):
    alias = 'fake_only'
    title = 'Fake only'
    supported_messengers = ['fake']


@pytest.fixture
def user(django_user_model):
    """As conftest's, without a password (hashing one takes half a second)."""
    return django_user_model.objects.create_user('user1', email='user1@example.com')


def user_rows(user):
    return sorted(Subscription.objects.filter(recipient=user).values_list('message_cls', 'messenger_cls'))


def post(user, *values):
    request = RequestFactory().post('/prefs/', {'sm_user_pref': list(values)})
    request.user = user
    return request


# The table's data ---------------------------------------------------------------------------------------


def test_preferences_data_has_sorted_messenger_titles_and_one_row_per_message_title(smtp_messenger, user):
    Subscription.create(user, 'greeting', 'fake')

    titles, rows = get_user_preferences_for_ui(user)

    assert titles == ['E-mail', 'Fake messenger']
    assert list(rows) == ['Email notification', 'Greetings', 'Text notification']
    assert rows['Greetings'] == [('greeting|smtp', True, False), ('greeting|fake', True, True)]
    assert rows['Text notification'] == [('plain|smtp', True, False), ('plain|fake', True, False)]
    # Both e-mail types share a title and support only smtp: one row, any one of them in the cell.
    email_cell, fake_cell = rows['Email notification']
    assert email_cell in [('email_plain|smtp', True, False), ('email_html|smtp', True, False)]
    assert fake_cell == EMPTY


def test_preferences_data_is_a_tuple_of_a_list_and_a_dict_of_lists_of_cells(user):
    prefs = get_user_preferences_for_ui(user)

    assert isinstance(prefs, tuple) and len(prefs) == 2
    titles, rows = prefs
    assert isinstance(titles, list) and isinstance(rows, dict)
    for cells in rows.values():
        assert len(cells) == len(titles)
        assert all(isinstance(cell, tuple) and len(cell) == 3 for cell in cells)


def test_anonymous_user_sees_every_cell_unsubscribed(user):
    Subscription.create(user, 'greeting', 'fake')

    _titles, rows = get_user_preferences_for_ui(AnonymousUser())

    assert rows['Greetings'] == [('greeting|fake', True, False)]


def test_message_and_messenger_filters_narrow_the_table(smtp_messenger, user):
    titles, rows = get_user_preferences_for_ui(user, message_filter=lambda cls: cls.get_alias() == 'greeting')
    assert (titles, list(rows)) == (['E-mail', 'Fake messenger'], ['Greetings'])

    titles, rows = get_user_preferences_for_ui(user, messenger_filter=lambda messenger: messenger.alias == 'fake')
    # The e-mail types support smtp only: with smtp filtered out they have no row at all.
    assert (titles, list(rows)) == (['Fake messenger'], ['Greetings', 'Text notification'])


def test_new_messengers_titles_rename_columns_and_change_their_order(smtp_messenger, user):
    titles, rows = get_user_preferences_for_ui(user, new_messengers_titles={'fake': 'A fake', 'smtp': ''})

    assert titles == ['A fake', 'E-mail']  # an empty new title keeps the messenger's own
    assert rows['Greetings'] == [('greeting|fake', True, False), ('greeting|smtp', True, False)]


def test_message_types_sharing_a_title_merge_into_one_row(smtp_messenger, user):

    class DigestByMail(MessageBase):
        alias = 'digest_mail'
        title = 'Digest'
        supported_messengers = ['smtp']

    class DigestByFake(MessageBase):
        alias = 'digest_fake'
        title = 'Digest'
        supported_messengers = ['fake']

    register_message_types(DigestByMail, DigestByFake)
    Subscription.create(user, 'digest_fake', 'fake')

    _titles, rows = get_user_preferences_for_ui(user)

    assert rows['Digest'] == [('digest_mail|smtp', True, False), ('digest_fake|fake', True, True)]


def test_messengers_sharing_a_title_collapse_into_one_column(user):

    class Lookalike(FakeMessenger):
        alias = 'lookalike'
        title = 'Fake messenger'

    register_messenger_objects(Lookalike())

    titles, rows = get_user_preferences_for_ui(user)

    assert titles == ['Fake messenger']
    assert rows['Greetings'] in ([('greeting|fake', True, False)], [('greeting|lookalike', True, False)])


def test_types_and_messengers_closed_to_subscription_are_not_shown(user):

    class Closed(FakeMessenger):
        alias = 'closed'
        title = 'Closed messenger'
        allow_user_subscription = False

    register_messenger_objects(Closed())
    register_message_types(Internal)

    titles, rows = get_user_preferences_for_ui(user)

    assert titles == ['Fake messenger']
    assert 'Internal alerts' not in rows


def test_unsupported_messenger_cells_are_empty(user):
    register_messenger_objects(SecondFake())
    register_message_types(FakeOnly)

    titles, rows = get_user_preferences_for_ui(user)

    assert titles == ['Fake messenger', 'Second messenger']
    assert rows['Fake only'] == [('fake_only|fake', True, False), EMPTY]


# Saving a posted form -----------------------------------------------------------------------------------


def test_posted_preferences_replace_the_users_subscriptions(user, django_user_model):
    other = django_user_model.objects.create_user('other')
    Subscription.create(user, 'plain', 'fake')
    Subscription.create(other, 'plain', 'fake')
    Subscription.create('list@example.com', 'plain', 'fake')

    assert set_user_preferences_from_request(post(user, 'greeting|fake')) is True

    assert user_rows(user) == [('greeting', 'fake')]
    assert user_rows(other) == [('plain', 'fake')]
    assert Subscription.objects.filter(address='list@example.com').exists()


def test_posting_nothing_removes_every_subscription_of_the_user(user):
    Subscription.create(user, 'plain', 'fake')

    assert set_user_preferences_from_request(post(user)) is False

    assert user_rows(user) == []


@pytest.mark.parametrize(
    'value',
    [
        'a',
        'a|b|c',
        '',
        '|',
        'greeting|',
        '|fake',
        'greeting||fake',
        'greeting|fake|',
        ' greeting|fake',
        'nosuchtype|fake',
        'greeting|nosuchmessenger',
        'internal|fake',
        'fake_only|second',
        'greeting|closed',
        'greeting|fake\x00',
        'Greeting|Fake',
    ],
)
def test_malformed_unknown_unsupported_or_forbidden_values_are_ignored(user, value):

    class Closed(FakeMessenger):
        alias = 'closed'
        allow_user_subscription = False

    register_messenger_objects(SecondFake(), Closed())
    register_message_types(Internal, FakeOnly)

    assert set_user_preferences_from_request(post(user, value, 'plain|fake')) is True

    assert user_rows(user) == [('plain', 'fake')]


def test_bad_values_never_reach_the_database_or_a_500_through_a_view(client, user):
    register_message_types(Internal)
    client.force_login(user)

    response = client.post('/prefs/', {'sm_user_pref': ['a', 'a|b|c', '', 'internal|fake', 'greeting|fake']})

    assert response.status_code == 302
    assert user_rows(user) == [('greeting', 'fake')]


def test_a_value_posted_twice_creates_one_subscription(user):
    set_user_preferences_from_request(post(user, 'greeting|fake', 'greeting|fake', 'plain|fake', 'greeting|fake'))

    assert user_rows(user) == [('greeting', 'fake'), ('plain', 'fake')]


def test_anonymous_user_preferences_are_not_stored():
    assert set_user_preferences_from_request(post(AnonymousUser(), 'greeting|fake')) is False

    assert not Subscription.objects.exists()


def test_replacing_preferences_is_atomic(user):
    Subscription.create(user, 'plain', 'fake')

    with mock.patch.object(Subscription.objects, 'bulk_create', side_effect=DatabaseError('disk full')):
        with pytest.raises(DatabaseError):
            set_user_preferences_from_request(post(user, 'greeting|fake'))

    assert user_rows(user) == [('plain', 'fake')]


def test_replace_for_user_accepts_classes_and_aliases_and_drops_duplicates(user, fake_messenger):
    assert (
        Subscription.replace_for_user(
            user, [(GreetingMessage, fake_messenger), ('greeting', 'fake'), (GreetingMessage, 'fake')]
        )
        is True
    )

    assert user_rows(user) == [('greeting', 'fake')]
    assert Subscription.replace_for_user(AnonymousUser(), [('greeting', 'fake')]) is False


# Subscribers --------------------------------------------------------------------------------------------


def test_subscribers_are_active_users_only_unless_asked(django_user_model):
    active = django_user_model.objects.create_user('active')
    inactive = django_user_model.objects.create_user('inactive', is_active=False)
    Subscription.create(active, 'greeting', 'fake')
    Subscription.create(inactive, 'greeting', 'fake')
    Subscription.create('someone', 'greeting', 'fake')

    assert sorted(GreetingMessage.get_subscribers(), key=lambda r: r.address) == [
        Recipient('fake', active, 'active'),
        Recipient('fake', None, 'someone'),
    ]
    assert Recipient('fake', inactive, 'inactive') in GreetingMessage.get_subscribers(active_only=False)


# Uniqueness ---------------------------------------------------------------------------------------------


def test_subscribing_twice_keeps_one_row(user):
    first = Subscription.create(user, 'greeting', 'fake')
    again = Subscription.create(user.pk, GreetingMessage, 'fake')
    by_address = Subscription.create('ann@example.com', 'greeting', 'fake')
    by_address_again = Subscription.create('ann@example.com', 'greeting', 'fake')

    assert (again.pk, by_address_again.pk) == (first.pk, by_address.pk)
    assert Subscription.objects.count() == 2


def test_an_address_subscription_is_distinct_from_a_user_subscription_with_the_same_address(user):
    Subscription.objects.create(recipient=user, address='ann@example.com', message_cls='greeting', messenger_cls='fake')

    by_address = Subscription.create('ann@example.com', 'greeting', 'fake')

    assert by_address.recipient_id is None
    assert Subscription.objects.count() == 2


@pytest.mark.parametrize(
    'row',
    [
        {'recipient': 'user', 'message_cls': 'greeting', 'messenger_cls': 'fake'},
        {'address': 'ann@example.com', 'message_cls': 'greeting', 'messenger_cls': 'fake'},
    ],
)
@needs_partial_unique
def test_the_database_refuses_duplicate_subscriptions(user, row):
    row = {**row, 'recipient': user} if 'recipient' in row else row
    Subscription.objects.create(**row)

    with pytest.raises(IntegrityError), transaction.atomic():
        Subscription.objects.create(**row)


def test_the_same_pair_for_other_users_addresses_types_or_messengers_is_allowed(user, django_user_model):
    other = django_user_model.objects.create_user('other')
    for kwargs in (
        {'recipient': user},
        {'recipient': other},
        {'address': 'a@example.com'},
        {'address': 'b@example.com'},
    ):
        Subscription.objects.create(message_cls='greeting', messenger_cls='fake', **kwargs)
        Subscription.objects.create(message_cls='plain', messenger_cls='fake', **kwargs)
        Subscription.objects.create(message_cls='greeting', messenger_cls='smtp', **kwargs)

    assert Subscription.objects.count() == 12


@needs_partial_unique
@pytest.mark.django_db(transaction=True)
def test_concurrent_subscribe_of_the_same_pair_returns_the_row_that_won():
    """Another process inserts the row between our lookup and our insert: we get its row, not an error."""
    raced = threading.Event()

    def other_process():
        try:
            Subscription.objects.create(address='ann@example.com', message_cls='greeting', messenger_cls='fake')
        finally:
            connections.close_all()

    def insert_after_the_other_process(execute, sql, params, many, context):
        if sql.startswith('INSERT') and 'sitemessage_subscription' in sql and not raced.is_set():
            raced.set()
            thread = threading.Thread(target=other_process)
            thread.start()
            thread.join()
        return execute(sql, params, many, context)

    with connection.execute_wrapper(insert_after_the_other_process):
        subscription = Subscription.create('ann@example.com', 'greeting', 'fake')

    assert raced.is_set()
    assert list(Subscription.objects.values_list('pk', flat=True)) == [subscription.pk]


@needs_partial_unique
@pytest.mark.django_db(transaction=True)
def test_migration_0006_deletes_duplicates_keeping_the_oldest_row_then_enforces_uniqueness(django_user_model):
    ann = django_user_model.objects.create_user('ann')
    bob = django_user_model.objects.create_user('bob')
    before = [('sitemessage', '0005_dispatch_lease_and_retry_time')]
    after = [('sitemessage', '0006_subscription_unique')]
    executor = MigrationExecutor(connection)
    executor.migrate(before)
    try:
        legacy = executor.loader.project_state(before).apps.get_model('sitemessage', 'Subscription')
        rows = [  # (recipient, address, message_cls, messenger_cls)
            (ann.pk, None, 'greeting', 'fake'),
            (ann.pk, None, 'greeting', 'fake'),
            (ann.pk, None, 'greeting', 'fake'),
            (ann.pk, 'x@example.com', 'greeting', 'fake'),  # a user row: a duplicate of the first ones too
            (ann.pk, None, 'plain', 'fake'),
            (bob.pk, None, 'greeting', 'fake'),
            (None, 'eve@example.com', 'greeting', 'fake'),
            (None, 'eve@example.com', 'greeting', 'fake'),
            (None, 'eve@example.com', 'greeting', 'smtp'),
            (None, None, 'greeting', 'fake'),
            (None, None, 'greeting', 'fake'),  # no recipient at all: nothing to compare, both kept
        ]
        ids = [
            legacy.objects.create(
                recipient_id=recipient, address=address, message_cls=message_cls, messenger_cls=messenger_cls
            ).pk
            for recipient, address, message_cls, messenger_cls in rows
        ]
    finally:
        executor = MigrationExecutor(connection)
        executor.migrate(after)

    assert sorted(Subscription.objects.values_list('pk', flat=True)) == [
        ids[0],
        ids[4],
        ids[5],
        ids[6],
        ids[8],
        ids[9],
        ids[10],
    ]
    with pytest.raises(IntegrityError), transaction.atomic():
        Subscription.objects.create(recipient=ann, message_cls='greeting', messenger_cls='fake')
    with pytest.raises(IntegrityError), transaction.atomic():
        Subscription.objects.create(address='eve@example.com', message_cls='greeting', messenger_cls='fake')


def test_system_checks_and_migrations_are_clean(settings):
    settings.SITEMESSAGE_SITE_URL = 'https://www.example.org'  # else sitemessage.W001 (links to nowhere)
    call_command('check', fail_level='WARNING')
    call_command('makemigrations', 'sitemessage', check=True, dry_run=True, verbosity=0)


def test_databases_without_conditional_constraints_get_no_warning_for_them():
    """MySQL/MariaDB cannot create these constraints; the application keeps the rows unique there."""
    with mock.patch.object(connection.features, 'supports_partial_indexes', False):
        unfiltered = [error.id for error in super(Subscription, Subscription).check(databases=['default'])]
        filtered = [error.id for error in Subscription.check(databases=['default'])]

    assert 'models.W036' in unfiltered  # what Django would say
    assert 'models.W036' not in filtered
