"""Model families, loading and offline fixtures."""

from .bundle import ModelBundle, TextEncoderSlot
from .families import Conditioning, Family
from .loading import bundle_from_pipeline, load_model

__all__ = ["Conditioning", "Family", "ModelBundle", "TextEncoderSlot", "bundle_from_pipeline", "load_model"]
