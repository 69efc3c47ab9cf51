import sys

from sim.search.cli import main

sys.exit(main())
