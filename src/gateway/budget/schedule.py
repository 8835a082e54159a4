"""The schedule's pure maths: slot spacing, GCRA with reservation, and fair batch booking.

Everything here is a function of the stored state and ``now``; the stores make it atomic (a
dict in process, ``lua/book.lua`` in Redis, which is this module's ``book`` line for line) and
``tests/test_store_contracts.py`` runs the same cases against both.

Why this spacing. Tencent refuses (60007) once an API has seen ``limit`` calls in a second. If
every call arrives between 0 and ``jitter`` seconds after its slot, the calls that arrive in one
sliding second had their slots in a window of ``1 s + jitter``; slots spaced with no burst at
``(1 s + jitter) / limit`` (plus a microsecond, so rounding never shortens it) put at most
``limit`` slots in such a window. That is also the best any schedule can do without knowing
which calls will be late: ``1 / (1 + jitter)`` of the limit, 98.3% at the default 17 ms.

Why fair booking looks the way it does (``book``). One caller's burst must not book the
schedule far ahead of the others, so nobody books further ahead than the *horizon* (tens of
milliseconds): callers wait in their replica's queue (``dispatch``), not in the schedule. Among
the callers asking at once, and across replicas through the state kept with the schedule, each
caller has a *fair TAT* that moves on by ``interval × W / weight`` per slot taken by right (W:
the weights of the callers active now, fleet-wide). A caller whose fair TAT has come takes slots
*by right*, up to the horizon ahead; any caller may *borrow* a slot nobody claimed once it is
within ``borrow`` of now (the budget stays fully used). Borrowed slots are not charged: a caller
that used idle budget owes nothing when others come back (no virtual-time debt, the flaw of
plain virtual clocks). Since by-right bookings reach further ahead than borrowing, a caller
within its share always finds its slot before the borrowers' (Kubernetes APF's fair queuing
and borrowing, and Doorman's FairShare, made fleet-wide by keeping the tags with the schedule).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import NamedTuple

import msgspec


class Booking(NamedTuple):
    """What a grant did to its schedule, on the store's clock: it took the slot at ``start``
    and moved the schedule's TAT to ``end``. Handing it back undoes that while nobody has booked
    after it."""

    start: float
    end: float


class Grant(msgspec.Struct, frozen=True):
    """A booked slot: wait this long, then call. ``at`` is the store's clock when it decided
    (Redis's for the shared store), so the slot's moment is ``at + wait`` on that clock."""

    wait: float
    at: float | None = None
    booking: Booking | None = None


class Refusal(msgspec.Struct, frozen=True):
    """No slot within the wait cap; nothing was booked. Retry after this many seconds."""

    retry_after: float


class Paused(msgspec.Struct, frozen=True):
    """The tenant is paused for ``left`` seconds because Tencent answered ``code``."""

    left: float
    code: int
    reason: str


class Share(NamedTuple):
    """Who is asking: the caller's configured name and weight (its share of a contended budget)."""

    name: str
    weight: int = 1


class Want(NamedTuple):
    """One caller's demand in a booking: ``wanted`` slots, none later than ``within`` seconds
    from now (its waiters' wait caps, at most the horizon)."""

    caller: str
    weight: int
    wanted: int
    within: float


class Terms(NamedTuple):
    """How a schedule is booked (seconds): slot spacing, how far ahead a caller may book by
    right, how far ahead anyone may borrow a free slot, how long after its last demand a caller
    still counts as competing, and the spacing at the full limit that a slot costs its caller's
    fair TAT (0: the interval). A replica back from an outage books wider slots for a while (the
    grace); its callers are not charged for that on every replica. ``lead``: no slot starts
    before ``now + lead`` (the booking's answer reaches its waiters that much later: a slot
    booked for "now" would have passed; ``dispatch``)."""

    interval: float
    horizon: float
    borrow: float
    active: float
    unit: float = 0.0
    lead: float = 0.0


class Booked(msgspec.Struct, frozen=True):
    """The slots one booking granted, per caller (starts on the store's clock, each ``interval``
    long), the store's clock then, and when to ask again for what is left (None: nothing left)."""

    slots: dict[str, list[float]]
    at: float
    interval: float
    next_at: float | None = None


class FairState:
    """One (scope, API) schedule: its TAT, each caller's fair TAT, and the callers competing
    (weight, last demand). The memory store keeps one per key; Redis keeps the same in keys."""

    __slots__ = ("fair", "seen", "tat")

    def __init__(self) -> None:
        self.tat = 0.0
        self.fair: dict[str, float] = {}
        self.seen: dict[str, tuple[int, float]] = {}


def interval_for(limit: int, jitter: float) -> float:
    """Seconds between slots so that no sliding second holds more than ``limit`` arrivals, when
    each arrives up to ``jitter`` after its slot."""
    return (1.0 + jitter) / limit + 1e-6


def reserve(
    tat: float,
    now: float,
    interval: float,
    max_wait: float,
    *,
    at: float | None = None,
    unbook: Booking | None = None,
) -> tuple[float, Grant | Refusal]:
    """GCRA with reservation and no burst: the new TAT and the decision for one call.

    ``unbook``: a slot of this schedule that went unused (its call could not leave in time). If
    nobody booked after it (the TAT is still where it left it), the schedule goes back to that
    slot before booking: the slot was never spent."""
    if unbook is not None and tat == unbook.end:
        tat = unbook.start
    start = max(tat, now)
    wait = start - now
    if wait > max_wait:
        return tat, Refusal(retry_after=wait - max_wait)
    end = start + interval
    return end, Grant(wait=wait, at=at, booking=Booking(start, end))


def defer(tat: float, now: float, pause: float) -> float:
    """Push the schedule so that no slot is granted before ``now + pause``."""
    return max(tat, now + pause)


def book(state: FairState, now: float, wants: Sequence[Want], terms: Terms, unbook: Iterable[Booking] = ()) -> Booked:
    """Grant slots to the callers in ``wants``, fairly (see the module docstring); ``state``
    changes in place. ``unbook``: unused slots handed back (undone while nobody booked after)."""
    for handed in sorted(unbook, key=lambda b: b.end, reverse=True):
        if state.tat == handed.end:
            state.tat = handed.start
    for want in wants:
        state.seen[want.caller] = (want.weight, now)
    for caller, (_, last) in list(state.seen.items()):
        if last < now - terms.active:
            del state.seen[caller]
            state.fair.pop(caller, None)
    total = sum(weight for weight, _ in state.seen.values())
    left = {want.caller: want.wanted for want in wants}
    slots: dict[str, list[float]] = {want.caller: [] for want in wants}
    while True:  # the next slot, from now + lead, within the horizon
        tat, slot = reserve(state.tat, now + terms.lead, terms.interval, terms.horizon - terms.lead)
        if not isinstance(slot, Grant) or slot.booking is None:
            break
        start = slot.booking.start
        chosen = _choose(state, start, wants, left, now=now, terms=terms)
        if chosen is None:
            break
        want, by_right = chosen
        state.tat = tat
        slots[want.caller].append(start)
        left[want.caller] -= 1
        if by_right:
            fair = max(state.fair.get(want.caller, -math.inf), start)
            state.fair[want.caller] = fair + (terms.unit or terms.interval) * total / want.weight
    return Booked(slots=slots, at=now, interval=terms.interval, next_at=_next_at(state, now, wants, left, terms))


def _choose(
    state: FairState, start: float, wants: Sequence[Want], left: dict[str, int], *, now: float, terms: Terms
) -> tuple[Want, bool] | None:
    """Who takes the slot at ``start``: a caller by right (its fair TAT falls within this slot's
    interval or before), the earliest fair TAT first; else, if the slot is within the borrow
    window of now, the borrower with the earliest fair TAT."""
    best: tuple[bool, float, Want] | None = None  # (borrowing, fair TAT, want): the least wins
    for want in wants:
        if left[want.caller] == 0 or start > now + want.within:
            continue
        fair = state.fair.get(want.caller, -math.inf)
        borrowing = fair >= start + terms.interval
        if borrowing and start > now + terms.lead + terms.borrow:
            continue
        if best is None or (borrowing, fair) < best[:2]:
            best = (borrowing, fair, want)
    return None if best is None else (best[2], not best[0])


def _next_at(state: FairState, now: float, wants: Sequence[Want], left: dict[str, int], terms: Terms) -> float | None:
    """When to book again for what is left: once half the horizon is open to a caller by right
    (so each booking takes several slots, and replicas polling the same schedule do not ask once
    a slot each), or the schedule's next free slot is within the borrow window."""
    waiting = [want for want in wants if left[want.caller] > 0]
    if not waiting:
        return None
    borrow = state.tat - terms.borrow
    fair = min(state.fair.get(w.caller, -math.inf) for w in waiting)
    by_right = max(fair - terms.interval, state.tat) - terms.horizon / 2
    return max(now, min(borrow, by_right))
