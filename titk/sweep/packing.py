"""Packed trials: a worker asks Optuna for several trials at once and trains them together.

A TI trains a few rows of the text encoder's table; the UNet, which costs nearly all of a step, is frozen
and shared. At batch 1 to 3 one trial leaves a large GPU mostly idle, so `sweep.pack: K` trains K trials
at once: every micro-batch step makes one UNet call over all of their micro-batches (train/loop.py,
`train_together`), and each trial keeps its own vectors, optimizer, schedule, data order and random draws,
so its result equals what it would have been alone, within rounding. Each trial runs its own body
(trial.py, `TrialObjective.run`) up to the training it needs; the trainings are run together, and each
body goes on to its scoring. A trial pruned, failed or done leaves the group while the others go on.

Optuna's ask/tell does what `optimize` does for one trial: the trials are asked for in turn (TPE with
the constant liar, so that trials asked together are not all alike), their heartbeats are kept on RDB
storages while they run, and each is told complete, pruned or failed, then passed to the callbacks.
"""

from __future__ import annotations

import time
from contextlib import ExitStack

import optuna
from optuna.storages._heartbeat import get_heartbeat_thread  # what `optimize` keeps for each running trial
from optuna.trial import TrialState

from ..devices import release_gpu_memory
from ..train import loop as training


def optimize_packed(study: optuna.Study, objective, pack: int, *, wanted, callbacks, timeout: float | None, bundle,
                    catch: tuple[type[Exception], ...] = (), show_progress: bool = True) -> None:
    """Run groups of up to `pack` trials while `wanted()` (how many more trials the study needs; 0 once a
    callback has stopped it) is above 0 and `timeout` seconds have not passed. A failure that `optimize`
    would not catch (anything not in `catch`: a full disk, Ctrl-C) is raised once every trial of its group
    is told."""
    began = time.monotonic()
    while (k := min(pack, wanted())) > 0:
        if timeout is not None and time.monotonic() - began > timeout:
            return
        trials = [study.ask() for _ in range(k)]
        with ExitStack() as beats:
            for trial in trials:
                beats.enter_context(get_heartbeat_thread(trial._trial_id, study._storage))
            outcomes = run_together([objective.run(t) for t in trials], bundle, show_progress)
        for trial, (state, value) in zip(trials, outcomes):
            frozen = study.tell(trial, value if state == TrialState.COMPLETE else None, state=state)
            for callback in callbacks:
                callback(study, frozen)
        release_gpu_memory()
        raised = [value for state, value in outcomes if state == TrialState.FAIL and not isinstance(value, catch)]
        if raised:
            raise raised[0]


def run_together(bodies: list, bundle, show_progress: bool = True) -> list[tuple[TrialState, object]]:
    """Drive trial bodies side by side: each time every live body has yielded its next training job, the
    jobs are trained together and each result (or exception) is sent back into its body. Returns each
    body's (state, value): COMPLETE and its objective, PRUNED, or FAIL and the exception."""
    outcomes: list = [None] * len(bodies)
    pending: dict[int, object] = {}  # body index -> the job it waits on
    interrupted = False

    def advance(i: int, send=None, throw: BaseException | None = None) -> None:
        nonlocal interrupted
        try:
            pending[i] = bodies[i].throw(throw) if throw is not None else bodies[i].send(send)
        except StopIteration as done:
            outcomes[i] = (TrialState.COMPLETE, done.value)
        except optuna.TrialPruned as exc:
            outcomes[i] = (TrialState.PRUNED, exc)
        except (Exception, KeyboardInterrupt) as exc:  # noqa: BLE001  the body recorded its reason on the trial
            outcomes[i] = (TrialState.FAIL, exc)
            interrupted = interrupted or isinstance(exc, KeyboardInterrupt)

    for i in range(len(bodies)):
        advance(i)
    while pending:
        group = sorted(pending)
        jobs = [pending.pop(i) for i in group]
        if interrupted:  # Ctrl-C during a body's scoring: the others close their runs too, untrained
            results = [KeyboardInterrupt()] * len(jobs)
        else:
            results = [None] * len(jobs)
            packs: dict[tuple, list[int]] = {}  # jobs that can share the UNet's calls
            for j, job in enumerate(jobs):
                packs.setdefault(training.pack_key(job.config), []).append(j)
            for members in packs.values():
                try:
                    trained = training.train_together([jobs[j] for j in members], bundle=bundle, show_progress=show_progress)
                except KeyboardInterrupt as exc:  # every body closes its run and records the interruption
                    trained = [exc] * len(members)
                for j, result in zip(members, trained):
                    results[j] = result
        for i, result in zip(group, results):
            if interrupted:  # Ctrl-C during an earlier body's scoring: this one stops too, without scoring
                result = KeyboardInterrupt()
            advance(i, throw=result) if isinstance(result, BaseException) else advance(i, send=result)
    return outcomes
