"""Message types: contexts, grouping, templates, compilation, signed links, subscribers."""

from __future__ import annotations

import copy
import hashlib
import hmac
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from django.conf import settings
from django.test import override_settings

import sitemessage.messages
from sitemessage.links import is_mark_read_signature_valid, read_unsubscribe_token
from sitemessage.messages.base import MessageBase
from sitemessage.messages.email import EmailHtmlMessage, EmailTextMessage
from sitemessage.messages.plain import PlainTextMessage
from sitemessage.messengers.base import MessengerBase
from sitemessage.messengers.smtp import SMTPMessenger
from sitemessage.models import Dispatch, DispatchError, Message, Subscription
from sitemessage.toolbox import (
    get_registered_message_types,
    prepare_dispatches,
    recipients,
    register_message_types,
    register_messenger_objects,
    schedule_messages,
    send_scheduled_messages,
)
from sitemessage.utils import Recipient, get_site_url
from tests.fakes import FakeMessenger
from tests.testapp.sitemessages import GreetingMessage

pytestmark = pytest.mark.django_db

REPO_ROOT = str(Path(__file__).resolve().parent.parent)

# With ROOT_URLCONF pointing here, the sitemessage URLs are not attached.
urlpatterns = []

TEMPLATES = [
    {
        'BACKEND': 'django.template.backends.django.DjangoTemplates',
        'OPTIONS': {
            'loaders': [
                (
                    'django.template.loaders.locmem.Loader',
                    {
                        'sitemessage/messages/note__fake.tpl': 'FAKE {{ x }}',
                        'sitemessage/messages/note__other.tpl': 'OTHER {{ x }}',
                        'sitemessage/messages/addressed__fake.tpl': (
                            'Dear {{ dispatch_model.address }}: {{ directive_unsubscribe }}'
                        ),
                        'sitemessage/messages/shouting__fake.tpl': '{{ shout }}! {{ directive_mark_read }}',
                    },
                ),
                'django.template.loaders.app_directories.Loader',
            ]
        },
    }
]

SITE = 'https://site.example'


class OtherMessenger(FakeMessenger):
    alias = 'other'


def delivered_links(text: str) -> dict:
    """Pick the directive URLs out of a rendered greeting__fake.tpl."""
    return dict(re.findall(r'(unsubscribe|read)=(\S*)', text))


def link_parts(url: str):
    """``(message id, dispatch id, hash)`` of a directive URL."""
    *_, message_id, dispatch_id, hashed = urlsplit(url).path.rstrip('/').split('/')
    return int(message_id), int(dispatch_id), hashed


def assert_links_belong_to(url: str, dispatch: Dispatch):
    message_id, dispatch_id, hashed = link_parts(url)
    assert (message_id, dispatch_id) == (dispatch.message_id, dispatch.pk)
    # Each action has its own signature (issue 9): an unsubscribe token naming the recipient, or a mark-read HMAC.
    if '/messages/unsubscribe/' in url:
        link = read_unsubscribe_token(int(message_id), int(dispatch_id), hashed)
        assert link is not None and (link.messenger, link.address) == (dispatch.messenger, dispatch.address)
    else:
        assert is_mark_read_signature_valid(message_id, dispatch_id, hashed)


def dispatch_to(address: str) -> Dispatch:
    return Dispatch.objects.get(address=address)


