from django.core.management.base import CommandParser

from ...maintenance import check_undelivered
from ._base import SitemessageCommand


class Command(SitemessageCommand):
    help = 'Sends a notification email if any undelivered dispatches.'
    verb = 'check'

    def add_arguments(self, parser: CommandParser):
        parser.add_argument(
            '--to', action='store', dest='to', default=None, help='Recipient e-mail address (defaults to ADMINS).'
        )

    def run(self, to=None, **options):
        self.stdout.write('Checking for undelivered dispatches ...\n')
        undelivered_count = check_undelivered(to=to)
        self.stdout.write(f'Undelivered dispatches count: {undelivered_count}.\n')
        self.stdout.write('Check done.\n')
