"""``python -m manifold_nas`` (and ``torchrun -m manifold_nas``) is the ``manifold-nas`` command.

SIGTERM raises from the first line on, and a Ctrl-C or SIGTERM while the
command line itself is imported is the same one line and exit status as in
:func:`manifold_nas.cli.main` (which answers it from there on).
"""

import os
import sys

try:
    from manifold_nas.run.interrupts import raise_on_sigterm, restore_sigterm

    _previous = raise_on_sigterm()
    from manifold_nas.cli import main
except KeyboardInterrupt as err:
    # by name: the interrupted import may not have defined the class
    _terminated = type(err).__name__ == "Terminated"
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or os.environ.get("RANK", "0") == "0":
        print(
            f"manifold-nas: interrupted ({'SIGTERM' if _terminated else 'SIGINT'})", file=sys.stderr
        )
    sys.exit(143 if _terminated else 130)
try:
    _status = main()
finally:
    restore_sigterm(_previous)
sys.exit(_status)
