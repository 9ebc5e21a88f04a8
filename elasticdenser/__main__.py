import sys

from elasticdenser.cli import main

sys.exit(main())