# Contexts ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    'message, expected',
    [
        (lambda: PlainTextMessage('ppp'), {'tpl': None, 'use_tpl': False, 'stext_': 'ppp'}),
        (
            lambda: MessageBase({'title': 'My message!', 'name': 'idle'}),
            {'tpl': None, 'use_tpl': True, 'title': 'My message!', 'name': 'idle'},
        ),
        (
            lambda: EmailTextMessage('S', 'txt'),
            {'tpl': None, 'use_tpl': False, 'subject': 'S', 'type': 'plain', 'stext_': 'txt'},
        ),
        (
            lambda: EmailHtmlMessage('S', '<b>x</b>'),
            {'tpl': None, 'use_tpl': False, 'subject': 'S', 'type': 'html', 'stext_': '<b>x</b>'},
        ),
        (
            lambda: EmailHtmlMessage('S', {'a': 1}),
            {'tpl': None, 'use_tpl': True, 'subject': 'S', 'type': 'html', 'a': 1},
        ),
        (
            lambda: EmailTextMessage('S', {'k': 'v'}, template_path='x/y.txt'),
            {'tpl': 'x/y.txt', 'use_tpl': True, 'subject': 'S', 'type': 'plain', 'k': 'v'},
        ),
    ],
    ids=['plain', 'base-dict', 'email-text', 'email-html', 'email-html-dict', 'email-text-template'],
)
def test_message_contexts_are_those_of_1_4_0_in_key_order_too(message, expected):
    context = message().get_context()

    assert context == expected
    assert list(context) == list(expected)


def test_message_without_context_ignores_the_template_path():
    assert MessageBase().context == {'tpl': None, 'use_tpl': False}
    assert MessageBase(None, template_path='x.tpl').context == {'tpl': None, 'use_tpl': False}


def test_template_path_overrides_a_tpl_key_of_the_dict():
    assert MessageBase({'tpl': 'from/dict.tpl'}, template_path='given.tpl').context['tpl'] == 'given.tpl'
    assert MessageBase({'tpl': 'from/dict.tpl'}).context['tpl'] is None


# merge_context ----------------------------------------------------------------------------------------


def test_merge_context_joins_texts_with_a_newline():
    merged = MessageBase.merge_context({'a': 1, 'stext_': 'first'}, {'b': 2, 'stext_': 'second'})

    assert merged == {'a': 1, 'b': 2, 'stext_': 'first\nsecond'}


def test_merge_context_without_text_lets_the_new_context_win():
    assert MessageBase.merge_context({'a': 1, 'b': 1}, {'b': 2}) == {'a': 1, 'b': 2}
    assert MessageBase.merge_context({'stext_': 'old'}, {'other': 1}) == {'stext_': 'old\n', 'other': 1}


def test_merge_context_leaves_its_arguments_alone():
    old, new = {'stext_': 'a'}, {'stext_': 'b'}

    MessageBase.merge_context(old, new)

    assert (old, new) == ({'stext_': 'a'}, {'stext_': 'b'})


# Aliases and templates --------------------------------------------------------------------------------


def test_alias_falls_back_to_the_class_name_without_leaking_to_subclasses():
    class Parent(MessageBase):
        pass

    assert Parent.get_alias() == 'Parent'

    class Child(Parent):
        pass

    assert Child.get_alias() == 'Child'
    assert Parent.alias is None and Child.alias is None
    assert str(Child()) == 'Child'


def test_messenger_alias_falls_back_to_the_class_name_without_leaking_to_subclasses():
    class ParentMessenger(MessengerBase):
        pass

    assert ParentMessenger.get_alias() == 'ParentMessenger'

    class ChildMessenger(ParentMessenger):
        pass

    assert ChildMessenger.get_alias() == 'ChildMessenger'
    assert ParentMessenger.alias is None


def test_derived_template_follows_each_messenger_and_subclass_without_caching():
    class Note(MessageBase):
        alias = 'note'

    class SubNote(Note):
        alias = 'subnote'
        template_ext = 'html'

    note = Note({'x': 1})

    assert Note.get_template(note, FakeMessenger()) == 'sitemessage/messages/note__fake.tpl'
    assert Note.get_template(note, SMTPMessenger()) == 'sitemessage/messages/note__smtp.tpl'
    assert SubNote.get_template(note, FakeMessenger()) == 'sitemessage/messages/subnote__fake.html'
    assert Note.get_template(note, OtherMessenger()) == 'sitemessage/messages/note__other.tpl'
    assert Note.template is None and SubNote.template is None


def test_template_of_the_message_beats_the_class_template():
    class Fixed(MessageBase):
        template = 'fixed/path.tpl'

    assert Fixed.get_template(Fixed({'x': 1}), FakeMessenger()) == 'fixed/path.tpl'
    assert Fixed.get_template(Fixed({'x': 1}, template_path='own.tpl'), FakeMessenger()) == 'own.tpl'


