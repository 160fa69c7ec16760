"""``python -m largekernel`` (also what ``torchrun -m largekernel`` runs)."""

from largekernel.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
