"""``python -m l2ood`` — same as the ``l2ood`` command (and what ``torchrun -m l2ood`` runs)."""

from .cli.main import main

raise SystemExit(main())
