"""What a caller holds: the slot it was given, and how it is handed back."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import NamedTuple

from gateway.budget.dispatch import Granted
from gateway.budget.schedule import Booking, Paused, Refusal

SEND_SHARE = 1 / 3  # the share of the jitter a call may leave late; the rest is the network's
SendNow = Callable[[float], bool]  # writes the call now, nothing awaited, to leave by this moment: did it?


class Slot(NamedTuple):
    """A slot the caller now holds: it waited ``waited`` seconds, and its request must leave
    (its first byte be written) by ``send_by`` on our clock, or not at all. A call that could
    not leave in time hands the slot back when it books the next (``forfeit``)."""

    waited: float
    send_by: float
    booking: Booking | None = None
    shared: bool = False  # booked on the shared schedule (else on this replica's own)
    sent: bool = False  # its call has left already (``Launch``): only the reply is still to come


class Launch:
    """A call sent the moment its slot comes, by the first code that runs then: the booking that
    granted the slot, as the store's answer is read (``Dispatcher``: ``on_grant``; on Redis, the
    line's ``data_received``), or a timer callback at the slot. Not the caller's own task: the
    loop resumes a task only after every callback queued before it, milliseconds under load, and
    a slot's send window is a third of the jitter (BENCHMARKS.md, "Redis mode at 64 in flight":
    the hop from the booking to the caller's task and the timed wake-up were most of the slots
    missed).

    ``send(send_by)`` writes the call with nothing awaited and says whether it did (no idle
    socket: the caller then sends it itself, as without a launch). It is called only within the
    slot's send window, never before the slot (a timer that fires early is set again)."""

    __slots__ = ("_clock", "_send", "_timer", "_window", "sent")

    def __init__(self, send: SendNow, *, window: float, clock: Callable[[], float]) -> None:
        self._send, self._window, self._clock = send, window, clock
        self._timer: asyncio.TimerHandle | None = None
        self.sent = False

    def granted(self, got: Granted) -> None:
        """The slot is this caller's: send now if its moment has come, else at its moment."""
        wait = got.slot - self._clock()
        if wait > 0:
            self._timer = asyncio.get_running_loop().call_later(wait, self.granted, got)
            return
        self._timer = None
        if self._clock() <= got.slot + self._window:
            self.sent = self._send(got.slot + self._window)

    def cancel(self) -> None:
        """The caller got there first (or went away): no timer sends it."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


def handed_back(forfeit: Slot | None, *, shared: bool) -> Booking | None:
    """The unused booking to undo on the schedule about to be booked: only that schedule's own
    (a slot of the shared schedule means nothing to this replica's, nor the reverse)."""
    return forfeit.booking if forfeit is not None and forfeit.shared == shared else None


async def slot_for(
    got: Granted | Refusal | Paused,
    began: float,
    *,
    shared: bool,
    jitter: float,
    clock: Callable[[], float],
    sleep: Callable[[float], Awaitable[None]],
    launch: Launch | None = None,
) -> Slot | Refusal | Paused:
    """Sleep until a granted slot's moment and hold it, unless ``launch`` sent its call meanwhile
    (``Slot.sent``); anything else is passed on.

    Never before the moment: uvloop rounds a timer to the millisecond from a time cached at the
    start of the loop's turn, so a sleep can end over a millisecond early (measured: up to 1.3 ms,
    and 559 of 10,268 calls in a Redis-mode run left before their slots); the rest is slept again."""
    if not isinstance(got, Granted):
        return got
    try:
        while (wake := got.slot - clock()) > 0 and not (launch and launch.sent):
            await sleep(wake)
    finally:
        if launch is not None:
            launch.cancel()
    sent = launch is not None and launch.sent
    return Slot(clock() - began, got.slot + jitter * SEND_SHARE, got.booking, shared, sent)
