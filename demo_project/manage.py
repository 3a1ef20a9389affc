#!/usr/bin/env python
"""Django's command-line utility for the sitemessage demo project."""

import os
import sys
from pathlib import Path

if __name__ == '__main__':
    # Lets the demo run from a clone even when sitemessage is not installed into the environment.
    sys.path.append(str(Path(__file__).resolve().parent.parent))
    os.environ.setdefault('DJANGO_SETTINGS_MODULE', 'demo_project.settings')
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)
