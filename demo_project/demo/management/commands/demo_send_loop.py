import time
import traceback

from django.conf import settings
from django.core.management.base import BaseCommand
from django.db import close_old_connections

from sitemessage.toolbox import prepare_dispatches, send_scheduled_messages


class Command(BaseCommand):
    help = ('Runs what cron would run every few seconds: prepare dispatches for subscribers, '
            'then send scheduled messages (as `manage.py sitemessage_send_scheduled`).')

    def add_arguments(self, parser):
        parser.add_argument('--interval', type=float, default=settings.DEMO_SEND_INTERVAL)

    def handle(self, *args, interval=3, **options):
        self.stdout.write(f'Sender loop: sending scheduled messages every {interval:g} s.')
        try:
            while True:
                close_old_connections()
                try:
                    prepared = prepare_dispatches()
                    report = send_scheduled_messages()
                except Exception:
                    self.stderr.write(f'Sender loop: error on send:\n{traceback.format_exc()}')
                else:
                    if prepared or report.batches:
                        self.stdout.write(f'Sender loop: prepared {len(prepared)} dispatch(es). {report}')
                time.sleep(interval)
        except KeyboardInterrupt:
            pass
