"""`python -m exporter ...` is the same as the `mlmon` command."""

from exporter.cli import main

raise SystemExit(main())
