"""`python -m bigmodel.train ...` = `bigmodel train ...` (see cli.py)."""
import sys

from .cli import main

sys.exit(main())
