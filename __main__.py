"""``python -m edgesight`` is the same as the ``edgesight`` command."""
import sys

from .cli import main

sys.exit(main())
