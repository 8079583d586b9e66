"""``python -m taskmap``: the ``taskmap`` command."""

from .cli import main

raise SystemExit(main())
