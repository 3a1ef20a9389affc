"""docs/quickstart.rst, followed in a new project: its code blocks and commands, as written.

The steps run in a temporary directory with this test's Python (where django-sitemessage is
installed). Only the port of the local SMTP server changes: the test's aiosmtpd server listens on a
free port instead of 8025. The install step (pip) is left out.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parent.parent / 'docs' / 'quickstart.rst'


def blocks(kind: str) -> list:
    """The ``.. code-block:: <kind>`` contents of the quickstart, in order, dedented."""
    text = DOC.read_text()
    found = []
    for match in re.finditer(rf'\.\. code-block:: {kind}\n\n((?:    .*\n|\n)+)', text):
        found.append('\n'.join(line[4:] for line in match.group(1).splitlines()).strip() + '\n')
    return found


def commands() -> list:
    return [line[2:] for block in blocks('console') for line in block.splitlines() if line.startswith('$ ')]


def run(args, cwd, env):
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f'{args}\n{result.stdout}\n{result.stderr}'
    return result


@pytest.fixture
def project_env():
    env = {key: value for key, value in os.environ.items() if key != 'DJANGO_SETTINGS_MODULE'}
    env['PATH'] = f'{Path(sys.executable).parent}{os.pathsep}{env.get("PATH", "")}'
    return env


def test_quickstart_runs_as_written_in_a_new_project(tmp_path, smtp_server, project_env):
    settings_block, sitemessages_block, urls_block, relay_block = blocks('python')
    steps = commands()
    python = sys.executable
    assert steps[:4] == [
        'python3 -m venv .venv',
        '. .venv/bin/activate',
        'pip install django-sitemessage aiosmtpd',
        'django-admin startproject mysite',
    ]

    # 2. A project and an application
    run([python, '-m', 'django', 'startproject', 'mysite'], tmp_path, project_env)
    project = tmp_path / 'mysite'
    assert steps[4:6] == ['cd mysite', 'python manage.py startapp notifications']
    run([python, 'manage.py', 'startapp', 'notifications'], project, project_env)

    # 3. Settings: the two applications into INSTALLED_APPS, the other lines appended.
    settings_file = project / 'mysite' / 'settings.py'
    settings = settings_file.read_text()
    apps = re.findall(r"^    '(\w+)',$", settings_block, re.M)
    assert apps == ['sitemessage', 'notifications']
    settings = settings.replace(
        "    'django.contrib.staticfiles',\n]",
        "    'django.contrib.staticfiles',\n" + ''.join(f"    '{a}',\n" for a in apps) + ']',
    )
    settings += '\n' + settings_block.split(']\n', 1)[1]
    settings_file.write_text(settings)

    # 4. The messenger (the test server's port), 5. URLs.
    assert 'port=8025' in sitemessages_block
    (project / 'notifications' / 'sitemessages.py').write_text(
        sitemessages_block.replace('port=8025', f'port={smtp_server.port}')
    )
    (project / 'mysite' / 'urls.py').write_text(urls_block)

    # 5. and 6.: the manage.py commands, in their order.
    manage = [shlex.split(step) for step in steps if step.startswith('python manage.py') and 'startapp' not in step]
    assert [args[2] for args in manage] == ['migrate', 'check', 'shell', 'sitemessage_send_scheduled']
    outputs = {}
    for args in manage[:4]:
        outputs[args[2]] = run([python, *args[1:]], project, project_env)

    assert 'System check identified no issues' in outputs['check'].stdout
    assert 'Sent: 1, errors: 0, failed: 0' in outputs['sitemessage_send_scheduled'].stdout
    (mail,) = smtp_server.handler.messages()
    assert (mail['To'], mail['Subject'], mail['From']) == ('ann@example.com', 'Hello', 'robot@mysite.example')
    assert 'Hello from sitemessage.' in mail.get_content()
    assert '<http://127.0.0.1:8000/messages/unsubscribe/' in mail['List-Unsubscribe']  # SITE_URL and URLs

    # 7. The cron line, with the paths filled in, sends what is scheduled since.
    run(
        [python, *shlex.split(steps[steps.index('python manage.py sitemessage_send_scheduled') - 1])[1:]],
        project,
        project_env,
    )  # schedule one more
    (cron,) = blocks('text')
    command = (
        cron.split('* * * * * ', 1)[1]
        .strip()
        .replace('/path/to/mysite', str(project))
        .replace('/path/to/.venv/bin/python', python)
    )
    by_cron = run(['sh', '-c', command], tmp_path, project_env)
    assert 'Sent: 1, errors: 0, failed: 0' in by_cron.stdout
    assert len(smtp_server.handler.messages()) == 2

    # 8. The relay configuration imports and builds as written (no relay is reachable from here).
    assert 'use_tls=True' in relay_block and "os.environ['SITEMESSAGE_SMTP_PASSWORD']" in relay_block
    (project / 'notifications' / 'sitemessages.py').write_text(relay_block)
    relay = run(
        [
            python,
            'manage.py',
            'shell',
            '-c',
            'from sitemessage.toolbox import get_registered_messenger_object as get; m = get("smtp"); '
            'print(m.host, m.port, m.use_tls, m.login, m.from_email)',
        ],
        project,
        {**project_env, 'SITEMESSAGE_SMTP_PASSWORD': 'secret'},
    )
    assert relay.stdout.split()[-5:] == [
        'smtp.your-provider.example',
        '587',
        'True',
        'robot@mysite.example',
        'robot@mysite.example',
    ]


def test_quickstart_check_warns_without_a_site_url(tmp_path, project_env):
    python = sys.executable
    run([python, '-m', 'django', 'startproject', 'mysite'], tmp_path, project_env)
    settings_file = tmp_path / 'mysite' / 'mysite' / 'settings.py'
    settings_file.write_text(
        settings_file.read_text().replace(
            "    'django.contrib.staticfiles',\n]", "    'django.contrib.staticfiles',\n    'sitemessage',\n]"
        )
    )

    checked = run([python, 'manage.py', 'check'], tmp_path / 'mysite', project_env)

    assert 'sitemessage.W001' in checked.stderr and 'undefined-domain.local' in checked.stderr
