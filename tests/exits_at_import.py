"""A user's module that exits while it is imported (for `--model exits_at_import:make`)."""

import sys

sys.exit(3)
