"""One connection to a server that does not offer PIPELINING: sitemessage against plain smtplib.

Run from the repository root::

    .venv/bin/python benchmarks/no_pipelining.py [--db sqlite|postgres] [--emails 1500] [--reps 5]

Many test and corporate relays do not offer PIPELINING; there every e-mail costs four round trips
(MAIL, RCPT, DATA, content), and what the sender does between them decides its rate. The script
uses ``compare.py``'s sink (aiosmtpd processes answering at once) and its children: plain smtplib
sending pre-formatted e-mails with the same headers, then sitemessage sending the same number from
its queue with ``pipelining=False``, both as it does now (the connection on a thread of its own, so
the database work between batches overlaps the sending) and as it did before (on the loop's
thread), runs interleaved. It prints msgs/s of each run, the best and median ratio, and a cProfile
of one more run of each sitemessage way in buckets (own time per module group, all threads),
which shows where the sender's time goes. The target (issue 14, item 5): >= 0.95x plain smtplib.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

from compare import LIBS, Bench, Sink, load, pg_available, progress  # benchmarks/ is first on sys.path

CONTENDERS = {  # key: (label, library, settings of the child)
    'raw': ('plain smtplib', 'raw', None),
    'ours': ('sitemessage, pipelining=False', 'ours', {'BENCH_SMTP_PIPELINING': False}),
    'inline': (
        "the same, on the loop's thread (before)",
        'ours',
        {'BENCH_SMTP_PIPELINING': False, 'BENCH_OWN_THREAD': False},
    ),
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--db', choices=('sqlite', 'postgres'), default='sqlite')
    parser.add_argument('--emails', type=int, default=1500)
    parser.add_argument('--reps', type=int, default=5)
    parser.add_argument('--no-profile', action='store_true', help='skip the profiled run')
    args = parser.parse_args()
    if args.db == 'postgres' and (problem := pg_available()):
        print(f'PostgreSQL is not reachable at 127.0.0.1:5432: {problem}', file=sys.stderr)
        return 1
    if not LIBS['ours'].ensure():
        print(LIBS['ours'].error, file=sys.stderr)
        return 1
    rates: dict = {key: [] for key in CONTENDERS}
    buckets: dict = {}
    with tempfile.TemporaryDirectory(prefix='sm-no-pipelining-') as workdir:
        sink = Sink().start()
        bench = Bench(args.db, argparse.Namespace(quick=True), sink, Path(workdir), ['ours'])
        try:
            bench.create_databases()
            for rep in range(args.reps):
                for key in list(CONTENDERS) if rep % 2 == 0 else reversed(CONTENDERS):
                    label, lib, settings = CONTENDERS[key]
                    progress(f'{label}: {args.emails} e-mails, run {rep + 1} of {args.reps}')
                    rates[key].append(bench.send_once(lib, args.emails, settings=settings)['rate'])
            for key in () if args.no_profile else ('ours', 'inline'):
                label, lib, settings = CONTENDERS[key]
                progress(f'{label} under cProfile')
                buckets[key] = bench.send_once(lib, args.emails, profile=True, settings=settings)['buckets']
        finally:
            bench.drop_databases()
            sink.stop()
    print(f'\n{args.emails} e-mails over 1 connection, server without PIPELINING, {args.db}, {load()}')
    raw_best, raw_median = max(rates['raw']), statistics.median(rates['raw'])
    for key, (label, _lib, _settings) in CONTENDERS.items():
        runs = ' '.join(f'{rate:.0f}' for rate in rates[key])
        best, median = max(rates[key]), statistics.median(rates[key])
        ratios = '' if key == 'raw' else f'  {best / raw_best:.3f}x / {median / raw_median:.3f}x raw (best / median)'
        print(f'  {label:<42} best {best:6.0f}/s  median {median:6.0f}/s{ratios}  runs: {runs}')
    ratio = max(rates['ours']) / raw_best
    print(f'  target: >= 0.95x plain smtplib (best of runs): {ratio:.3f}x {"PASS" if ratio >= 0.95 else "FAIL"}')
    for key, found in buckets.items():
        total = sum(found.values())
        print(f'\n  {CONTENDERS[key][0]}: cProfile own time of all its threads, {total:.2f} s in all')
        for name, seconds in sorted(found.items(), key=lambda item: -item[1]):
            print(f'    {name:<50} {seconds:6.3f} s  {seconds / total:6.1%}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
