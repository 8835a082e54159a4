"""Mapping the store's clock (Redis's) onto ours, NTP-style, from the quickest round trips."""

from __future__ import annotations


class ClockSync:
    """Maps another clock (Redis's) onto ours from the quickest round trips.

    A grant says when the store decided, on the store's clock. The store decided somewhere
    inside our round trip, so the offset is taken from the round trips with the least slack
    (the best of the last ``window`` seconds): its error is at most half of that round trip.
    """

    def __init__(self, window: float = 10.0, *, exact: bool = False) -> None:
        """``exact``: the other clock is ours (an in-process store): no offset, ever."""
        self._exact = exact
        self._window = window
        self._offset = 0.0
        self._best = float("inf")
        self._best_at = float("-inf")

    def sample(self, sent: float, received: float, remote: float) -> None:
        rtt = received - sent
        if self._exact:
            return
        if rtt <= self._best or received - self._best_at > self._window:
            self._offset = remote - (sent + received) / 2
            self._best, self._best_at = rtt, received

    def local(self, remote: float) -> float:
        return remote - self._offset
