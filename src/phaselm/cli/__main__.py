"""`python -m phaselm.cli` (and `accelerate launch -m phaselm.cli …`)."""

from . import main

main()
