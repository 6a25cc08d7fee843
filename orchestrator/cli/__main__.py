"""`python -m orchestrator.cli`: the `saga` command without its console script."""

import sys

from orchestrator.cli import main

sys.exit(main())
