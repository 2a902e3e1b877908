"""`python -m services.trainer <subcommand>`: see `services.trainer.cli`."""

import sys

from services.trainer.cli import main

sys.exit(main())
