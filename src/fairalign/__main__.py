"""`python -m fairalign` (also what `accelerate launch -m fairalign` runs)."""
from fairalign.cli import main

raise SystemExit(main())
