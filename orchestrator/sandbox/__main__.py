"""``python -m orchestrator.sandbox``: run the fake TikTok in the foreground."""

import sys

from .cli import main

sys.exit(main())
