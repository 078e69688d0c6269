"""``python -m manifold_nas`` (and ``torchrun -m manifold_nas``) is the ``manifold-nas`` command."""

import sys

from manifold_nas.cli import main

sys.exit(main())
