from django.core.management.base import CommandParser

from ...toolbox import send_test_message
from ._base import SitemessageCommand


class Command(SitemessageCommand):
    help = 'Sends a test message through a messenger to check its configuration.'
    verb = 'probe'

    def add_arguments(self, parser: CommandParser):
        parser.add_argument('messenger', metavar='MESSENGER', help='Messenger alias to probe.')
        parser.add_argument(
            '--to', action='store', dest='to', default=None, help='Recipient address (if supported by messenger).'
        )

    def run(self, messenger=None, to=None, **options):
        self.stdout.write(f'Sending test message using {messenger} ...\n')
        result = send_test_message(messenger, to=to)
        self.stdout.write(f'Probing function result: {result}.\n')
        self.stdout.write('Probing done.\n')
