"""``python -m sim``: one simulation run (see :mod:`sim.run`)."""

import sys

from sim.run import main

sys.exit(main())
