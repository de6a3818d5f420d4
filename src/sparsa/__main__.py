"""``python -m sparsa`` runs the command line."""

import sys

from sparsa.cli import main

sys.exit(main())
