import sys

from lsvcr.assets.cli import main

sys.exit(main())
