from django.core.management.base import CommandParser

from ...metrics import start_metrics_server
from ...worker import Worker
from ._base import SitemessageCommand
from .sitemessage_send_scheduled import _priority


class Command(SitemessageCommand):

    help = ('Sends scheduled messages continuously: sleeps while the queue is empty '
            '(wakes at once on PostgreSQL), stops cleanly on SIGTERM.')
    verb = 'work'

    def add_arguments(self, parser: CommandParser):
        parser.add_argument('--priority', action='store', dest='priority', default=None, type=_priority,
                            help='Only send messages of this priority.')
        parser.add_argument('--idle', action='store', dest='idle', default=None, type=float,
                            help='Seconds to sleep when the queue is empty (SITEMESSAGE_WORKER_IDLE_SECONDS).')
        parser.add_argument('--passes', action='store', dest='passes', default=None, type=int,
                            help='Stop after this many delivery passes (default: run until stopped).')

    def run(self, priority=None, idle=None, passes=None, **options):
        worker = Worker(priority=priority, idle_seconds=idle, max_passes=passes,
                        report=lambda report: self.stdout.write(f'{report}\n'))
        worker.install_signal_handlers()
        start_metrics_server()
        self.stdout.write('Worker started.\n')
        totals = worker.run()
        self.stdout.write(f'Worker stopped. {totals}\n')