@override_settings(TEMPLATES=TEMPLATES)
def test_one_message_type_renders_each_messenger_with_its_own_template(fake_messenger):
    class Note(MessageBase):
        alias = 'note'

    other = OtherMessenger()
    register_messenger_objects(other)
    register_message_types(Note)
    schedule_messages(Note({'x': 1}), recipients('fake', 'ann') + recipients('other', 'bob'))

    send_scheduled_messages()

    assert (fake_messenger.delivered, other.delivered) == ([('ann', 'FAKE 1')], [('bob', 'OTHER 1')])


# Compilation ------------------------------------------------------------------------------------------


@override_settings(SITEMESSAGE_SITE_URL=SITE)
def test_compile_does_not_change_the_stored_context(fake_messenger):
    ((message, dispatches),) = schedule_messages(GreetingMessage({'name': 'Ann'}), recipients('fake', 'ann'))
    before = copy.deepcopy(message.context)

    text = GreetingMessage.compile(message, fake_messenger, dispatch=dispatches[0])

    assert text.startswith('Hello Ann!')
    assert message.context == before
    instance = GreetingMessage({'name': 'Bob'})
    GreetingMessage.compile(instance, fake_messenger)
    assert instance.context == {'tpl': None, 'use_tpl': True, 'name': 'Bob'}


def test_compile_returns_the_text_of_a_plain_message(fake_messenger):
    assert PlainTextMessage.compile(PlainTextMessage('just text'), fake_messenger) == 'just text'


@override_settings(SITEMESSAGE_SITE_URL=SITE)
def test_template_context_has_site_url_models_and_directives(fake_messenger):
    seen = []

    class Capturing(MessageBase):
        alias = 'capturing'
        template = 'sitemessage/messages/greeting__fake.tpl'

        @classmethod
        def get_template_context(cls, context):
            seen.append(dict(context))
            return context

    register_message_types(Capturing)
    ((message, _dispatches),) = schedule_messages(Capturing({'name': 'Ann'}), recipients('fake', 'ann'))
    dispatch = Dispatch.objects.get()

    text = Capturing.compile(message, fake_messenger, dispatch=dispatch)

    (context,) = seen
    assert context['name'] == 'Ann'
    assert context['SITE_URL'] == SITE == get_site_url()
    assert context['message_model'] is message and context['dispatch_model'] is dispatch
    assert context['directive_unsubscribe'] == Capturing.get_unsubscribe_directive(message, dispatch)
    assert context['directive_mark_read'] == Capturing.get_mark_read_directive(message, dispatch)
    assert context['directive_unsubscribe'].startswith(f'{SITE}/messages/unsubscribe/{message.pk}/{dispatch.pk}/')
    assert context['directive_mark_read'].startswith(f'{SITE}/messages/ping/{message.pk}/{dispatch.pk}/')
    assert text.rstrip('\n') == (
        f'Hello Ann! unsubscribe={context["directive_unsubscribe"]} read={context["directive_mark_read"]} site={SITE}'
    )


def test_directives_are_empty_without_a_dispatch(fake_messenger):
    ((message, _dispatches),) = schedule_messages(GreetingMessage({'name': 'Ann'}), recipients('fake', 'ann'))

    assert GreetingMessage.get_unsubscribe_directive(message, None) == ''
    assert delivered_links(GreetingMessage.compile(message, fake_messenger)) == {'unsubscribe': '', 'read': ''}


def test_directives_are_empty_while_urls_are_not_attached_and_come_back_once_they_are():
    ((message, _dispatches),) = schedule_messages(GreetingMessage({'name': 'Ann'}), recipients('fake', 'ann'))
    dispatch = Dispatch.objects.get()

    with override_settings(ROOT_URLCONF=__name__):
        assert GreetingMessage.get_unsubscribe_directive(message, dispatch) == ''
        assert GreetingMessage.get_mark_read_directive(message, dispatch) == ''

    assert '/messages/unsubscribe/' in GreetingMessage.get_unsubscribe_directive(message, dispatch)


