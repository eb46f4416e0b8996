"""`python -m pgolf` is the same as the `pgolf` console script."""

from pgolf.cli import main

raise SystemExit(main())
