"""One ``schedule_email()`` per call, as a view makes it: sitemessage 2.0 beside django-sitemessage 1.4.0.

Run from the repository root::

    .venv/bin/python benchmarks/schedule_one.py [--db postgres|sqlite] [--calls 2000] [--reps 5]

Each repetition runs ``--calls`` separate ``schedule_email(text, address, subject=...)`` calls in
autocommit (each its own transaction, as in a view without ``ATOMIC_REQUESTS``) in a fresh process
of each library, alternating the libraries so that both see the same machine. It prints the median
microseconds per call (wall clock, and the CPU time of the scheduling process, which another
load on the machine disturbs less), the ratios to 1.4.0, and the SQL statements per call that Django executed
(``connection.execute_wrapper``; both libraries also open and commit one transaction per call,
which is not a statement Django reports). The 1.4.0 baseline runs in its own virtualenv
(``benchmarks/.venv-sitemessage-1.4.0``, created with pip on first use, as ``compare.py`` does).
The target (issue 14, item 5): at most 1.4.0's statements and time.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

from compare import LIBS, Run, load, pg_admin, pg_available, progress  # benchmarks/ is first on sys.path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--db', choices=('postgres', 'sqlite'), default='postgres')
    parser.add_argument('--calls', type=int, default=2000)
    parser.add_argument('--reps', type=int, default=5)
    parser.add_argument(
        '--psycopg2',
        action='store_true',
        help='run ours on psycopg2, the driver of the 1.4.0 baseline (pip install it)',
    )
    args = parser.parse_args()
    if args.db == 'postgres' and (problem := pg_available()):
        print(f'PostgreSQL is not reachable at 127.0.0.1:5432: {problem}', file=sys.stderr)
        return 1
    libs = ['ours', 'sm140']
    for key in libs:
        if not LIBS[key].ensure():
            print(LIBS[key].error, file=sys.stderr)
            return 1
    with tempfile.TemporaryDirectory(prefix='sm-schedule-one-') as workdir:
        run = Run(args.db, Path(workdir), port=0)
        try:
            for key in libs:
                if args.db == 'postgres':
                    pg_admin(f'DROP DATABASE IF EXISTS {run.db(key)["name"]} WITH (FORCE)')
                    pg_admin(f'CREATE DATABASE {run.db(key)["name"]}')
                run.child(key, 'migrate', timeout=600)
            results: dict = {key: [] for key in libs}
            for rep in range(args.reps):
                for key in libs if rep % 2 == 0 else reversed(libs):
                    progress(f'{key}: {args.calls} calls, repetition {rep + 1} of {args.reps}')
                    settings = {'BENCH_PSYCOPG2': True} if args.psycopg2 and key == 'ours' else {}
                    result = run.child(key, 'schedule_one', n=args.calls, settings=settings)
                    if result['rows'] != args.calls:
                        raise SystemExit(f'{key}: {result["rows"]} dispatches written, expected {args.calls}')
                    results[key].append(result)
        finally:
            if args.db == 'postgres':
                for key in libs:
                    pg_admin(f'DROP DATABASE IF EXISTS {run.db(key)["name"]} WITH (FORCE)')
    print(f'\n{args.calls} separate schedule_email() calls in autocommit on {args.db}, {args.reps} runs each, {load()}')
    old = statistics.median(r['seconds'] for r in results['sm140'])
    old_cpu = statistics.median(r['cpu'] for r in results['sm140'])
    print(
        f'{"library":<28} {"µs per call":>12} {"all runs (s)":>36} {"x 1.4.0":>8} '
        f'{"client CPU µs/call":>19} {"x 1.4.0":>8} {"statements/call":>16}'
    )
    for key in libs:
        seconds = [r['seconds'] for r in results[key]]
        median = statistics.median(seconds)
        cpu = statistics.median(r['cpu'] for r in results[key])
        per_call = results[key][-1]['statements'] / args.calls
        print(
            f'{LIBS[key].label:<28} {median / args.calls * 1e6:>12.1f} {" ".join(f"{s:.3f}" for s in seconds):>36} '
            f'{median / old:>8.3f} {cpu / args.calls * 1e6:>19.1f} {cpu / old_cpu:>8.3f} {per_call:>16.2f}'
        )
    ours = results['ours'][-1]['statements'] / args.calls
    theirs = results['sm140'][-1]['statements'] / args.calls
    ratio = statistics.median(r['seconds'] for r in results['ours']) / old
    verdict = 'PASS' if ours <= theirs and ratio <= 1.0 else 'FAIL'
    print(f'target: statements <= 1.4.0 ({ours:.2f} vs {theirs:.2f}) and time <= 1.0x 1.4.0 ({ratio:.3f}x): {verdict}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
