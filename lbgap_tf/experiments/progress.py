"""Progress of a long experiment, with an ETA from what the work left costs.

An experiment runs a known sequence of stages, and its work comes in units of a few kinds,
e.g. the epochs of one regime's training or the measurements of one sharpness space and
solver (a stage of negligible cost need not count any). Every stage run in this process is
timed, and its wall time divided by the units it did is a measured cost per unit of its kind.
That cost includes what the stage spends around its units (a training run's startup and
final evaluation, a sharpness problem's set-up), so the remaining stages, which repeat the
finished ones with other seeds, cost about what those did. The ETA is the sum over the work
left of units x cost of their kind.

A kind not yet timed in this process falls back on the cost recorded by an earlier process
in the rows of the stages it finished (a run's epoch and startup times, a measurement's solve
time; these leave out the final evaluation and set-up). A kind with no cost at all is named
as not yet timed rather than guessed, and work that is only a cap (epochs under plateau
stopping) makes the ETA an upper bound ("at most").
"""

from __future__ import annotations

import collections
import dataclasses
import time
from collections.abc import Callable, Collection, Mapping

from absl import logging


def _count(units: int, kind: str) -> str:
    return f"{units} {kind}" + ("" if units == 1 else "s")


def format_minutes(seconds: float) -> str:
    """A duration for the progress line, e.g. "12.3 min"."""
    return f"{seconds / 60:.1f} min"


@dataclasses.dataclass(frozen=True)
class Estimate:
    """The time the work left will take.

    Attributes:
      seconds: the work left whose kind has a cost, costed (seconds).
      untimed: units left per kind that has no cost yet (not in ``seconds``).
      upper_bound: part of the work left is a cap (e.g. epochs under plateau stopping).
    """

    seconds: float
    untimed: dict[str, int]
    upper_bound: bool = False

    def describe(self) -> str:
        """E.g. "ETA 12.3 min", "ETA at most 12.3 min", "ETA 4.0 min + not yet timed: 100 LB
        epochs", "ETA unknown: not yet timed: 50 SB epochs, ..."."""
        bound = "at most " if self.upper_bound else ""
        if not self.untimed:
            return f"ETA {bound}{format_minutes(self.seconds)}"
        untimed = ", ".join(_count(units, kind) for kind, units in self.untimed.items())
        if self.seconds == 0:
            return f"ETA unknown: not yet timed: {untimed}"
        return f"ETA {bound}{format_minutes(self.seconds)} + not yet timed: {untimed}"


class CostModel:
    """Measured seconds per unit of each kind of work."""

    def __init__(self):
        self._timed: dict[str, list[float]] = {}  # kind -> [seconds, units], this process.
        self._recorded: dict[str, list[float]] = {}  # kind -> [seconds, units], earlier ones.

    @staticmethod
    def _add(table: dict, kind: str, units: float, seconds: float) -> None:
        if units > 0:
            total = table.setdefault(kind, [0.0, 0.0])
            total[0] += seconds
            total[1] += units

    def add_timed(self, kind: str, units: float, seconds: float) -> None:
        """``units`` of ``kind`` took ``seconds`` of wall time in this process."""
        self._add(self._timed, kind, units, seconds)

    def add_recorded(self, kind: str, units: float, seconds: float) -> None:
        """``units`` of ``kind`` took ``seconds`` as recorded by an earlier process."""
        self._add(self._recorded, kind, units, seconds)

    def cost(self, kind: str) -> float | None:
        """Seconds per unit of ``kind``: timed here if it was, else recorded, else None."""
        for table in (self._timed, self._recorded):
            if kind in table:
                seconds, units = table[kind]
                return seconds / units
        return None

    def estimate(self, work: Mapping[str, int], capped: Collection[str] = ()) -> Estimate:
        """The time of ``work`` (units left per kind); kinds in ``capped`` count caps."""
        seconds, untimed = 0.0, {}
        for kind, units in work.items():
            if units <= 0:
                continue
            cost = self.cost(kind)
            if cost is None:
                untimed[kind] = units
            else:
                seconds += units * cost
        upper_bound = any(work.get(kind, 0) > 0 for kind in capped)
        return Estimate(seconds=seconds, untimed=untimed, upper_bound=upper_bound)


class Stage:
    """A stage that ``StageProgress.begin`` announced: ``planned`` units of ``kind``."""

    def __init__(self, kind: str | None, planned: int, began: float):
        self.kind, self.planned, self.began = kind, planned, began


class StageProgress:
    """Logs each stage of an experiment as "[LABEL k/N, E min elapsed, ETA ...] what".

    Args:
      label: the experiment's name in the log lines, e.g. "gap".
      total_stages: N, the stages of the whole experiment (skipped ones included).
      work: the units of every stage of the experiment, per kind.
      capped: kinds whose units are caps rather than counts.
      clock, log: the wall clock and the logging call (replaceable in tests).
    """

    def __init__(self, label: str, total_stages: int, work: Mapping[str, int],
                 capped: Collection[str] = (), *,
                 clock: Callable[[], float] = time.perf_counter,
                 log: Callable[..., None] = logging.info):
        self.label, self.total_stages = label, total_stages
        self.remaining = collections.Counter(work)
        self.capped = frozenset(capped)
        self.costs = CostModel()
        self._clock, self._log = clock, log
        self._started = clock()
        self._position = 0

    def estimate(self) -> Estimate:
        """The time of the work left, from the costs measured so far."""
        return self.costs.estimate(self.remaining, self.capped)

    def _announce(self, description: str) -> None:
        self._position += 1
        elapsed = self._clock() - self._started
        self._log("[%s %d/%d, %s elapsed, %s] %s", self.label, self._position,
                  self.total_stages, format_minutes(elapsed), self.estimate().describe(),
                  description)

    def finished_earlier(self, kind: str | None, units: int) -> None:
        """``units`` of ``kind`` were done by an earlier process (e.g. a resumed run's epochs)."""
        if kind is not None:
            self.remaining[kind] -= units

    def begin(self, description: str, kind: str | None = None, units: int = 0) -> Stage:
        """Announces a stage that will do ``units`` of ``kind`` and starts timing it; a stage
        that fails before ``end`` leaves the work left as it was."""
        self._announce(description)
        return Stage(kind, units, self._clock())

    def end(self, stage: Stage, units_done: int | None = None) -> None:
        """The stage is over: its planned units leave the work left, and its wall time over
        ``units_done`` (default: the planned units; fewer when it stopped early, e.g. on a
        plateau) is a measured cost of its kind."""
        if stage.kind is None:
            return
        done = stage.planned if units_done is None else units_done
        self.costs.add_timed(stage.kind, done, self._clock() - stage.began)
        self.remaining[stage.kind] -= stage.planned

    def skip(self, description: str, kind: str | None = None, units: int = 0,
             recorded: tuple[float, float] | None = None) -> None:
        """Announces a stage an earlier process finished; ``recorded`` is (units, seconds) of
        its kind as that process measured them, when its rows say."""
        self._announce(description)
        if kind is not None:
            self.remaining[kind] -= units
            if recorded is not None:
                self.costs.add_recorded(kind, *recorded)
