import sys

from sim.cluster.cli import main

sys.exit(main())
