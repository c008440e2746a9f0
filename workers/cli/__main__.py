"""``python -m workers.cli``: the same entry point as the ``drflow`` console script."""

from workers.cli.main import main

main()
