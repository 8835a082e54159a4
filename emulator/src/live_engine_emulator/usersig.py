"""UserSig v2 verification (and minting, for tests), written apart from the gateway's signing.

Mirrors Tencent's Go verifier (tls-sig-api-v2-golang ``VerifyUserSig``): decode the URL-safe
base64 variant, inflate, parse, then check SDKAppID, identifier, expiry and the HMAC-SHA256.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import zlib


class SigError(Exception):
    """Why a UserSig was refused, with the ErrorCode Tencent answers for it."""

    def __init__(self, code: int, info: str) -> None:
        super().__init__(info)
        self.code = code
        self.info = info


def _content(identifier: str, sdkappid: int, issued: int, expire: int) -> bytes:
    return f"TLS.identifier:{identifier}\nTLS.sdkappid:{sdkappid}\nTLS.time:{issued}\nTLS.expire:{expire}\n".encode()


def mint(sdkappid: int, key: str, identifier: str, *, issued: int, expire: int) -> str:
    """A UserSig issued at an arbitrary time (the official library only signs "now")."""
    digest = hmac.new(key.encode(), _content(identifier, sdkappid, issued, expire), hashlib.sha256).digest()
    doc = {
        "TLS.ver": "2.0",
        "TLS.identifier": identifier,
        "TLS.sdkappid": sdkappid,
        "TLS.expire": expire,
        "TLS.time": issued,
        "TLS.sig": base64.b64encode(digest).decode(),
    }
    raw = base64.b64encode(zlib.compress(json.dumps(doc).encode())).decode()
    return raw.replace("+", "*").replace("/", "-").replace("=", "_")


def decode(sig: str) -> dict[str, object]:
    """The signature's JSON document; SigError(70003) when it cannot be read."""
    try:
        raw = base64.b64decode(sig.replace("*", "+").replace("-", "/").replace("_", "="), validate=True)
        doc = json.loads(zlib.decompress(raw))
    except (ValueError, zlib.error) as exc:
        raise SigError(70003, "UserSig check failed: cannot decode") from exc
    if not isinstance(doc, dict):
        raise SigError(70003, "UserSig check failed: not an object")
    return doc


def verify(sig: str, *, sdkappid: int, identifier: str, key: str, now: float) -> int:
    """Check a UserSig as Tencent does; return its expiry (unix seconds) or raise SigError."""
    if not sig:
        raise SigError(70002, "UserSig is empty")
    doc = decode(sig)
    try:
        sig_app, sig_user = int(str(doc["TLS.sdkappid"])), str(doc["TLS.identifier"])
        issued, expire = int(str(doc["TLS.time"])), int(str(doc["TLS.expire"]))
        given = base64.b64decode(str(doc["TLS.sig"]))
    except (KeyError, ValueError) as exc:
        raise SigError(70003, "UserSig check failed: missing field") from exc
    if sig_app != sdkappid:
        raise SigError(70014, "SDKAppID in the request does not match the UserSig")
    if sig_user != identifier:
        raise SigError(70013, "identifier in the request does not match the UserSig")
    if now > issued + expire:
        raise SigError(70001, "UserSig expired")
    expected = hmac.new(key.encode(), _content(identifier, sdkappid, issued, expire), hashlib.sha256).digest()
    if not hmac.compare_digest(expected, given):
        raise SigError(70009, "UserSig verification failed: wrong key")
    return issued + expire
