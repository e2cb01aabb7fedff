"""``python -m medbatch``: the same as the ``medbatch`` script."""

from medbatch.cli import main

main()
