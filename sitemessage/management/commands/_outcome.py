"""What a send run tells its operator: the lines after its summary and its exit status (see _base)."""

from __future__ import annotations

from typing import Iterable, Iterator, List, Set, Tuple

from django.core.management import CommandError
from django.core.management.base import CommandParser

from ...delivery.run import SendReport, count_waiting_for_preparation, prepare_dispatches
from ...models import Message
from ...registry import get_registered_message_types
from ._base import EXIT_COULD_NOT_RUN, EXIT_DISPATCH_ERRORS


def add_outcome_arguments(parser: CommandParser, prepare_help: str) -> None:
    """``--prepare`` and ``--ok-on-errors``: shared by the send command and the worker."""
    parser.add_argument('--prepare', action='store_true', dest='prepare_first', default=None, help=prepare_help)
    parser.add_argument(
        '--ok-on-errors',
        action='store_true',
        dest='ok_on_errors',
        default=False,
        help='Exit 0 even if some dispatches errored or failed (they are in the dispatch log; '
        'errored ones are retried later).',
    )


def prepare(stdout) -> None:
    """Run ``prepare_dispatches()``; a message of an unknown type is left waiting, the others are prepared."""
    prepared = prepare_dispatches(ignore_unknown_message_types=True)
    stdout.write(f'Prepared dispatches: {len(prepared)}.\n')


def waiting_lines(prepared: bool) -> Tuple[List[str], Set[str]]:
    """What still waits for ``prepare_dispatches()`` (one COUNT query), and unknown types found there."""
    waiting = count_waiting_for_preparation()
    if not waiting:
        return [], set()
    if not prepared:
        return [f'{waiting} message(s) wait for prepare_dispatches(): run with --prepare.'], set()
    known = get_registered_message_types()
    unknown = {
        cls for cls in Message.get_without_dispatches().values_list('cls', flat=True).distinct() if cls not in known
    }
    lines = [
        f'{waiting} message(s) scheduled without recipients still wait: no subscribers yet'
        + (f', or of unknown type: {", ".join(sorted(unknown))}' if unknown else '')
        + '.'
    ]
    return lines, unknown


def unreachable_lines(report: SendReport) -> Iterator[str]:
    """One line per messenger that could not connect for any of its dispatches, with the reason."""
    for alias, reason in sorted(report.unreachable_messengers.items()):
        yield f'Could not connect: {alias}: {reason}'


def exit_with_outcome(report: SendReport, ok_on_errors: bool, unknown_types: Iterable[str] = ()) -> None:
    """Raise the ``CommandError`` of a non-zero status for ``report``; return for status 0."""
    unreachable = report.unreachable_messengers
    if unreachable:
        raise CommandError(
            f'could not connect: {", ".join(sorted(unreachable))} (exit status {EXIT_COULD_NOT_RUN})',
            returncode=EXIT_COULD_NOT_RUN,
        )
    if unknown_types:
        raise CommandError(
            f'messages of unknown type wait for prepare_dispatches(): {", ".join(sorted(unknown_types))} '
            f'(exit status {EXIT_COULD_NOT_RUN})',
            returncode=EXIT_COULD_NOT_RUN,
        )
    if (report.errors or report.failed) and not ok_on_errors:
        raise CommandError(
            f'{report.errors} dispatch(es) errored (retried later), {report.failed} failed '
            f'(exit status {EXIT_DISPATCH_ERRORS}; --ok-on-errors exits 0)',
            returncode=EXIT_DISPATCH_ERRORS,
        )
