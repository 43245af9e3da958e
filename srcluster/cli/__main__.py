"""`python -m srcluster.cli ...`: the `srcluster` command without its console script (tests, subprocesses)."""

import sys

from srcluster.cli import main

sys.exit(main())
