"""`python -m consumer` is the `cloudtrail-detector` command."""

import sys

from consumer.cli import main

sys.exit(main())
