"""`python -m fastgan ...` is the `fastgan` command."""

from fastgan.cli import main

raise SystemExit(main())
