"""`python -m phaselm`: the command line."""

from .cli import main

main()
