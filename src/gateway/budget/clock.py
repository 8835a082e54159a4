"""Mapping the store's clock (Redis's) onto ours, NTP-style, from the quickest round trips."""

from __future__ import annotations

from collections import deque


class ClockSync:
    """Maps another clock (Redis's) onto ours from the quickest round trips.

    A grant says when the store decided, on the store's clock. The store decided somewhere
    inside our round trip, so the offset is taken from the round trip with the least slack among
    those of the last ``window`` seconds (NTP's clock filter): its error is at most half of that
    round trip. Older ones give way (a clock may step: a failover to another Redis), but to the
    quickest of those still in the window, never to whichever sample comes next: after a stall
    (Redis stuck, its answers 0.2 s late) that one could be off by a tenth of a second.
    """

    def __init__(self, window: float = 10.0, *, exact: bool = False) -> None:
        """``exact``: the other clock is ours (an in-process store): no offset, ever."""
        self._exact = exact
        self._window = window
        # (received, round trip, offset), the round trips increasing: each sample in the window
        # with no quicker one after it (a sliding-window minimum); the first is the best.
        self._samples: deque[tuple[float, float, float]] = deque()

    def sample(self, sent: float, received: float, remote: float) -> None:
        if self._exact:
            return
        rtt = received - sent
        samples = self._samples
        while samples and samples[-1][1] >= rtt:
            samples.pop()
        samples.append((received, rtt, remote - (sent + received) / 2))
        while samples[0][0] < received - self._window:
            samples.popleft()

    def local(self, remote: float) -> float:
        return remote - self._samples[0][2] if self._samples else remote
