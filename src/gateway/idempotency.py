"""Writes exactly once: ``Idempotency-Key`` (SPEC §10), after the IETF httpapi draft "The
Idempotency-Key HTTP Header Field" and Stripe's keys.

A write sent again with the key of an earlier one gets the earlier one's answer, and Tencent
sees it once. ``Keys.run`` wraps the service's work; it neither knows nor cares which router
called it.

Glossary:

- **key**: the caller's header value, 1-255 printable ASCII characters, bare or as the draft's
  quoted string. It belongs to (caller, tenant): the stores see only a hash of the three.
- **fingerprint**: a hash of the method, path, query and body: what "the same request" means.
  The same key with another fingerprint is 422 ``idempotency_key_reused``.
- **claim**: the first request's hold on its key while it runs: an owner token and a *lease*
  (how long it may run). A repeat meanwhile waits, within the wait cap, then gets 409
  ``idempotency_key_in_use``.
- **kept answer**: the first request's outcome (a success or a problem document), kept for
  ``ttl``. Kept: successes and 4xx answers but 429; and for an operation that is not
  repeatable, any failure that may have applied (one key never sends twice). Not kept: 429 and
  5xx that a repeat may safely run again; the claim is released instead.
- **abandoned**: a claim whose lease lapsed with no answer (its replica died mid-call). A
  repeatable operation's key is claimed again; a not-repeatable one's answers 504 with
  ``may_have_applied``, since its call may have reached Tencent.

The stores (``stores/``) keep the claims: in process when embedded, and with Redis in both tiers
(``stores/failover.py``), so that one key never sends twice through one replica even while Redis
is unreachable.
"""

from __future__ import annotations

import asyncio
import hashlib
import secrets
from collections.abc import Awaitable, Callable, Sequence
from typing import Literal, Protocol

import msgspec

from gateway import errors
from gateway.metrics import Metrics

MAX_KEY = 255
MAX_ANSWER = 16 * 1024  # bytes of a kept answer: a write's reply is a few dozen, a problem a few hundred
_DETAIL = 1024  # a kept problem's detail is cut to this many characters (it stays under MAX_ANSWER)
_POLL_FIRST, _POLL_MAX = 0.005, 0.1  # seconds between looks at a key another replica runs


class Keyed(msgspec.Struct, frozen=True, kw_only=True):
    """A write's key as the stores know it, its request's fingerprint, and the tenant (for metrics)."""

    key: str
    fingerprint: str
    tenant: str


