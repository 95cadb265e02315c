"""`python -m server.deployment.certificates`: the old name of `python -m deployment.certificates`."""

import sys

from deployment.certificates import main

if __name__ == "__main__":
    sys.exit(main())
