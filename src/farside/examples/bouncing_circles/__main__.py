"""``python -m farside.examples.bouncing_circles``: serve the bouncing circles."""

import sys

from .server import main

sys.exit(main())
