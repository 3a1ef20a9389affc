from django.core.management.base import CommandParser

from ...progress import Progress
from ...sending import send_scheduled_messages
from ._base import SitemessageCommand


def _priority(value: str) -> int:
    import argparse
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f'priority must be a whole number, got {value!r}') from None
    if number < 0:
        raise argparse.ArgumentTypeError(f'priority must not be negative, got {value!r}')
    return number


class Command(SitemessageCommand):

    help = 'Sends scheduled messages (both in pending and error statuses).'
    verb = 'send'

    def add_arguments(self, parser: CommandParser):
        parser.add_argument(
            '--priority', action='store', dest='priority', default=None, type=_priority,
            help='Allows to filter scheduled messages by a priority number. Defaults to None.')

    def run(self, priority=None, **options):
        priority_str = f'with priority {priority} ' if priority is not None else ''
        self.stdout.write(f'Sending scheduled messages {priority_str} ...\n')
        progress = Progress(self.stdout, options.get('verbosity', 1))
        try:
            report = send_scheduled_messages(priority=priority, progress=progress)
        finally:
            progress.done()
        self.stdout.write('Sending done.\n')
        self.stdout.write(f'{report}\n')
