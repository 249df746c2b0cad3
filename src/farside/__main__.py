"""``python -m farside``: the same as the ``farside`` command."""

import sys

from .cli import main

sys.exit(main())
