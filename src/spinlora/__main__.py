"""``python -m spinlora`` = the ``spinlora`` command."""
import sys

from .cli import main

sys.exit(main())
