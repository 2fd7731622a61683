"""The tokens of a benchmark and where workers load them from.

A benchmark is a list of :class:`SceneRef` (token, the group a worker loads at once, scenario type); a
:class:`SceneSource` lists them in the driver and loads their scenes or scenarios in the workers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from simulation.types import LogWindow


@dataclass(frozen=True)
class SceneRef:
    """One token of a benchmark.

    Attributes:
        token: scene / scenario token (unique within a run).
        group: what a worker loads at once to get this token (a log file path, or any key of the source).
        log_name: the log the token comes from.
        scenario_type: nuPlan scenario type (``unknown`` when untagged).
    """

    token: str
    group: str
    log_name: str = ""
    scenario_type: str = "unknown"


class SceneSource(Protocol):
    """Where a worker gets scenes: ``refs()`` in the driver, ``load(ref)`` in the workers."""

    def refs(self) -> list[SceneRef]:
        """Every token of the benchmark, in a stable order."""
        ...

    def load(self, ref: SceneRef) -> LogWindow:
        """The scene or scenario of ``ref``."""
        ...


@dataclass
class InMemorySource:
    """A source over windows already in memory (small runs, tests); the group is the log name."""

    windows: Sequence[LogWindow]
    _by_token: dict[str, LogWindow] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._by_token = {w.token: w for w in self.windows}

    def refs(self) -> list[SceneRef]:
        return [
            SceneRef(w.token, w.log_name, w.log_name, str(getattr(w, "scenario_type", "unknown"))) for w in self.windows
        ]

    def load(self, ref: SceneRef) -> LogWindow:
        try:
            return self._by_token[ref.token]
        except KeyError:
            raise KeyError(f"token {ref.token} is not in this in-memory source") from None
