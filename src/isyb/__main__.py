"""``python -m isyb``: the same as the ``isyb`` command."""

import sys

from isyb.cli import main

sys.exit(main())
