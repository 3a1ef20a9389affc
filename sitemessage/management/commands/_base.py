"""Shared behaviour of sitemessage commands: report errors on stderr and exit with a documented status.

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


def add_outcome_arguments(parser, prepare_help: str) -> None:
    """``--prepare`` and ``--ok-on-errors``: shared by the send command and the worker."""
    parser.add_argument('--prepare', action='store_true', dest='prepare_first', default=None, help=prepare_help)
    parser.add_argument(
        '--ok-on-errors', action='store_true', dest='ok_on_errors', default=False,
        help='Exit 0 even if some dispatches errored or failed (they are in the dispatch log; '
             'errored ones are retried later).')


def prepare(stdout) -> None:
    """Run ``prepare_dispatches()``; a message of an unknown type is left waiting, the others are prepared."""
    from ...sending import prepare_dispatches
    prepared = prepare_dispatches(ignore_unknown_message_types=True)
    stdout.write(f'Prepared dispatches: {len(prepared)}.\n')


def waiting_lines(prepared: bool):
    """What still waits for ``prepare_dispatches()`` (one COUNT query), and unknown types found there."""
    from ...sending import count_waiting_for_preparation
    waiting = count_waiting_for_preparation()
    if not waiting:
        return [], set()
    if not prepared:
        return [f'{waiting} message(s) wait for prepare_dispatches(): run with --prepare.'], set()
    from ...models import Message
    from ...utils import get_registered_message_types
    known = get_registered_message_types()
    unknown = {cls for cls in Message.get_without_dispatches().values_list('cls', flat=True).distinct()
               if cls not in known}
    lines = [f'{waiting} message(s) scheduled without recipients still wait: no subscribers yet'
             + (f', or of unknown type: {", ".join(sorted(unknown))}' if unknown else '') + '.']
    return lines, unknown


def unreachable_lines(report):
    for alias, reason in sorted(report.unreachable_messengers.items()):
        yield f'Could not connect: {alias}: {reason}'


def exit_with_outcome(report, ok_on_errors: bool, unknown_types=()) -> None:
    """Raise the ``CommandError`` of a non-zero status for ``report``; return for status 0."""
    unreachable = report.unreachable_messengers
    if unreachable:
        raise CommandError(
            f'could not connect: {", ".join(sorted(unreachable))} (exit status {EXIT_COULD_NOT_RUN})',
            returncode=EXIT_COULD_NOT_RUN)
    if unknown_types:
        raise CommandError(
            f'messages of unknown type wait for prepare_dispatches(): {", ".join(sorted(unknown_types))} '
            f'(exit status {EXIT_COULD_NOT_RUN})', returncode=EXIT_COULD_NOT_RUN)
    if (report.errors or report.failed) and not ok_on_errors:
        raise CommandError(
            f'{report.errors} dispatch(es) errored (retried later), {report.failed} failed '
            f'(exit status {EXIT_DISPATCH_ERRORS}; --ok-on-errors exits 0)', returncode=EXIT_DISPATCH_ERRORS)
