"""``python -m dwivae.cli``: the ``dwivae`` command."""
import sys

from dwivae.cli import main

sys.exit(main())
