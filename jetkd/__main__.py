"""``python -m jetkd`` (also what ``torchrun -m jetkd`` runs)."""

from jetkd.cli import main

raise SystemExit(main())
