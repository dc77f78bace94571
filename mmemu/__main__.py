"""`python -m mmemu ...` runs the `mmemu` command."""
import sys

from .cli import main

sys.exit(main())
