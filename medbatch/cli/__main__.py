"""``python -m medbatch.cli``: the same as the ``medbatch`` script."""

from medbatch.cli import main

main()
