"""``python -m tinybuild`` is the same as the ``tinybuild`` command."""

from .cli import main

raise SystemExit(main())
