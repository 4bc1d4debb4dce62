"""titk: a research toolkit for Textual Inversion on Stable Diffusion.

What notebooks and scripts call, importable from here (loaded on first use, so `import titk` stays light):

    import titk
    bundle = titk.load_model("sd15.safetensors")
    config = titk.load_train_config("my.yaml", dataset="photos/")
    result = titk.train_embedding(config, bundle=bundle)           # an Embedding in result.embedding
    evaluator = titk.build_evaluator(bundle, titk.EvalSettings(), titk.load_references("photos/", 64))
    # better: photos not trained on, and the training folder (identity against them, and the copy index)
    refs = titk.held_out_references("heldout/", "photos/", 64)
    card = evaluator.evaluate(result.embedding)
    titk.write_embedding(result.embedding, "me.safetensors", "safetensors")
    study = titk.load_study("work/me")                            # trials as pandas, curves from MLflow
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "TrainConfig": "titk.config", "SweepConfig": "titk.config", "EvalSettings": "titk.config",
    "load_train_config": "titk.config", "load_sweep_config": "titk.config",
    "load_model": "titk.models", "Embedding": "titk.embeddings",
    "read_embedding": "titk.embeddings.formats", "write_embedding": "titk.embeddings.formats",
    "load_dataset": "titk.train.trainee", "make_plan": "titk.train.plan", "train_embedding": "titk.train.loop",
    "build_evaluator": "titk.evaluate.evaluator", "load_references": "titk.evaluate.evaluator",
    "held_out_references": "titk.evaluate.evaluator",
    "run_sweep": "titk.sweep.runner", "load_study": "titk.analysis",
}
__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str):
    if name in _EXPORTS:  # `train_embedding`: `titk.train` is the subpackage
        return getattr(importlib.import_module(_EXPORTS[name]), "train" if name == "train_embedding" else name)
    raise AttributeError(f"module 'titk' has no attribute {name!r}")
