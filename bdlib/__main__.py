import sys

from bdlib.run import main

sys.exit(main())
