"""What titk still does differently from the trainer its semantics copy, for one config.

`titk plan` prints each line; docs/user-guide.md ("The two semantics") lists them all. A difference that
depends on a setting is listed only when that setting is in use.
"""

from __future__ import annotations

from ..config import SEMANTICS_DEFAULTS, TrainConfig

RANDOM_DRAWS = (
    "random draws (data order, noise, timesteps, latent samples) come from titk's own generators, seeded "
    "per step: the same rules as {who}, not the same numbers"
)


def differences(config: TrainConfig) -> list[str]:
    out = _a1111(config) if config.train.semantics == "a1111" else _kohya(config)
    if config.embedding.norm == "vocab":
        who = "A1111" if config.train.semantics == "a1111" else "kohya"
        out.append(f"embedding.norm vocab: each vector is held at its encoder's vocabulary median norm after every update; {who} lets norms grow")
    return out


def _a1111(config: TrainConfig) -> list[str]:
    out = [RANDOM_DRAWS.format(who="A1111")]
    dtype = config.semantic("model", "dtype")
    if dtype != "fp16":
        out.append(f"A1111 runs the model under fp16 autocast with a GradScaler; titk runs it in {dtype}")
    if config.train.resolved("clip_mode") != "none":
        out.append("clipping acts on unscaled gradients; A1111 clips the GradScaler's scaled ones, far harder than the threshold says")
    if config.data.use_alpha:
        out.append("alpha weights: a uniform alpha gives 1 (A1111: NaN) and the map is resized as (w, h) (A1111 swaps them)")
    if config.resize in ("crop", "buckets"):
        out.append(f"data.resize {config.resize}: A1111 has no crop or buckets; it stretches, or keeps native sizes")
    return out


def _kohya(config: TrainConfig) -> list[str]:
    out = [
        RANDOM_DRAWS.format(who="kohya"),
        "a name that already is a vocabulary entry (such as person) is trained; kohya's add_tokens refuses it",
        "checkpoints are named <name>-N; kohya names them <name>-step0000000N",
    ]
    if config.resize in ("crop", "buckets"):
        out.append("shrinking uses PIL's box filter for kohya's cv2 INTER_AREA (the same average for whole-number factors)")
    else:
        out.append(f"data.resize {config.resize}: kohya never stretches or keeps native sizes; it crops (or buckets)")
    if config.latent_sampling == "deterministic":
        out.append("data.latent_sampling deterministic: kohya has no posterior-mean latents (random is its default, once its --cache_latents)")
    if config.train.resolved("clip_mode") == "value":
        out.append("train.clip_mode value: kohya clips only by norm (--max_grad_norm)")
    if config.template != SEMANTICS_DEFAULTS["kohya"]["template"]:
        out.append(f"data.template {config.template}: kohya's prompt is the caption (or one of its own ImageNet templates)")
    return out
