from django.core.management.base import CommandParser

from ...maintenance import cleanup_idempotency_keys, cleanup_sent_messages
from ._base import SitemessageCommand


class Command(SitemessageCommand):
    help = 'Removes sent dispatches from DB.'
    verb = 'cleanup'

    def add_arguments(self, parser: CommandParser):
        parser.add_argument(
            '--ago',
            action='store',
            dest='ago',
            default=None,
            type=int,
            help='Allows to delete dispatches sent at least the given number of days ago.',
        )
        parser.add_argument(
            '--dispatches_only',
            action='store_true',
            dest='dispatches_only',
            default=False,
            help='Remove dispatches only, keeping the messages.',
        )

    def run(self, ago=None, dispatches_only=False, **options):
        suffix = []
        if not dispatches_only:
            suffix.append('and messages')
        if ago:
            suffix.append(f'sent {ago} days ago')
        self.stdout.write(f'Cleaning up dispatches {" ".join(suffix)} ...\n')
        cleanup_sent_messages(ago=ago, dispatches_only=dispatches_only)
        cleanup_idempotency_keys()  # those past SITEMESSAGE_IDEMPOTENCY_RETENTION
        self.stdout.write('Cleanup done.\n')
