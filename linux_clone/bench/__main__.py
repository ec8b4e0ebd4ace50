"""python -m linux_clone.bench [--quick] [--json | --markdown] [--plot FILE.png]"""

import sys

from . import main

if __name__ == "__main__":
    sys.exit(main())
