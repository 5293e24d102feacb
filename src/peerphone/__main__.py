"""`python -m peerphone` is the `peerphone` command."""

import sys

from peerphone.cli import main

sys.exit(main())
