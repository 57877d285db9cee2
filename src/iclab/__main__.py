"""``python -m iclab`` runs the CLI (same as the ``iclab`` command)."""

import sys

from iclab.cli import main

sys.exit(main())
