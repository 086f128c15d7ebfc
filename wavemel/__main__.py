"""``python -m wavemel`` (also what ``torchrun -m wavemel`` runs)."""

from wavemel.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