# Signed links -----------------------------------------------------------------------------------------


def test_dispatch_hash_matches_the_1_4_0_test_vector():
    assert settings.SECRET_KEY == 'test-secret'
    expected = hmac.new(hashlib.sha1(b'5' + b'test-secret').digest(), b'7|5', hashlib.sha1).hexdigest()

    assert MessageBase.get_dispatch_hash(5, 7) == 'd300d0a4e33e1f80bb1a427e2d030d1edfcb2727' == expected
    assert MessageBase.get_dispatch_hash('5', '7') == expected


def test_dispatch_hash_is_valid_with_the_current_key_or_a_fallback_only():
    with override_settings(SECRET_KEY='old-secret'):
        old_hash = MessageBase.get_dispatch_hash(3, 9)
    assert not MessageBase.is_dispatch_hash_valid(3, 9, old_hash)

    with override_settings(SECRET_KEY='new-secret', SECRET_KEY_FALLBACKS=['old-secret']):
        assert MessageBase.is_dispatch_hash_valid(3, 9, old_hash)
        assert MessageBase.is_dispatch_hash_valid('3', '9', old_hash)
        assert MessageBase.is_dispatch_hash_valid(3, 9, MessageBase.get_dispatch_hash(3, 9))
        assert not MessageBase.is_dispatch_hash_valid(9, 3, old_hash)
        assert not MessageBase.is_dispatch_hash_valid(3, 9, 'garbage')
        assert not MessageBase.is_dispatch_hash_valid(3, 9, '')


def test_mark_read_link_signed_with_a_rotated_key_still_works(client):
    ((message, _dispatches),) = schedule_messages(GreetingMessage({'name': 'Ann'}), recipients('fake', 'ann'))
    dispatch = Dispatch.objects.get()
    with override_settings(SECRET_KEY='old-secret'):
        link = GreetingMessage.get_mark_read_directive(message, dispatch)

    with override_settings(SECRET_KEY='new-secret', SECRET_KEY_FALLBACKS=['old-secret']):
        response = client.get(urlsplit(link).path)

    assert response.status_code == 302
    dispatch.refresh_from_db()
    assert dispatch.is_read()


def test_each_recipient_of_one_templated_message_gets_its_own_signed_links(fake_messenger):
    schedule_messages(GreetingMessage({'name': 'All'}), recipients('fake', ['ann', 'bob']))

    send_scheduled_messages()

    texts = dict(fake_messenger.delivered)
    for address in ('ann', 'bob'):
        links = delivered_links(texts[address])
        assert_links_belong_to(links['unsubscribe'], dispatch_to(address))
        assert_links_belong_to(links['read'], dispatch_to(address))
        assert '/messages/unsubscribe/' in links['unsubscribe'] and '/messages/ping/' in links['read']
        assert dispatch_to(address).message_cache == texts[address]
    assert texts['ann'] != texts['bob']


def test_each_recipient_of_one_html_email_gets_its_own_links_in_body_and_header(smtp_messenger, smtp_server):
    schedule_messages(
        EmailHtmlMessage('News', {'contents': 'Hello'}), recipients('smtp', ['ann@example.com', 'bob@example.com'])
    )

    send_scheduled_messages()

    mails = {mail['To']: mail for mail in smtp_server.handler.messages()}
    assert sorted(mails) == ['ann@example.com', 'bob@example.com']
    for address, mail in mails.items():
        html = mail.get_body(('html',)).get_content()
        unsubscribe = re.search(r'<a href="([^"]+/messages/unsubscribe/[^"]+)"', html).group(1)
        assert '/messages/ping/' not in html  # no tracking pixel in the default template (issue 9)
        assert_links_belong_to(unsubscribe, dispatch_to(address))
        assert mail['List-Unsubscribe'] == f'<{unsubscribe}>'


