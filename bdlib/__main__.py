import sys

from bdlib.runner.cli import main

sys.exit(main())
