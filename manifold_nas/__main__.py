import sys

from manifold_nas.cli import main

sys.exit(main())
