"""`python -m bigmodel ...` = the `bigmodel` command (see bigmodel/cli.py)."""
import sys

from .cli import main

sys.exit(main())
