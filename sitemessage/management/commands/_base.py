"""Shared behaviour of sitemessage commands: report errors on stderr and exit with a documented status.

The statuses of a send run are decided in ``_outcome``.

Exit statuses (see docs/commands.rst):

* 0 -- all due work done;
* 1 -- the command failed: a bad option value, a configuration or database error (Django's
  ``CommandError``); 2 is argparse's usage error (an unknown option);
* 3 -- could not run: a messenger could not connect for any of its dispatches (connection
  refused, timeout, TLS or AUTH refused), or a dispatch names an unknown messenger or message type;
* 4 -- some dispatches errored (retried later) or failed (given up); ``--ok-on-errors`` makes it 0.
"""

import traceback
from argparse import RawDescriptionHelpFormatter

from django.core.management import BaseCommand, CommandError
from django.core.management.base import DjangoHelpFormatter

from ...exceptions import UnknownMessageTypeError, UnknownMessengerError

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_COULD_NOT_RUN = 3
EXIT_DISPATCH_ERRORS = 4

EXIT_STATUSES_HELP = """exit status:
  0  all due work done
  1  the command failed (a bad option value, configuration, database)
  2  usage error (an unknown option)
  3  could not run: a messenger could not connect for any of its dispatches (refused,
     timeout, TLS or AUTH refused), or an unknown messenger or message type
  4  some dispatches errored (retried later) or failed (given up); 0 with --ok-on-errors"""


class _HelpFormatter(RawDescriptionHelpFormatter, DjangoHelpFormatter):
    """Keeps the exit status table (the epilog) as written."""


# A dispatch names a messenger or message type this project does not register: no delivery can help.
UNKNOWN_ALIAS_ERRORS = (UnknownMessengerError, UnknownMessageTypeError)


class SitemessageCommand(BaseCommand):
    """Runs :meth:`run`; a failure is written as ``Error on <verb>: <error>`` and exits non-zero.

    Errors of the kinds in ``could_not_run_errors`` exit with status 3, anything else with 1. A
    ``CommandError`` raised by :meth:`run` carries its own status and message.
    """

    verb = ''
    could_not_run_errors: tuple = ()
    epilog = ''  # shown after the options by --help

    def create_parser(self, prog_name, subcommand, **kwargs):
        parser = super().create_parser(prog_name, subcommand, **kwargs)
        if self.epilog:
            parser.epilog = self.epilog
            parser.formatter_class = _HelpFormatter
        return parser

    def handle(self, *args, **options):
        try:
            self.run(**options)
        except CommandError:
            raise
        except Exception as error:
            self.stderr.write(self.style.ERROR(f'Error on {self.verb}: {error}\n{traceback.format_exc()}'))
            returncode = EXIT_COULD_NOT_RUN if isinstance(error, self.could_not_run_errors) else EXIT_FAILED
            raise CommandError(f'{self.verb} failed: {error}', returncode=returncode) from error

    def run(self, **options):
        raise NotImplementedError(f'{type(self).__name__} must implement run()')
