"""Self-signed certificates for the TLS peers of the tests (SMTP with STARTTLS or TLS, Prosody)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Optional, Tuple

import pytest

EC_KEY = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1']
RSA_KEY = ['-newkey', 'rsa:2048']


def self_signed(
    folder: Path, name: str, common_name: str, san: Optional[str] = None, key_options=EC_KEY
) -> Tuple[str, str]:
    """Write ``<name>.pem`` and ``<name>.key`` (valid two days) in ``folder``; return their paths.

    Skips the test when the ``openssl`` binary is missing (Debian package ``openssl``).
    """
    openssl = shutil.which('openssl')
    if openssl is None:
        pytest.skip('the openssl binary is needed to make test certificates (Debian package `openssl`)')
    cert, key = folder / f'{name}.pem', folder / f'{name}.key'
    command = [openssl, 'req', '-x509', *key_options, '-nodes', '-keyout', str(key), '-out', str(cert)]
    command += ['-days', '2', '-subj', f'/CN={common_name}']
    if san:
        command += ['-addext', f'subjectAltName={san}']
    subprocess.run(command, check=True, capture_output=True, timeout=60)
    return str(cert), str(key)
