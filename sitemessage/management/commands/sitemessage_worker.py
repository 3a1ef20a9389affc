from django.core.management.base import CommandParser

from ...background.worker import Worker
from ...delivery.run import SendReport
from ...metrics import start_metrics_server
from ._base import EXIT_STATUSES_HELP, UNKNOWN_ALIAS_ERRORS, SitemessageCommand
from ._outcome import add_outcome_arguments, exit_with_outcome, unreachable_lines, waiting_lines
from .sitemessage_send_scheduled import _priority


class Command(SitemessageCommand):
    help = (
        'Sends scheduled messages continuously: sleeps while the queue is empty\n'
        '(wakes at once when a message is scheduled: SITEMESSAGE_WAKEUP), stops cleanly on SIGTERM.\n'
        'Stopped by SIGTERM or SIGINT it exits 0; with --passes it exits as\n'
        'sitemessage_send_scheduled does, judging all its passes.'
    )
    epilog = EXIT_STATUSES_HELP
    verb = 'work'
    could_not_run_errors = UNKNOWN_ALIAS_ERRORS

    def add_arguments(self, parser: CommandParser):
        parser.add_argument(
            '--priority',
            action='store',
            dest='priority',
            default=None,
            type=_priority,
            help='Only send messages of this priority.',
        )
        parser.add_argument(
            '--idle',
            action='store',
            dest='idle',
            default=None,
            type=float,
            help='Seconds to sleep when the queue is empty (SITEMESSAGE_WORKER_IDLE_SECONDS).',
        )
        parser.add_argument(
            '--passes',
            action='store',
            dest='passes',
            default=None,
            type=int,
            help='Stop after this many delivery passes (default: run until stopped).',
        )
        add_outcome_arguments(
            parser, 'Run prepare_dispatches() before each pass (SITEMESSAGE_WORKER_PREPARE_DISPATCHES).'
        )

    def run(self, priority=None, idle=None, passes=None, prepare_first=None, ok_on_errors=False, **options):
        totals = SendReport()

        def report(pass_report: SendReport) -> None:
            totals.merge(pass_report)
            self.stdout.write(f'{pass_report}\n')

        worker = Worker(
            priority=priority, idle_seconds=idle, max_passes=passes, report=report, prepare=prepare_first or None
        )
        worker.install_signal_handlers()
        start_metrics_server()
        self.stdout.write('Worker started.\n')
        worker.run()
        self.stdout.write(f'Worker stopped. {totals}\n')
        if worker.stop_event.is_set():
            return  # stopped on request: not a failure
        waiting, unknown_types = waiting_lines(worker.prepare)
        for line in [*unreachable_lines(totals), *waiting]:
            self.stdout.write(f'{line}\n')
        exit_with_outcome(totals, ok_on_errors, unknown_types)
