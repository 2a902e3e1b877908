"""`python -m services.trainer <subcommand>`: see `services.trainer.cli.main`."""

import sys

from services.trainer.cli.main import main

sys.exit(main())