class Answer(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """A kept outcome: a success (``code`` empty: the reply's body, Tencent's RequestId) or an
    error's problem fields."""

    status: int
    body: bytes | None = None
    upstream_request_id: str | None = None
    code: str = ""
    title: str = ""
    detail: str = ""
    upstream_code: int | None = None
    retry_after: float | None = None
    may_have_applied: bool = False


class Claim(msgspec.Struct, frozen=True):
    """What a store says of a key: ``claimed`` (this request holds it now), ``kept`` (with the
    answer), ``running`` (another request holds it), or ``abandoned`` (see the glossary)."""

    state: Literal["claimed", "kept", "running", "abandoned"]
    fingerprint: str = ""
    answer: bytes = b""


class KeyStore(Protocol):
    async def claim(
        self, key: str, fingerprint: str, owner: str, *, lease: float, ttl: float, repeatable: bool
    ) -> Claim:
        """Hold ``key`` for ``owner`` if nothing holds it (or an abandoned repeatable claim
        did), for ``lease`` seconds, the key kept ``ttl`` seconds; else say what holds it."""
        ...

    async def keep(self, key: str, owner: str, answer: bytes | None, ttl: float) -> None:
        """Keep ``answer`` for ``ttl`` seconds, or (None) release the claim: only while ``owner``
        still holds the key."""
        ...


# ---------------------------------------------------------------------- the request's side


def parse_key(values: Sequence[bytes]) -> str | None:
    """The key of an ``Idempotency-Key`` header (its values as sent), None when there is none.
    A bare value and the same value as a quoted string are the same key."""
    if not values:
        return None
    if len(values) > 1:
        raise errors.InvalidRequest("Idempotency-Key: send one key, in one header")
    raw = values[0].strip(b" \t")
    key = _unquoted(raw) if raw.startswith(b'"') else raw
    if key is None or not 1 <= len(key) <= MAX_KEY or any(c < 0x20 or c > 0x7E for c in key):
        raise errors.InvalidRequest(
            f"Idempotency-Key: 1 to {MAX_KEY} printable ASCII characters, bare or as a quoted string"
        )
    return key.decode("ascii")


def _unquoted(raw: bytes) -> bytes | None:
    """A structured-field string's content (RFC 8941: only ``\\"`` and ``\\\\`` are escapes)."""
    if len(raw) < 2 or not raw.endswith(b'"'):
        return None
    out = bytearray()
    escaped = False
    for c in raw[1:-1]:
        if escaped:
            if c not in b'"\\':
                return None
            out.append(c)
            escaped = False
        elif c == 0x5C:  # backslash
            escaped = True
        elif c == 0x22:  # an unescaped quote ends the string early
            return None
        else:
            out.append(c)
    return None if escaped else bytes(out)


def keyed(*, caller: str, tenant: str, key: str, method: str, path: bytes, query: bytes, body: bytes) -> Keyed:
    """The stored name of ``key`` for (caller, tenant), and the request's fingerprint."""
    scope = hashlib.sha256(b"\0".join((caller.encode(), tenant.encode(), key.encode()))).hexdigest()[:40]
    digest = hashlib.sha256()
    for part in (method.encode(), path, query, body):
        digest.update(len(part).to_bytes(8, "big"))
        digest.update(part)
    return Keyed(key=scope, fingerprint=digest.hexdigest()[:32], tenant=tenant)


def answer_of(exc: errors.GatewayError) -> Answer:
    return Answer(
        status=exc.status,
        code=exc.code,
        title=exc.title,
        detail=exc.detail[:_DETAIL],
        upstream_code=exc.upstream_code,
        upstream_request_id=exc.upstream_request_id,
        retry_after=exc.retry_after,
        may_have_applied=exc.may_have_applied,
    )


def replayed_error(answer: Answer) -> errors.GatewayError:
    """The kept problem as an error again (its status, code and title those of the first)."""
    exc = errors.GatewayError(
        answer.detail,
        upstream_code=answer.upstream_code,
        upstream_request_id=answer.upstream_request_id,
        retry_after=answer.retry_after,
    )
    exc.status, exc.code, exc.title = answer.status, answer.code, answer.title
    exc.may_have_applied, exc.replayed = answer.may_have_applied, True
    return exc


def kept(exc: errors.GatewayError, *, repeatable: bool) -> bool:
    """Whether an error is the key's answer for good (else a repeat runs the request again)."""
    if exc.may_have_applied and not repeatable:
        return True
    return exc.status < 500 and exc.status != 429


# ---------------------------------------------------------------------- running a keyed write

_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder(Answer).decode


class Keys:
    """Runs keyed writes: the first of a key runs, its answer is kept, repeats get it back.

    ``wait``: how long a repeat waits for a first that is still running (the wait cap);
    ``lease``: how long one Tencent call may take (its deadline). A claim holds ``calls + 1``
    leases before it counts as abandoned: every call of the write (a long list of accounts is
    several) and one read that may confirm a refused retry (``catalogue.Confirm``)."""

    def __init__(
        self,
        *,
        store: KeyStore,
        ttl: float,
        lease: float,
        wait: float,
        metrics: Metrics,
        clock: Callable[[], float],
        sleep: Callable[[float], Awaitable[None]],
        token: Callable[[], str] = lambda: secrets.token_hex(8),
    ) -> None:
        self._store = store
        self._ttl = ttl
        self._lease = lease
        self._wait = wait
        self._metrics = metrics
        self._clock = clock
        self._sleep = sleep
        self._token = token
        self._running: dict[str, asyncio.Future[None]] = {}  # keys this replica runs: repeats here wait on them

    async def run(
        self, keyed: Keyed, *, repeatable: bool, work: Callable[[], Awaitable[Answer]], calls: int = 1
    ) -> tuple[Answer, bool]:
        """``work``'s answer (and False), or the key's kept answer (and True); a kept problem is
        raised again. ``work`` (``calls`` Tencent calls) runs at most once per key, fleet-wide
        while the store is shared."""
        owner = self._token()
        earlier = await self._claim(keyed, owner, repeatable, lease=(calls + 1) * self._lease)
        if earlier is not None:
            if earlier.code:
                raise replayed_error(earlier)
            return earlier, True
        self._running[keyed.key] = finished = asyncio.get_running_loop().create_future()
        try:
            answer = await work()
        except errors.GatewayError as exc:
            keep = kept(exc, repeatable=repeatable)
            await self._keep(keyed, owner, answer_of(exc) if keep else None, repeatable=repeatable)
            raise
        except BaseException:  # a bug or a cancelled request: nothing to keep
            if repeatable:  # (a call not repeatable may have been made: its claim is left to lapse)
                await self._store.keep(keyed.key, owner, None, self._ttl)
            raise
        else:
            await self._keep(keyed, owner, answer, repeatable=repeatable)
            return answer, False
        finally:
            if self._running.get(keyed.key) is finished:  # (a claim taken over after a lapsed lease is not ours)
                del self._running[keyed.key]
            finished.set_result(None)

    async def _claim(self, keyed: Keyed, owner: str, repeatable: bool, *, lease: float) -> Answer | None:
        """Hold the key (None), waiting within the wait cap while another request holds it; or
        the answer the key already has."""
        until = self._clock() + self._wait
        pause = _POLL_FIRST
        while True:
            claim = await self._store.claim(
                keyed.key, keyed.fingerprint, owner, lease=lease, ttl=self._ttl, repeatable=repeatable
            )
            if claim.state == "claimed":
                return None
            if claim.fingerprint != keyed.fingerprint:
                self._count(keyed, "reused")
                raise errors.IdempotencyKeyReused(
                    "this Idempotency-Key was sent with another request (method, path, query or body); "
                    "use a new key for a new request"
                )
            if claim.state == "kept":
                self._count(keyed, "replayed")
                return _decode(claim.answer)
            if claim.state == "abandoned":
                self._count(keyed, "replayed")
                return _ABANDONED
            left = until - self._clock()
            if left <= 0:
                self._count(keyed, "in_use")
                raise errors.IdempotencyKeyInUse(
                    "the first request with this Idempotency-Key is still running; repeat it shortly", retry_after=1
                )
            here = self._running.get(keyed.key)
            if here is not None:  # it runs on this replica: wait for it, not for a poll
                await asyncio.wait([here], timeout=left)
            else:
                await self._sleep(min(pause, left))
                pause = min(2 * pause, _POLL_MAX)

    async def _keep(self, keyed: Keyed, owner: str, answer: Answer | None, *, repeatable: bool) -> None:
        encoded = None if answer is None else _encode(answer)
        if encoded is not None and len(encoded) > MAX_ANSWER:  # (no reply of the catalogue's is near it)
            encoded = None if repeatable else _encode(_TOO_LARGE)
        await self._store.keep(keyed.key, owner, encoded, self._ttl)
        if encoded is not None:
            self._count(keyed, "stored")

    def _count(self, keyed: Keyed, outcome: str) -> None:
        m = self._metrics
        m.child(m.idempotency, keyed.tenant, outcome).inc()


_ABANDONED = Answer(
    status=504,
    code=errors.UpstreamTimeout.code,
    title=errors.UpstreamTimeout.title,
    detail="the first request with this Idempotency-Key stopped while Tencent was being called (its replica "
    "went away); it may have applied",
    may_have_applied=True,
)

_TOO_LARGE = Answer(
    status=502,
    code=errors.UpstreamRejected.code,
    title=errors.UpstreamRejected.title,
    detail=f"the answer of the first request with this Idempotency-Key was over {MAX_ANSWER} bytes and was not "
    "kept; it may have applied",
    may_have_applied=True,
)
