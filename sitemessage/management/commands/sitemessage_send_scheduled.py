from django.core.management.base import CommandParser

from ...delivery.run import send_scheduled_messages
from ...progress import Progress
from ._base import EXIT_STATUSES_HELP, UNKNOWN_ALIAS_ERRORS, SitemessageCommand
from ._outcome import add_outcome_arguments, exit_with_outcome, prepare, unreachable_lines, waiting_lines


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
    epilog = EXIT_STATUSES_HELP
    verb = 'send'
    could_not_run_errors = UNKNOWN_ALIAS_ERRORS

    def add_arguments(self, parser: CommandParser):
        parser.add_argument(
            '--priority',
            action='store',
            dest='priority',
            default=None,
            type=_priority,
            help='Allows to filter scheduled messages by a priority number. Defaults to None.',
        )
        add_outcome_arguments(
            parser,
            'Run prepare_dispatches() first: create the dispatches of messages scheduled '
            'without recipients, for their current subscribers.',
        )

    def run(self, priority=None, prepare_first=None, ok_on_errors=False, **options):
        priority_str = f'with priority {priority} ' if priority is not None else ''
        self.stdout.write(f'Sending scheduled messages {priority_str} ...\n')
        if prepare_first:
            prepare(self.stdout)
        progress = Progress(self.stdout, options.get('verbosity', 1))
        try:
            report = send_scheduled_messages(priority=priority, progress=progress)
        finally:
            progress.done()
        self.stdout.write('Sending done.\n')
        self.stdout.write(f'{report}\n')
        waiting, unknown_types = waiting_lines(prepare_first)
        for line in [*unreachable_lines(report), *waiting]:
            self.stdout.write(f'{line}\n')
        exit_with_outcome(report, ok_on_errors, unknown_types)
