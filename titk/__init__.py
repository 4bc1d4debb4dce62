"""titk: a research toolkit for Textual Inversion on Stable Diffusion."""

__version__ = "0.1.0"
