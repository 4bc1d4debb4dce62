"""The Embedding value, its file formats, and the placeholder vectors spliced into the text encoders."""

from .embedding import Embedding

__all__ = ["Embedding"]
