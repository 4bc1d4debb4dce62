"""How much compute does a study need to reach the best? Plain TPE against pruning plus cross-initialisation.

In the toy world (titk/toyworld/proofs.py: held-out person 0, 15 images, batch 4, A1111 semantics), Optuna's
TPE searches the learning rate (1e-4 to 1, log) and the vectors (1, 2, 4, 8); the objective is the toy identity
of "a photo of ohwx" at 8 seeds, as the proofs measure it. Two kinds of study, each run from several study seeds:

- plain: TPE, every trial trained the full 120 steps, no pruning, token-row initialisation (what titk did before);
- fast: TPE, titk's pruning policy (`objective.pruner`, default halving with `reduction_factor` 3) on an
  intermediate identity at 4 of the 8 seeds every 30 steps, and `embedding.cross_init` searched as well.

The target is what the best setting any study found gives reproducibly, less the seed noise: that setting is
trained again from 4 training seeds, and the target is their mean less their standard deviation (the best
single value is partly luck: a trial of it reached 0.68 where its repeats averaged 0.57). A study's cost is the compute it spent until its
first trial at or above the target, counted in UNet forward passes of one image (a training view costs 3: the
forward and a backward of twice its cost; a sampled image 40: 20 steps with CFG), so that the count does not
depend on what else the machine runs; wall seconds are shown too. A study that never gets there is shown as
"not reached" with its whole cost. The ratio is of the medians over study seeds. About 4 minutes per plain
study on two quiet threads. `--space images` searches the planted dataset instead (titk/toyworld/planted.py: 3 of
15 close-ups show another person), each image's use as well as the settings, as `subset.include_flags` does.
Usage:

    .venv/bin/python benchmarks/study_cost_toy.py [--study-seeds 1 2 3] [--trials 12] [--pruner halving] [--steps 120 --rung 30] [--space images]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

BATCH = 4
VIEW, IMAGE = 3, 40  # UNet forward passes of one image: a training view, a sampled image (20 steps, CFG)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--study-seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--steps", type=int, default=120, help="a full trial's training steps")
    parser.add_argument("--rung", type=int, default=30, help="steps between intermediate evaluations (the first rung)")
    parser.add_argument("--pruner", choices=["halving", "hyperband"], default="halving")
    parser.add_argument("--space", choices=["settings", "images"], default="settings",
                        help="images: the planted dataset (3 of 15 images another person), each image's use searched too")
    args = parser.parse_args()
    steps, rung = args.steps, args.rung

    import optuna

    from titk.config import ObjectiveSettings
    from titk.models import load_model
    from titk.sweep.pruning import Pruning
    from titk.toyworld.planted import IMAGES, write_planted_study
    from titk.toyworld.proofs import proof_config, write_skewed
    from toy_identity import identity_scorer
    from titk.train.loop import train

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    bundle = load_model("toyworld", dtype="fp32")
    images = args.space == "images"
    prompt = "a close-up photo of ohwx" if images else "a photo of ohwx"  # the planted dataset's images are close-ups
    identity = identity_scorer(bundle, prompt=prompt)
    intermediate = identity_scorer(bundle, prompt=prompt, seeds=(1, 2, 3, 4))
    pruning = Pruning(ObjectiveSettings(pruner=args.pruner, eval_every=rung))

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if images:
            write_planted_study(tmp / "planted", 1)
            data = tmp / "planted" / "data"
        else:
            data = write_skewed(tmp / "data", {}, 0.0)
        cache = tmp / "cache"

        def chosen_data(params: dict, out: Path) -> Path:
            """The images a trial uses: all, or (--space images) those whose flag it drew, copied beside its run."""
            names = [name for name in IMAGES if params.get(f"include:{name}", True)]
            if len(names) == len(IMAGES):
                return data
            (out / "data").mkdir(parents=True, exist_ok=True)
            for name in names:
                for ext in (".png", ".txt"):
                    shutil.copy(data / name.replace(".png", ext), out / "data")
            return out / "data"

        def config(params: dict, out: Path, seed: int = 0):
            embedding = {"vectors": params["vectors"], "cross_init": params.get("cross_init", False)}
            return proof_config(chosen_data(params, out), out, embedding, max_steps=steps, batch_size=BATCH, learning_rate=f"{params['lr']:.6g}", seed=seed)

        def study(kind: str, seed: int) -> list[tuple[float, float, float | None, str]]:
            """(compute and seconds since the study began, final objective or None when pruned, state) per trial."""
            fast = kind == "fast"
            s = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=seed),
                                    pruner=pruning.optuna_pruner() if fast else optuna.pruners.NopPruner())
            began, rows, spent = time.monotonic(), [], [0]

            def objective(trial: optuna.Trial) -> float:
                params = {"lr": trial.suggest_float("lr", 1e-4, 1.0, log=True), "vectors": trial.suggest_categorical("vectors", [1, 2, 4, 8])}
                if fast:
                    params["cross_init"] = trial.suggest_categorical("cross_init", [False, True])
                if images:  # as titk's subset.include_flags searches them; fewer than 4 images is not trained
                    params |= {f"include:{name}": trial.suggest_categorical(f"include:{name}", [True, False]) for name in IMAGES}
                    if sum(params[f"include:{name}"] for name in IMAGES) < 4:
                        rows.append((spent[0], time.monotonic() - began, None, "pruned"))
                        raise optuna.TrialPruned()

                def report(event) -> None:
                    if event.kind != "update":
                        return
                    spent[0] += VIEW * BATCH  # every update of 15 images at batch 4 trains 4 views
                    if fast and event.step % rung == 0 and event.step < steps:
                        spent[0] += IMAGE * len(intermediate.seeds)
                        pruning.check_intermediate(trial, float(intermediate(event.embedding).mean()), event.step)

                try:
                    result = train(config(params, tmp / f"{kind}-{seed}-{trial.number}"), bundle=bundle, show_progress=False,
                                   latent_cache=cache, callback=report)
                except optuna.TrialPruned:
                    rows.append((spent[0], time.monotonic() - began, None, "pruned"))
                    raise
                value = float(identity(result.embedding).mean())
                spent[0] += IMAGE * len(identity.seeds)
                rows.append((spent[0], time.monotonic() - began, value, "complete"))
                return value

            s.optimize(objective, n_trials=args.trials)
            best = s.best_trial
            print(f"{kind} study seed {seed}: {spent[0] / 1000:.0f}k passes, {time.monotonic() - began:.0f} s, {sum(r[3] == 'pruned' for r in rows)} pruned, "
                  f"best {best.value:.3f} at {describe(best.params)}; values {[None if r[2] is None else round(r[2], 3) for r in rows]}", flush=True)
            studies_best.append((best.value, best.params))
            return rows

        studies_best: list = []
        runs = {(kind, seed): study(kind, seed) for seed in args.study_seeds for kind in ("plain", "fast")}
        best_value, best_params = max(studies_best, key=lambda b: b[0])
        repeats = [float(identity(train(config(best_params, tmp / f"repeat-{s}", seed=s), bundle=bundle, show_progress=False,
                                        latent_cache=cache).embedding).mean()) for s in range(1, 5)]
        noise = statistics.stdev(repeats)
        target = statistics.mean(repeats) - noise
        print(f"\nbest {best_value:.3f} at {describe(best_params)}; again from 4 training seeds: "
              f"{', '.join(f'{r:.3f}' for r in repeats)} (sd {noise:.3f}); target {target:.3f}\n")

        print("| study seed | plain TPE: compute to target (seconds) | trials | fast: compute to target (seconds) | trials (pruned) |")
        print("|---|---|---|---|---|")
        costs = {"plain": [], "fast": []}
        for seed in args.study_seeds:
            cells = []
            for kind in ("plain", "fast"):
                rows = runs[(kind, seed)]
                hit = next((i for i, r in enumerate(rows) if r[2] is not None and r[2] >= target), None)
                compute, seconds = rows[hit if hit is not None else -1][:2]
                costs[kind].append(compute)
                used = rows[: (hit if hit is not None else len(rows) - 1) + 1]
                pruned = sum(r[3] == "pruned" for r in used)
                cost = f"{compute / 1000:.1f}k ({seconds:.0f} s)"
                cells += [cost if hit is not None else f"not reached: {cost}", f"{len(used)}" + (f" ({pruned})" if kind == "fast" else "")]
            print(f"| {seed} | " + " | ".join(cells) + " |")
        plain, fast = statistics.median(costs["plain"]), statistics.median(costs["fast"])
        print(f"\nmedian compute to target (thousands of UNet image passes): plain {plain / 1000:.1f}, fast {fast / 1000:.1f}: "
              f"{plain / fast:.1f}x less")


def describe(params: dict) -> str:
    """A trial's settings, its image flags as the images left out (the planted ones: 003, 008, 013)."""
    left_out = [name.removeprefix("include:") for name, used in params.items() if name.startswith("include:") and not used]
    shown = {name: value for name, value in params.items() if not name.startswith("include:")}
    return f"{shown}" + (f", without {', '.join(left_out) or 'none'}" if len(shown) < len(params) else "")


if __name__ == "__main__":
    main()
