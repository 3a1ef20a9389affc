"""Shared behaviour of sitemessage commands: report errors on stderr and exit non-zero."""
import traceback

from django.core.management import BaseCommand, CommandError


class SitemessageCommand(BaseCommand):
    """Runs :meth:`run`; any failure is written as ``Error on <verb>: <error>`` and exits with status 1."""

    verb = ''

    def handle(self, *args, **options):
        try:
            self.run(**options)
        except Exception as error:
            self.stderr.write(self.style.ERROR(f'Error on {self.verb}: {error}\n{traceback.format_exc()}'))
            raise CommandError(f'{self.verb} failed: {error}', returncode=1) from error

    def run(self, **options):
        raise NotImplementedError(f'{type(self).__name__} must implement run()')
