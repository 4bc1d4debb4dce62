"""CLIP scores with open_clip: CLIP-T (prompt fidelity) and CLIP-I (similarity to the dataset).

CLIP-T is the cosine between an image and its prompt with the embedding's name removed ("a photo of
[name] on the beach" → "a photo of  on the beach"), as in the TI paper; CLIP-I is the mean cosine between
an image and each dataset image. The default judge is ViT-B-32 with OpenAI's weights, for comparability with the
literature; a second, independent model can be added (SD1.5's own text encoder is CLIP ViT-L, so ViT-L
judges TI inside the space it was optimised in).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from ...errors import TitkError, first_line
from ...hashing import sha256_file
from . import References, Sample, ScoreResult, Scorer


class ClipModel:
    def __init__(self, model: str, pretrained: str | None, device: str | torch.device, batch_size: int):
        import open_clip

        self.model_name, self.pretrained, self.batch_size = model, pretrained, batch_size
        self.device = torch.device(device)
        weights = Path(pretrained).expanduser() if pretrained else None
        if weights is not None and not weights.exists() and (pretrained.endswith((".bin", ".pt", ".pth", ".safetensors")) or "/" in pretrained):
            raise TitkError(f"clip.pretrained: {pretrained}: no such weights file")
        previous = logging.root.manager.disable
        logging.disable(logging.WARNING)  # open_clip logs through the root logger, and loudly
        try:
            self.model, _, self.preprocess = open_clip.create_model_and_transforms(model, pretrained=pretrained, device=self.device)
        except RuntimeError as exc:
            if "download" in str(exc).lower() or "hub" in str(exc).lower():
                raise TitkError(
                    f"clip: weights {model}/{pretrained} are not on disk and the hub cannot provide them; set clip.pretrained "
                    "to a local weights file (open_clip .bin/.safetensors), or null for random weights (plumbing tests only)"
                ) from None
            raise TitkError(f"clip: cannot build {model}/{pretrained}: {first_line(exc)}") from None
        except Exception as exc:  # an unknown model name, a wrong weights file ...
            raise TitkError(f"clip: cannot build {model}/{pretrained}: {first_line(exc, 200)}") from None
        finally:
            logging.disable(previous)
        self.model.eval().requires_grad_(False)
        self.tokenizer = open_clip.get_tokenizer(model)
        self.key = f"{model}/{pretrained}"

    @torch.no_grad()
    def image_features(self, images) -> np.ndarray:
        out = []
        for i in range(0, len(images), self.batch_size):
            batch = torch.stack([self.preprocess(img.convert("RGB")) for img in images[i : i + self.batch_size]]).to(self.device)
            out.append(torch.nn.functional.normalize(self.model.encode_image(batch).float(), dim=-1).cpu())
        return torch.cat(out).numpy() if out else np.zeros((0, 1), np.float32)

    @torch.no_grad()
    def text_features(self, texts: list[str]) -> np.ndarray:
        out = []
        for i in range(0, len(texts), self.batch_size):
            tokens = self.tokenizer(texts[i : i + self.batch_size]).to(self.device)
            out.append(torch.nn.functional.normalize(self.model.encode_text(tokens).float(), dim=-1).cpu())
        return torch.cat(out).numpy() if out else np.zeros((0, 1), np.float32)

    def protocol(self) -> dict:
        info = {"clip_model": self.model_name, "clip_pretrained": self.pretrained or "none (random weights)"}
        if self.pretrained and Path(self.pretrained).is_file():
            info["clip_weights_sha256"] = sha256_file(self.pretrained)[:16]
        return info


class ClipScorer(Scorer):
    name = "clip"

    def __init__(self, clip: ClipModel, suffix: str = ""):
        self.clip, self.suffix = clip, suffix

    def prepare(self, refs: References, ctx) -> None:
        self.ref_features = ctx.features(self.clip, "references", refs.dataset)  # CLIP-I: likeness to the images trained on

    def score(self, samples: list[Sample], ctx) -> ScoreResult:
        images = ctx.features(self.clip, "samples", [s.image for s in samples])
        texts = self.clip.text_features([s.clean_prompt for s in samples])
        clip_t = (images * texts).sum(1)
        clip_i = (images @ self.ref_features.T).mean(1) if len(self.ref_features) else np.full(len(samples), np.nan)
        t, i = f"clip_t{self.suffix}", f"clip_i{self.suffix}"
        rows = [{t: float(a), i: float(b)} for a, b in zip(clip_t, clip_i)]
        summary = {t: float(np.mean(clip_t)), i: float(np.mean(clip_i))}
        for kind in sorted({s.kind for s in samples}):
            picked = [a for a, s in zip(clip_t, samples) if s.kind == kind]
            summary[f"{t}@{kind}"] = float(np.mean(picked))
        return ScoreResult(rows, summary)

    def protocol(self) -> dict:
        return {f"clip{self.suffix}": {**self.clip.protocol(), "clip_t_text": "prompt with the name removed"}}