@override_settings(TEMPLATES=TEMPLATES)
def test_template_using_the_dispatch_is_rendered_for_each_dispatch(fake_messenger):
    class Addressed(MessageBase):
        alias = 'addressed'

    register_message_types(Addressed)
    schedule_messages(Addressed({'x': 1}), recipients('fake', ['ann', 'bob']))

    send_scheduled_messages()

    texts = dict(fake_messenger.delivered)
    for address in ('ann', 'bob'):
        greeting, _, link = texts[address].partition(': ')
        assert greeting == f'Dear {address}'
        assert_links_belong_to(link, dispatch_to(address))


@override_settings(TEMPLATES=TEMPLATES)
def test_dynamic_context_is_built_for_each_dispatch(fake_messenger):
    class Shouting(MessageBase):
        alias = 'shouting'
        has_dynamic_context = True

        @classmethod
        def get_template_context(cls, context):
            context['shout'] = context['dispatch_model'].address.upper()
            return context

    register_message_types(Shouting)
    schedule_messages(Shouting({'x': 1}), recipients('fake', ['ann', 'bob']))

    send_scheduled_messages()

    texts = dict(fake_messenger.delivered)
    for address in ('ann', 'bob'):
        shout, _, link = texts[address].partition('! ')
        assert shout == address.upper()
        assert_links_belong_to(link, dispatch_to(address))


def test_missing_template_puts_the_dispatch_in_error_without_calling_send(fake_messenger):
    class Broken(MessageBase):
        alias = 'broken'
        template = 'no/such/template.tpl'

    register_message_types(Broken)
    schedule_messages(Broken({'x': 1}), recipients('fake', 'ann'))
    schedule_messages(GreetingMessage({'name': 'Bob'}), recipients('fake', 'bob'))

    report = send_scheduled_messages()

    assert (report.sent, report.errors) == (1, 1)
    assert fake_messenger.calls.count('send') == 1
    assert [address for address, _text in fake_messenger.delivered] == ['bob']
    broken = dispatch_to('ann')
    assert (broken.dispatch_status, broken.retry_count) == (Dispatch.DISPATCH_STATUS_ERROR, 1)
    (error,) = DispatchError.objects.filter(dispatch=broken)
    assert 'TemplateDoesNotExist' in error.error_log and 'no/such/template.tpl' in error.error_log


def test_missing_template_of_the_only_message_never_reaches_send(fake_messenger):
    class Broken(MessageBase):
        alias = 'broken'
        template = 'no/such/template.tpl'

    register_message_types(Broken)
    schedule_messages(Broken({'x': 1}), recipients('fake', ['ann', 'bob']))

    send_scheduled_messages()

    assert 'send' not in fake_messenger.calls
    assert set(Dispatch.objects.values_list('dispatch_status', flat=True)) == {Dispatch.DISPATCH_STATUS_ERROR}
    assert DispatchError.objects.count() == 2


# Subscribers ------------------------------------------------------------------------------------------


def test_subscribers_are_active_users_and_addresses_with_a_usable_address(user, django_user_model):
    register_messenger_objects(SMTPMessenger())
    inactive = django_user_model.objects.create_user('inactive', email='inactive@example.com', is_active=False)
    no_email = django_user_model.objects.create_user('noemail', email='')
    Subscription.create(user, 'greeting', 'fake')
    Subscription.create(user, 'greeting', 'smtp')
    Subscription.create(inactive, 'greeting', 'smtp')
    Subscription.create(no_email, 'greeting', 'smtp')
    # A messenger no longer registered (stored directly: Subscription.create() refuses unknown aliases).
    Subscription.objects.create(recipient=user, message_cls='greeting', messenger_cls='ghost')
    Subscription.create('list@example.com', 'greeting', 'smtp')
    Subscription.create(user, 'plain', 'fake')  # another type

    subscribers = GreetingMessage.get_subscribers()

    assert sorted(subscribers, key=lambda r: (r.messenger, r.address)) == [
        Recipient('fake', user, 'user1'),
        Recipient('smtp', None, 'list@example.com'),
        Recipient('smtp', user, 'user1@example.com'),
    ]
    assert Recipient('smtp', inactive, 'inactive@example.com') in GreetingMessage.get_subscribers(active_only=False)


