"""Rendering in each recipient's language: one message to N recipients in 3 languages, beside 1 language.

Run from the repository root::

    .venv/bin/python benchmarks/render_languages.py              # 10,000 dispatches
    .venv/bin/python benchmarks/render_languages.py --size 50000

One message (a template with translated strings and a loop) is scheduled to N addresses, then a
send run delivers it through an in-memory messenger (no network) on SQLite. The script counts the
template renderings (calls of ``MessageBase.compile``), the time spent in them, and the wall time of
the send run, for:

- ``1 language``: every recipient in English (the baseline);
- ``3 languages``: recipients in English, Russian and German (a third each);
- the same two with a larger ``SITEMESSAGE_SEND_BATCH_SIZE`` (``--batch-size``, 1000): fewer batches.
  (Above about 1M characters of text in a batch the engine writes each distinct text with its own
  UPDATE, which on SQLite is slow: 10,000 in one batch take over a minute to store.);
- ``per recipient``: 3 languages, a type with ``has_dynamic_context`` (rendered for every dispatch),
  which is what rendering "in each recipient's language" costs without grouping.

The engine renders once per language per message for a whole run: later batches of the message
reuse the rendering (``sitemessage.messages.render_cache``), whatever the number of recipients.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
LANGUAGES = [('en', 'English'), ('ru', 'Russian'), ('de', 'German')]
TEMPLATE = """{% load i18n %}{% get_current_language as LANG %}[{{ LANG }}] {% translate "Notification" %}
{% for item in items %}{{ forloop.counter }}. {{ item }} -- {% translate "No Subject" %}
{% endfor %}{% translate "You can unsubscribe from this list using" %} {{ directive_unsubscribe }}
"""


class URLConf:
    """ROOT_URLCONF: sitemessage's URLs (filled in after set-up), so texts carry signed links."""

    urlpatterns: list = []


def language_of(recipient):
    """The SITEMESSAGE_RECIPIENT_LANGUAGE hook: the address ends with the language."""
    return recipient.address.rpartition('.')[2]


def setup_django(database: str) -> None:
    import django
    from django.conf import settings

    sys.path.insert(0, str(REPO))
    settings.configure(
        DEBUG=False,
        SECRET_KEY='benchmark',
        INSTALLED_APPS=['django.contrib.contenttypes', 'django.contrib.auth', 'sitemessage'],
        DATABASES={'default': {'ENGINE': 'django.db.backends.sqlite3', 'NAME': database}},
        LANGUAGES=LANGUAGES,
        LANGUAGE_CODE='en',
        USE_I18N=True,
        USE_TZ=True,
        SITEMESSAGE_RECIPIENT_LANGUAGE='__main__.language_of',
        SITEMESSAGE_SITE_URL='https://example.com',
        ROOT_URLCONF=URLConf,
        TEMPLATES=[
            {
                'BACKEND': 'django.template.backends.django.DjangoTemplates',
                'OPTIONS': {'loaders': [('django.template.loaders.locmem.Loader', {'bench/polyglot.tpl': TEMPLATE})]},
            }
        ],
    )
    django.setup()
    from django.core.management import call_command

    from sitemessage.toolbox import get_sitemessage_urls

    URLConf.urlpatterns = get_sitemessage_urls()

    call_command('migrate', verbosity=0)


def make_types():
    from sitemessage.messages.base import MessageBase
    from sitemessage.messengers.base import MessengerBase

    class Counted(MessageBase):
        alias = 'bench_polyglot'
        template = 'bench/polyglot.tpl'
        supported_messengers = ['bench']
        renders = 0
        seconds = 0.0

        @classmethod
        def compile(cls, message, messenger, dispatch=None):
            started = time.perf_counter()
            try:
                return super().compile(message, messenger, dispatch=dispatch)
            finally:
                Counted.renders += 1
                Counted.seconds += time.perf_counter() - started

    class PerRecipient(Counted):
        alias = 'bench_per_recipient'
        has_dynamic_context = True

    class Sink(MessengerBase):
        """Delivers nowhere: marks every dispatch sent (the texts are built, as a real messenger would)."""

        alias = 'bench'
        title = 'Benchmark'

        def send(self, message_cls, message_model, dispatch_models):
            for dispatch in dispatch_models:
                str(dispatch.message_cache)
                self.mark_sent(dispatch)

    return Counted, PerRecipient, Sink


def run(message_type, counted, size: int, languages: list, batch_size: int) -> tuple:
    from django.test import override_settings

    from sitemessage.models import Dispatch, Message
    from sitemessage.toolbox import recipients, schedule_messages, send_scheduled_messages

    Message.objects.all().delete()
    addresses = [f'r{index}.{languages[index % len(languages)]}' for index in range(size)]
    schedule_messages(message_type({'items': [f'item {n}' for n in range(20)]}), recipients('bench', addresses))
    counted.renders, counted.seconds = 0, 0.0
    with override_settings(SITEMESSAGE_SEND_BATCH_SIZE=batch_size):
        started = time.perf_counter()
        send_scheduled_messages()
        wall = time.perf_counter() - started
    sent = Dispatch.objects.filter(dispatch_status=Dispatch.DISPATCH_STATUS_SENT).count()
    assert sent == size, f'{sent} of {size} sent'
    return counted.renders, counted.seconds, wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--size', type=int, default=10_000, help='dispatches (default 10000)')
    parser.add_argument('--batch-size', type=int, default=1000, help='the larger batch size (default 1000)')
    options = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        setup_django(os.path.join(folder, 'bench.sqlite3'))
        from sitemessage.settings import get_setting
        from sitemessage.toolbox import register_message_types, register_messenger_objects

        counted, per_recipient, sink = make_types()
        register_message_types(counted, per_recipient)
        register_messenger_objects(sink())
        default_batch = get_setting('SEND_BATCH_SIZE')
        size = options.size
        big = options.batch_size
        rows = [
            ('1 language', counted, ['en'], default_batch),
            ('3 languages', counted, ['en', 'ru', 'de'], default_batch),
            (f'1 language, batch {big}', counted, ['en'], big),
            (f'3 languages, batch {big}', counted, ['en', 'ru', 'de'], big),
            ('per recipient, 3 languages', per_recipient, ['en', 'ru', 'de'], default_batch),
        ]
        print(f'{size} dispatches of one message; batch size {default_batch} unless said')
        print(f'{"scenario":<28} {"renders":>8} {"render s":>9} {"send run s":>11}')
        for name, message_type, languages, batch_size in rows:
            renders, seconds, wall = run(message_type, counted, size, languages, batch_size)
            print(f'{name:<28} {renders:>8} {seconds:>9.3f} {wall:>11.2f}')


if __name__ == '__main__':
    main()
