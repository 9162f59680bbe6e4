"""``python -m padim.cli ...``: the ``padim`` command (as in padim-toolkit 0.1, whose scripts call it so)."""

import sys

from padim.cli.main import main

sys.exit(main())
