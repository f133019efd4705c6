"""``python -m messagebus.outbox migrate DSN [--schema S] [--table-prefix P]``."""

import sys

from ._cli import main

sys.exit(main())
