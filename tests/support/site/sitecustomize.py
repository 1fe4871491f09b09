"""Python imports this at start-up in every process whose ``PYTHONPATH`` names this folder (``hooks.environ``): it
installs the tests' wrappers (``support.hooks``). Tests only; never on the path of a user's run."""

import sys
from pathlib import Path

sys.path.append(str(Path(__file__).resolve().parents[2]))  # tests/: the support package
from support import hooks  # noqa: E402

hooks.install()
