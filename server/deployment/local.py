"""`python -m server.deployment.local`: the old name of `python -m deployment.local`."""

import sys

from deployment.local import main

if __name__ == "__main__":
    sys.exit(main())
