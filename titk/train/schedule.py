"""A1111's learning-rate schedule string, e.g. "0.005:100, 1e-3:1000", with its exact grammar and stop rule.

Grammar: pieces separated by commas; each is `rate:step` (rate until that step), `rate:-1` or a bare
`rate` (rate until max steps; both end the parse). A `rate:step` pair is kept only if its step lies after
the current step (so entries already passed are dropped on resume) and is stored with its step capped at
max steps; a step beyond max steps ends the parse after that pair. A piece with two colons or more, like
`0.005:100:200`, is read as A1111's `LearnScheduleIterator` reads it: as the bare rate before its first colon
(until max steps, ending the parse); `plan` warns about it (`overlong_pieces`).

Running: the current (rate, end) holds while step < end. A check at step >= end moves to the next pair,
one pair per check; with no pair left the schedule is finished and training stops, even before max
steps. A1111 checks before every micro-batch, so titk does too (`apply`). The gradient-clipping
threshold uses the same grammar.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import TitkError

EXAMPLE = '"0.005" or "0.005:100, 1e-3:1000, 1e-5:-1"'


def parse_schedule(text: str | float, max_steps: int, cur_step: int = 0, *, what: str = "learning_rate") -> list[tuple[float, int]]:
    """The (rate, end step) pairs A1111 would keep for this string."""
    pairs: list[tuple[float, int]] = []
    try:
        for piece in str(text).split(","):
            if not piece.strip():
                continue
            parts = piece.split(":")
            if len(parts) == 2:
                rate, step = float(parts[0]), int(parts[1])
                if step > cur_step:
                    pairs.append((rate, min(step, max_steps)))
                    if step > max_steps:
                        return _checked(pairs, text, what)
                elif step == -1:
                    pairs.append((rate, max_steps))
                    return _checked(pairs, text, what)
            else:  # A1111 takes anything but `rate:step` as a bare rate, whatever follows a second colon
                pairs.append((float(parts[0]), max_steps))
                return _checked(pairs, text, what)
    except ValueError:
        raise TitkError(f"{what}: invalid schedule {str(text)!r}; write a rate or rate:step pairs like {EXAMPLE}") from None
    return _checked(pairs, text, what)


def overlong_pieces(text: str | float) -> list[str]:
    """Pieces with more than one colon, which A1111 reads as a bare rate (a likely typo for two pieces)."""
    return [piece.strip() for piece in str(text).split(",") if piece.count(":") > 1]


def _checked(pairs, text, what):
    for rate, _ in pairs:
        if not rate > 0 or rate != rate or rate == float("inf"):
            raise TitkError(f"{what}: rates must be positive numbers, got {rate} in {str(text)!r}")
    return pairs


@dataclass
class Schedule:
    """A1111's LearnRateScheduler: `apply(step)` before each micro-batch; `finished` ends training."""

    pairs: list[tuple[float, int]]
    rate: float = field(init=False)
    end_step: int = field(init=False)
    finished: bool = field(init=False, default=False)
    _next: int = field(init=False, default=0)

    def __post_init__(self):
        if not self.pairs:
            self.finished = True
            self.rate, self.end_step = float("nan"), 0
        else:
            self.rate, self.end_step = self.pairs[0]
            self._next = 1

    @classmethod
    def from_string(cls, text: str | float, max_steps: int, cur_step: int = 0, *, what: str = "learning_rate") -> Schedule:
        return cls(parse_schedule(text, max_steps, cur_step, what=what))

    def apply(self, step: int) -> float:
        """Advance at most one pair if `step` has reached the current end; return the rate now in force."""
        if step >= self.end_step and not self.finished:
            if self._next < len(self.pairs):
                self.rate, self.end_step = self.pairs[self._next]
                self._next += 1
            else:
                self.finished = True
        return self.rate

