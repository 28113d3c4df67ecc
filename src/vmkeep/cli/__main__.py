"""``python -m vmkeep.cli``: the same as the ``vmkeep`` console script."""

from vmkeep.cli.main import run

run()
