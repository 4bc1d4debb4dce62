"""The toy world's scorers, through the same interfaces as the real ones: its vision model stands in for
insightface (identity) and for zero-shot CLIP (personality)."""

from __future__ import annotations

import numpy as np
import torch

from ...config import IdentitySettings
from ...toyworld.vision import HEADS, ToyVision, load_vision, to_tensor
from ...toyworld.world import IDENTITY_ATTRIBUTES, PERSONALITY_ATTRIBUTES
from ..metrics import normalise
from .identity import Face, FaceEmbedder
from .personality import AttributeClassifier

class ToyFaceEmbedder(FaceEmbedder):
    """A "face" when the vision model sees a person; its embedding the identity-attribute probabilities,
    so the cosine of two faces is about the share of identity attributes they have in common."""

    name = "toyworld"
    # A toy face has no pose, expression or light: every image of a person has the same face, and what a TI
    # can copy from its training images is their look (clothing, background, framing).
    copy_space = "the vision model's identity and look probabilities"

    def __init__(self, vision: ToyVision, threshold: float):
        self.vision = vision
        self.threshold = threshold

    @torch.no_grad()
    def faces(self, image) -> list[Face]:
        out = self.vision(to_tensor([image]))
        person = float(out["person"].softmax(-1)[0, 1])
        if person < self.threshold:
            return []
        parts = [out[name].softmax(-1)[0].numpy() for name in IDENTITY_ATTRIBUTES]
        emb = normalise(np.concatenate(parts)).astype(np.float32)
        look = [out[name].softmax(-1)[0].numpy() for name in PERSONALITY_ATTRIBUTES]
        whole = normalise(np.concatenate(parts + look)).astype(np.float32)
        return [Face((0.0, 0.0, float(image.width), float(image.height)), person, emb, whole)]

    @torch.no_grad()
    def attributes(self, image) -> dict[str, str]:
        out = self.vision(to_tensor([image]))
        return {name: HEADS[name][int(out[name][0].argmax())] for name in HEADS}

    def protocol(self) -> dict:
        return {"face_model": "toy world vision model (identity-attribute probabilities)", "det_thresh": self.threshold,
                "embedding_dim": sum(len(v) for v in IDENTITY_ATTRIBUTES.values())}


class ToyAttributeClassifier(AttributeClassifier):
    def __init__(self, vision: ToyVision):
        self.vision = vision
        self.label_sets = {name: list(labels) for name, labels in PERSONALITY_ATTRIBUTES.items()}

    @torch.no_grad()
    def probabilities(self, images, ctx, key):
        out = self.vision(to_tensor(images))
        return {name: out[name].softmax(-1).numpy() for name in self.label_sets}

    def protocol(self):
        return {"classifier": "toy world vision model", "label_sets": self.label_sets}


def toy_scorers(identity: IdentitySettings) -> tuple[ToyFaceEmbedder, ToyAttributeClassifier]:
    """The toy world's face embedder (detection threshold from the identity settings) and attribute model."""
    vision = load_vision()
    return ToyFaceEmbedder(vision, identity.det_thresh), ToyAttributeClassifier(vision)
