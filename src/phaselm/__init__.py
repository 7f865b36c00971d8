"""PhaseLM: Kuramoto oscillator dynamics inside language models, measured honestly."""

__version__ = "0.1.0"
