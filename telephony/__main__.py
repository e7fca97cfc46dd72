"""``python -m telephony`` runs handoffctl."""

import sys

from telephony.cli import handoffctl_main

sys.exit(handoffctl_main())
