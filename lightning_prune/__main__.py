"""``python -m lightning_prune`` is the ``lightning-prune`` command."""

import sys

from lightning_prune.cli import main

sys.exit(main())
