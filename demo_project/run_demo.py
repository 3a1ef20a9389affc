#!/usr/bin/env python
"""Run the demo (``make demo``): migrate, create the demo users, then start the SMTP sink,
the sender (``sitemessage_worker --prepare``) and ``runserver 127.0.0.1:$PORT``. Ctrl-C stops all of them."""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
PORT = os.environ.get('PORT', '8000')
SMTP_PORT = os.environ.get('DEMO_SMTP_PORT', '2525')
ENV = {**os.environ, 'PORT': PORT, 'DEMO_SMTP_PORT': SMTP_PORT, 'PYTHONUNBUFFERED': '1'}


def manage(*args):
    subprocess.run([sys.executable, 'manage.py', *args], cwd=HERE, env=ENV, check=True)


def start(*args):
    # A session of its own, so stopping a helper also stops its children (runserver's reloader).
    return subprocess.Popen([sys.executable, *args], cwd=HERE, env=ENV, start_new_session=True)


def port_is_open(port):
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(('127.0.0.1', int(port))) == 0


def stop(processes):
    for process in processes:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
    deadline = time.monotonic() + 5
    for process in processes:
        try:
            process.wait(max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)


def _interrupt(*_args):
    raise KeyboardInterrupt


def main():
    for port, what in ((PORT, 'PORT'), (SMTP_PORT, 'DEMO_SMTP_PORT')):
        if port_is_open(port):
            sys.exit(f'Port {port} on 127.0.0.1 is already in use: set {what} to a free port.')
    # Ctrl-C (even when started with SIGINT ignored, as background jobs are) and SIGTERM stop everything.
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)

    manage('migrate', '--noinput', '--verbosity', '0')
    manage('demo_setup')
    processes = []
    try:
        sink = start('mail_sink.py')
        processes.append(sink)
        while not port_is_open(SMTP_PORT):
            if sink.poll() is not None:
                sys.exit('The SMTP sink could not start (see above).')
            time.sleep(0.1)
        # What cron would do with `sitemessage_send_scheduled --prepare`, every few seconds.
        processes.append(start('manage.py', 'sitemessage_worker', '--prepare'))
        processes.append(start('manage.py', 'runserver', f'127.0.0.1:{PORT}'))
        print(
            f'\n  Demo: http://127.0.0.1:{PORT}/   (admin: http://127.0.0.1:{PORT}/admin/, demo / demo)\n'
            '  Press Ctrl-C to stop.\n',
            flush=True,
        )
        while all(process.poll() is None for process in processes):
            time.sleep(0.5)
        sys.exit('A demo process stopped unexpectedly (see above); stopping the others.')
    except KeyboardInterrupt:
        print('\nStopping the demo ...', flush=True)
    finally:
        stop(processes)


if __name__ == '__main__':
    main()
