"""``python -m vqzoo.cli`` runs the ``vqzoo`` command (used by torchrun and DDP tests)."""

import sys

from vqzoo.cli import main

sys.exit(main())