def test_prepare_dispatches_uses_subscribers_and_skips_messages_without_any(fake_messenger, user):
    ((without_recipients, _dispatches),) = schedule_messages(GreetingMessage({'name': 'Ann'}))
    assert prepare_dispatches() == []

    Subscription.create(user, 'greeting', 'fake')
    prepared = prepare_dispatches()

    assert [(d.messenger, d.address, d.recipient) for d in prepared] == [('fake', 'user1', user)]
    without_recipients.refresh_from_db()
    assert without_recipients.dispatches_ready


# Built-in types -----------------------------------------------------------------------------------------


def test_builtin_types_are_importable_from_the_messages_package():
    from sitemessage.messages import EmailHtmlMessage as Html
    from sitemessage.messages import EmailTextMessage as Text
    from sitemessage.messages import PlainTextMessage as Plain

    assert (Plain, Text, Html) == (PlainTextMessage, EmailTextMessage, EmailHtmlMessage)
    with pytest.raises(AttributeError):
        sitemessage.messages.NoSuchMessage


def test_builtin_types_register_under_their_aliases():
    sitemessage.messages.register_builtin_message_types()

    types = get_registered_message_types()
    assert (types['plain'], types['email_plain'], types['email_html']) == (
        PlainTextMessage,
        EmailTextMessage,
        EmailHtmlMessage,
    )


def test_messages_package_imports_builtin_types_only_when_asked():
    code = textwrap.dedent("""
        import sys
        import sitemessage.messages
        assert 'sitemessage.models' not in sys.modules, 'models imported'
        assert 'sitemessage.messages.email' not in sys.modules, 'email types imported eagerly'
        import django
        django.setup()
        from sitemessage.messages import EmailHtmlMessage
        print(EmailHtmlMessage.alias)
    """)
    result = subprocess.run(
        [sys.executable, '-c', code],
        capture_output=True,
        text=True,
        timeout=60,
        env={'DJANGO_SETTINGS_MODULE': 'tests.settings'},
        cwd=REPO_ROOT,
    )

    assert result.stdout.strip() == 'email_html', result.stderr


# Grouping (Message.create) --------------------------------------------------------------------------------


class Grouped(PlainTextMessage):
    alias = 'grouped'
    group_mark = 'digest'


@pytest.fixture
def grouped():
    register_message_types(Grouped)
    return Grouped


def dispatch_addresses(message) -> list:
    return list(message.dispatch_set.order_by('pk').values_list('address', flat=True))


def test_grouped_messages_merge_into_one_pending_message(grouped, fake_messenger):
    ((first, _dispatches),) = schedule_messages(grouped('text1'), recipients('fake', 'ann'))
    ((second, dispatches),) = schedule_messages(grouped('moretext'), recipients('fake', 'ann'))

    assert second.pk == first.pk
    assert Message.objects.get().context == {'tpl': None, 'use_tpl': False, 'stext_': 'text1\nmoretext'}
    assert [d.address for d in dispatches] == ['ann']
    send_scheduled_messages()
    assert fake_messenger.delivered == [('ann', 'text1\nmoretext')]


def test_grouping_adds_new_recipients_once(grouped):
    ((message, _dispatches),) = schedule_messages(grouped('a'), recipients('fake', 'ann'))
    schedule_messages(grouped('b'), recipients('fake', ['ann', 'bob']))
    schedule_messages(grouped('c'), recipients('fake', ['bob']))

    assert Message.objects.count() == 1
    assert dispatch_addresses(message) == ['ann', 'bob']


def test_grouping_matches_the_sender(grouped, user, django_user_model):
    other = django_user_model.objects.create_user('other')
    for sender in (None, user, other, user, None, other):
        schedule_messages(grouped('x'), recipients('fake', 'ann'), sender=sender)

    assert sorted((m.sender_id or 0, m.context['stext_']) for m in Message.objects.all()) == sorted(
        [(0, 'x\nx'), (user.pk, 'x\nx'), (other.pk, 'x\nx')]
    )


