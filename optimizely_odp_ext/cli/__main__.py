"""``python -m optimizely_odp_ext.cli``: the ``optimizely-odp`` command."""

import sys

from optimizely_odp_ext.cli.app import main

if __name__ == "__main__":
    sys.exit(main())
