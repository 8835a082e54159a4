"""UserSigs: Tencent's library issues them, an independent verifier accepts them, the cache reuses them."""

from __future__ import annotations

import pytest

from gateway.signing import Signer, issue_usersig
from gateway.stores.memory import MemorySignatureStore
from gateway.tenants import Secret, Tenant
from live_engine_emulator.usersig import SigError, decode, mint, verify

TENANT = Tenant(
    name="t", sdkappid=1400000001, identifier="administrator", secret_key=Secret("k" * 32), base_url="http://x", qps=200
)


def test_issued_sig_verifies() -> None:
    """A sig from tls-sig-api-v2 passes the Go-equivalent verifier with its expiry."""
    sig = issue_usersig(TENANT, 3600)
    expires = verify(sig, sdkappid=TENANT.sdkappid, identifier="administrator", key="k" * 32, now=0)
    assert expires > 3600


@pytest.mark.parametrize(
    ("kwargs", "code"),
    [
        ({"sdkappid": 1400000002}, 70014),
        ({"identifier": "someone"}, 70013),
        ({"key": "wrong"}, 70009),
        ({"now": 4e9}, 70001),
    ],
)
def test_verifier_rejects_with_tencents_codes(kwargs: dict[str, object], code: int) -> None:
    """Wrong SDKAppID, identifier, key, or an expired sig each get Tencent's ErrorCode."""
    sig = issue_usersig(TENANT, 3600)
    args: dict[str, object] = {"sdkappid": TENANT.sdkappid, "identifier": "administrator", "key": "k" * 32, "now": 0}
    args.update(kwargs)
    with pytest.raises(SigError) as error:
        verify(sig, **args)  # type: ignore[arg-type]
    assert error.value.code == code


def test_garbage_is_70003() -> None:
    """An unreadable sig is a parse failure, not a crash."""
    for bad in ("not-a-sig", "eJw_", "****"):
        with pytest.raises(SigError) as error:
            verify(bad, sdkappid=1, identifier="a", key="k", now=0)
        assert error.value.code == 70003


def test_minted_sig_matches_the_library(monkeypatch: pytest.MonkeyPatch) -> None:
    """The emulator's minting (for any issue time) produces the very document Tencent's library
    signs at that time: the same fields and the same HMAC (mint and verify share their signed
    content, so verifying a minted sig alone would prove nothing about the library)."""
    import TLSSigAPIv2

    monkeypatch.setattr(TLSSigAPIv2.time, "time", lambda: 1_700_000_000.25)
    library = TLSSigAPIv2.TLSSigAPIv2(1400000001, "k" * 32).gen_sig("administrator", 60)
    minted = mint(1400000001, "k" * 32, "administrator", issued=1_700_000_000, expire=60)
    assert decode(minted) == decode(library)
    assert verify(library, sdkappid=1400000001, identifier="administrator", key="k" * 32, now=1_700_000_030)


class Wall:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


async def test_signer_reuses_until_the_margin_then_refreshes() -> None:
    """One sig serves until `margin` before expiry; then exactly one new sig is issued."""
    wall = Wall()
    issued: list[int] = []

    def issue(tenant: Tenant, ttl: int) -> str:
        issued.append(ttl)
        return f"sig-{len(issued)}"

    signer = Signer(store=MemorySignatureStore(clock=wall), ttl=7200, margin=600, wall_clock=wall, issue=issue)
    assert {await signer.get(TENANT) for _ in range(10)} == {"sig-1"}
    wall.now += 7200 - 601
    assert await signer.get(TENANT) == "sig-1"
    wall.now += 2
    assert await signer.get(TENANT) == "sig-2"
    assert issued == [7200, 7200]


async def test_drop_forgets_only_the_rejected_sig() -> None:
    """Dropping a stale value leaves a newer sig in place; dropping the current one forces a re-sign."""
    wall = Wall()
    counter = iter(range(1, 100))
    signer = Signer(
        store=MemorySignatureStore(clock=wall),
        ttl=7200,
        margin=600,
        wall_clock=wall,
        issue=lambda t, ttl: f"sig-{next(counter)}",
    )
    first = await signer.get(TENANT)
    await signer.drop(TENANT, "some-older-sig")
    assert await signer.get(TENANT) == first
    await signer.drop(TENANT, first)
    assert await signer.get(TENANT) == "sig-2"


def test_signature_repr_hides_the_value() -> None:
    """A Signature in a log line or traceback shows only its expiry."""
    from gateway.signing import Signature

    assert "secret-sig" not in repr(Signature(value="secret-sig", expires_at=1.0))
