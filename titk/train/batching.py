"""Which images each optimizer update sees, and what its loss is divided by, under A1111's or kohya's rules.

A1111 (`dataset.py` + `textual_inversion.py`):
  batch size and GA are clamped: bs' = min(bs, n), ga' = min(ga, n // bs'). A pass has n // bs' batches
  (shuffled; the n % bs' images that do not fill a batch sit out that pass). Updates use ga' consecutive
  batches and never cross a pass: batches past the last whole group are skipped. Loss ÷ ga'.
kohya (accelerate): no clamp. Each image appears `repeats` times per pass; a size bucket's last partial
  batch is kept. An update every GA micro-batches, and a forced one at the end of each pass even if the
  group is short; the loss is always divided by the full GA, so such an update is weaker.

The order of each pass is drawn from a generator seeded by (seed, pass index) alone, so any update's
micro-batches can be rebuilt from its step number: resuming needs no saved data-loader state.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from functools import lru_cache


def pass_rng(seed: int, pass_index: int) -> random.Random:
    return random.Random(f"titk:{seed}:pass:{pass_index}")


@dataclass
class Update:
    batches: list[list[int]]  # image indices per micro-batch
    divisor: int  # each micro-batch's loss is divided by this
    pass_index: int

    @property
    def views(self) -> int:
        return sum(len(b) for b in self.batches)


class Batching:
    """Common shape of both rules: passes of micro-batches grouped into updates."""

    semantics: str
    batch_size: int  # effective
    grad_accum: int  # effective
    micro_per_pass: int  # micro-batches a pass provides
    micro_used_per_pass: int  # micro-batches a pass actually trains
    updates_per_pass: int
    divisor: int

    def __init__(self, groups: list[list[int]], batch_size: int, grad_accum: int, seed: int, repeats: int = 1):
        self.groups = [list(g) for g in groups]
        self.n = sum(len(g) for g in groups)
        self.seed = seed
        self.repeats = repeats
        self._pass = lru_cache(maxsize=2)(self._make_pass)

    def pass_batches(self, pass_index: int) -> list[list[int]]:
        return self._pass(pass_index)

    def _make_pass(self, pass_index: int) -> list[list[int]]:
        raise NotImplementedError

    def update(self, step: int) -> Update:
        p, k = divmod(step, self.updates_per_pass)
        batches = self.pass_batches(p)[k * self.grad_accum : (k + 1) * self.grad_accum]
        return Update(batches, self.divisor, p)


class A1111Batching(Batching):
    semantics = "a1111"

    def __init__(self, groups, batch_size, grad_accum, seed, repeats=1):
        super().__init__(groups, batch_size, grad_accum, seed)
        self.batch_size_nominal, self.grad_accum_nominal = batch_size, grad_accum
        self.batch_size = min(batch_size, self.n)
        self.grad_accum = min(grad_accum, self.n // self.batch_size)
        self.micro_per_pass = self.n // self.batch_size
        self.updates_per_pass = self.micro_per_pass // self.grad_accum
        self.micro_used_per_pass = self.updates_per_pass * self.grad_accum
        self.divisor = self.grad_accum
        # With several size groups, whole batches come from each group and the shortfall is filled
        # with random batches (drawn with replacement) from a group chosen by its leftover share.
        b, n, nb = self.batch_size, self.n, self.micro_per_pass
        expected = [len(g) / n * nb * b for g in self.groups]
        self.n_random = nb - sum(int(e) // b for e in expected)
        self.random_weights = [e % b / self.n_random / b if self.n_random > 0 else 0 for e in expected]

    def _make_pass(self, pass_index):
        rng, b = pass_rng(self.seed, pass_index), self.batch_size
        groups = [list(g) for g in self.groups]
        for g in groups:
            rng.shuffle(g)
        batches = [g[i * b : (i + 1) * b] for g in groups for i in range(len(g) // b)]
        for _ in range(self.n_random):
            group = rng.choices(groups, self.random_weights)[0]
            batches.append(rng.choices(group, k=b))
        rng.shuffle(batches)
        return batches


class KohyaBatching(Batching):
    semantics = "kohya"

    def __init__(self, groups, batch_size, grad_accum, seed, repeats=1):
        super().__init__(groups, batch_size, grad_accum, seed, repeats)
        self.batch_size_nominal, self.grad_accum_nominal = batch_size, grad_accum
        self.batch_size, self.grad_accum = batch_size, grad_accum
        self.micro_per_pass = sum(math.ceil(len(g) * repeats / batch_size) for g in self.groups)
        self.micro_used_per_pass = self.micro_per_pass
        self.updates_per_pass = math.ceil(self.micro_per_pass / grad_accum)
        self.divisor = grad_accum

    def _make_pass(self, pass_index):
        rng, b = pass_rng(self.seed, pass_index), self.batch_size
        batches = []
        for g in self.groups:
            items = [i for i in g for _ in range(self.repeats)]
            rng.shuffle(items)
            batches += [items[i : i + b] for i in range(0, len(items), b)]
        rng.shuffle(batches)
        return batches


def make_batching(semantics: str, groups, batch_size: int, grad_accum: int, seed: int, repeats: int = 1) -> Batching:
    cls = A1111Batching if semantics == "a1111" else KohyaBatching
    return cls(groups, batch_size, grad_accum, seed, repeats)
