"""``type: none``: the event is stored and its job marked dropped on purpose; nothing is sent."""

from __future__ import annotations

from gatewayd.destinations.base import AttemptResult, Job, Outcome
from gatewayd.events import Event


class DropDestination:
    """Records a 'dropped' attempt so the history shows the event went nowhere by design."""

    def __init__(self, name: str) -> None:
        self.name = name

    async def deliver(self, event: Event, job: Job) -> AttemptResult:
        return AttemptResult(outcome=Outcome.DROPPED, target="none")

    async def aclose(self) -> None:
        return None