def test_grouping_keeps_the_priority_and_clears_stale_caches(grouped):
    ((message, _dispatches),) = schedule_messages(grouped('a'), recipients('fake', 'ann'), priority=5)
    Dispatch.objects.update(message_cache='a')

    schedule_messages(grouped('b'), recipients('fake', 'ann'), priority=9)

    message.refresh_from_db()
    assert message.priority == 5
    assert Dispatch.objects.get().message_cache in ('', None)


def test_message_with_nothing_pending_is_not_grouped_into(grouped, fake_messenger):
    schedule_messages(grouped('a'), recipients('fake', 'ann'))
    send_scheduled_messages()

    schedule_messages(grouped('b'), recipients('fake', 'ann'))

    assert sorted(m.context['stext_'] for m in Message.objects.all()) == ['a', 'b']


def test_other_group_marks_and_types_are_not_grouped(grouped):
    class OtherGroup(Grouped):
        alias = 'grouped_other'

    class Ungrouped(PlainTextMessage):
        alias = 'ungrouped'

    register_message_types(OtherGroup, Ungrouped)
    for message in (grouped('a'), OtherGroup('b'), Ungrouped('c'), Ungrouped('d')):
        schedule_messages(message, recipients('fake', 'ann'))

    assert Message.objects.count() == 4


def test_group_mark_may_be_a_property_of_the_instance():
    class PerTopic(PlainTextMessage):
        alias = 'per_topic'

        def __init__(self, topic, text):
            super().__init__(text)
            self.topic = topic

        @property
        def group_mark(self):
            return f'topic-{self.topic}'

    register_message_types(PerTopic)
    for topic, text in (('a', '1'), ('b', '2'), ('a', '3')):
        schedule_messages(PerTopic(topic, text), recipients('fake', 'ann'))

    assert sorted((m.group_mark, m.context['stext_']) for m in Message.objects.all()) == [
        ('topic-a', '1\n3'),
        ('topic-b', '2'),
    ]


def test_grouping_into_a_message_without_dispatches_yet(grouped, user):
    ((message, dispatches),) = schedule_messages(grouped('a'))
    ((same, more_dispatches),) = schedule_messages(grouped('b'))

    assert (same.pk, dispatches, more_dispatches) == (message.pk, [], [])
    Subscription.create(user, 'grouped', 'fake')
    prepared = prepare_dispatches()
    assert [(d.message_id, d.address) for d in prepared] == [(message.pk, 'user1')]
    assert Message.objects.get().context['stext_'] == 'a\nb'


def test_message_create_without_merge_hook_replaces_the_context():
    Message.create('grouped', {'stext_': 'old'}, recipients=recipients('fake', 'ann'), group_mark='g')
    message, dispatches = Message.create(
        'grouped', {'stext_': 'new'}, recipients=recipients('fake', 'ann'), group_mark='g'
    )

    assert Message.objects.get().context == {'stext_': 'new'}
    assert [d.address for d in dispatches] == ['ann']


def test_signed_links_from_the_cached_template_equal_reverse():
    from django.urls import NoReverseMatch, reverse

    from sitemessage.messages.base import reverse_signed_link

    for message_id, dispatch_id, hashed in ((1, 2, 'abc'), (10, 987654321, 'f' * 40), (5, 5, '5')):
        for name in ('sitemessage_unsubscribe', 'sitemessage_mark_read'):
            assert reverse_signed_link(name, message_id, dispatch_id, hashed) == reverse(
                name, args=[message_id, dispatch_id, hashed]
            )
    with override_settings(ROOT_URLCONF='tests.messengers.test_smtp'):  # a URLconf without sitemessage's views
        with pytest.raises(NoReverseMatch):
            reverse_signed_link('sitemessage_unsubscribe', 1, 2, 'abc')
    assert reverse_signed_link('sitemessage_unsubscribe', 1, 2, 'abc') == reverse(
        'sitemessage_unsubscribe', args=[1, 2, 'abc']
    )
