import json

from django.core.management import CommandError
from django.core.management.base import CommandParser

from ...queue_status import QueueStatus, format_age, format_table, get_queue_status
from ._base import SitemessageCommand

# Exit status when a threshold is exceeded: 1 is "could not run", 2 a usage error (argparse).
THRESHOLD_EXCEEDED = 3


def _non_negative(kind):
    def parse(value: str):
        import argparse

        try:
            number = kind(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f'expected a non-negative number, got {value!r}') from None
        if number < 0:
            raise argparse.ArgumentTypeError(f'expected a non-negative number, got {value!r}')
        return number

    return parse


# option -> (what is compared, how it is described)
THRESHOLDS = {
    'max_oldest_age': (lambda totals: totals.oldest_due_age or 0.0, 'oldest due dispatch age {value}s'),
    'max_pending': (lambda totals: totals.waiting, '{value} dispatches waiting'),
    'max_errors': (lambda totals: totals.errors_last_hour, '{value} failed attempts in the last hour'),
    'max_failed': (lambda totals: totals.failed_last_hour, '{value} dispatches failed in the last hour'),
}


def exceeded_thresholds(status: QueueStatus, limits: dict) -> list:
    """Describe each threshold of ``limits`` (option name -> limit or None) that ``status`` exceeds."""
    totals = status.totals
    problems = []
    for option, (measure, description) in THRESHOLDS.items():
        limit = limits.get(option)
        if limit is None:
            continue
        value = measure(totals)
        if option == 'max_oldest_age':
            value = round(value, 1)
        if value > limit:
            problems.append(f'{description.format(value=value)} > --{option.replace("_", "-")} {limit:g}')
    unprepared = limits.get('max_unprepared')
    if unprepared is not None and status.awaiting_preparation > unprepared:
        problems.append(
            f'{status.awaiting_preparation} messages waiting for prepare_dispatches() > --max-unprepared {unprepared}'
        )
    return problems


class Command(SitemessageCommand):
    help = (
        'Shows the delivery queue: dispatches by status and messenger, the age of the oldest due one, '
        'errors and failures in the last hour, messages waiting for prepare_dispatches(). '
        f'Exits with status {THRESHOLD_EXCEEDED} when a --max-* threshold is exceeded.'
    )
    verb = 'status'

    def add_arguments(self, parser: CommandParser):
        parser.add_argument('--json', action='store_true', dest='as_json', help='Print the status as JSON.')
        parser.add_argument(
            '--max-oldest-age',
            type=_non_negative(float),
            metavar='SECONDS',
            help='Exceeded when the oldest due dispatch has waited longer than this.',
        )
        parser.add_argument(
            '--max-pending',
            type=_non_negative(int),
            metavar='N',
            help='Exceeded when more dispatches wait (pending, processing, error).',
        )
        parser.add_argument(
            '--max-errors',
            type=_non_negative(int),
            metavar='N',
            help='Exceeded when more delivery attempts failed in the last hour.',
        )
        parser.add_argument(
            '--max-failed',
            type=_non_negative(int),
            metavar='N',
            help='Exceeded when more dispatches failed (gave up) in the last hour.',
        )
        parser.add_argument(
            '--max-unprepared',
            type=_non_negative(int),
            metavar='N',
            help='Exceeded when more messages wait for prepare_dispatches().',
        )

    def handle(self, *args, **options):
        self.problems = []
        super().handle(*args, **options)
        if self.problems:
            raise CommandError(f'Thresholds exceeded: {"; ".join(self.problems)}', returncode=THRESHOLD_EXCEEDED)

    def run(self, as_json=False, **options):
        status = get_queue_status()
        self.problems = exceeded_thresholds(status, options)
        if as_json:
            self.stdout.write(json.dumps({**status.as_dict(), 'problems': self.problems}, indent=2))
            return
        self.stdout.write(f'Delivery queue at {status.checked_at:%Y-%m-%d %H:%M:%S %Z}')
        if status.messengers:
            for line in format_table(status):
                self.stdout.write(line)
        else:
            self.stdout.write('No dispatches waiting, none failed.')
        totals = status.totals
        self.stdout.write(f'Oldest due dispatch: {format_age(totals.oldest_due_age)}')
        self.stdout.write(f'Messages waiting for prepare_dispatches(): {status.awaiting_preparation}')
        for problem in self.problems:
            self.stdout.write(self.style.ERROR(f'Threshold exceeded: {problem}'))
