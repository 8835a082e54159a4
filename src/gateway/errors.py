"""The gateway's one exception tree.

Every failure a caller can see is a ``GatewayError``; ``api.py`` turns it into an RFC 9457
problem document in one place. ``upstream.py`` maps transport errors and Tencent ErrorCodes
into this tree, so nothing above it ever looks at an ErrorCode.

    GatewayError                      status  code
    ├── InvalidRequest                 400    invalid_request
    ├── Unauthenticated                401    unauthenticated
    ├── Forbidden                      403    forbidden
    ├── NotFound                       404    (abstract)
    │   ├── TenantNotFound             404    tenant_not_found
    │   ├── RoomNotFound               404    room_not_found
    │   ├── MetadataKeysNotFound       404    metadata_keys_not_found
    │   └── RouteNotFound              404    not_found
    ├── MethodNotAllowed               405    method_not_allowed
    ├── IdempotencyKeyInUse            409    idempotency_key_in_use (the key's first request still runs)
    ├── PayloadTooLarge                413    payload_too_large
    ├── MetadataLimitExceeded          422    metadata_limit_exceeded
    ├── IdempotencyKeyReused           422    idempotency_key_reused (the key was sent with another request)
    ├── RateLimited                    429    rate_limited
    │   └── UpstreamRateLimited        429    rate_limited      (Tencent said "too frequent")
    ├── Draining                       503    draining
    ├── Overloaded                     503    overloaded (loop lag, or GATEWAY_MAX_IN_FLIGHT: admission.py)
    ├── TooManySubscribers             503    too_many_subscribers
    ├── UpstreamMisconfigured          503    upstream_misconfigured
    │   ├── SignatureRejected          503    upstream_misconfigured (retried once with a new sig)
    │   ├── EgressProxyRefused         503    upstream_misconfigured (the egress proxy said no)
    │   └── UpstreamLockedOut          503    upstream_misconfigured (70050 cool-down)
    ├── UpstreamUnavailable            502    upstream_unavailable   (transient: retried)
    ├── UpstreamRejected               502    upstream_rejected      (an ErrorCode we do not map)
    ├── UpstreamTimeout                504    upstream_timeout
    └── InternalError                  500    internal_error

Two flags travel with any error: ``may_have_applied`` (an attempt at Tencent may have taken
effect although the answer is an error: a timeout or a connection lost after the write; the
problem document says so) and ``replayed`` (the answer is the one kept for an ``Idempotency-Key``).
"""

from __future__ import annotations


class GatewayError(Exception):
    """Base of every error a caller can see; carries its HTTP status and stable code."""

    status: int = 500
    code: str = "internal_error"
    title: str = "Internal error"

    def __init__(
        self,
        detail: str,
        *,
        upstream_code: int | None = None,
        upstream_request_id: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.upstream_code = upstream_code
        self.upstream_request_id = upstream_request_id
        self.retry_after = retry_after
        self.may_have_applied = False
        self.replayed = False


class InternalError(GatewayError):
    """A bug in the gateway; the detail never carries internals."""


class InvalidRequest(GatewayError):
    status, code, title = 400, "invalid_request", "Invalid request"


class Unauthenticated(GatewayError):
    status, code, title = 401, "unauthenticated", "Missing or unknown bearer token"


class Forbidden(GatewayError):
    status, code, title = 403, "forbidden", "Not allowed"


class NotFound(GatewayError):
    status, code, title = 404, "not_found", "Not found"


class TenantNotFound(NotFound):
    code, title = "tenant_not_found", "Unknown tenant"


class RoomNotFound(NotFound):
    code, title = "room_not_found", "Room does not exist"


class MetadataKeysNotFound(NotFound):
    code, title = "metadata_keys_not_found", "None of the metadata keys exist"


class RouteNotFound(NotFound):
    code, title = "not_found", "No such endpoint"


class MethodNotAllowed(GatewayError):
    status, code, title = 405, "method_not_allowed", "Method not allowed"


class RoomExists(GatewayError):
    status, code, title = 409, "room_exists", "A room with this id exists"


class AdminLimitExceeded(GatewayError):
    status, code, title = 422, "admin_limit_exceeded", "A room has at most 5 admins"


class IdempotencyKeyInUse(GatewayError):
    status, code, title = 409, "idempotency_key_in_use", "A request with this Idempotency-Key is still running"


class IdempotencyKeyReused(GatewayError):
    status, code, title = 422, "idempotency_key_reused", "This Idempotency-Key was used for another request"


class PayloadTooLarge(GatewayError):
    status, code, title = 413, "payload_too_large", "Request body too large"


class MetadataLimitExceeded(GatewayError):
    status, code, title = 422, "metadata_limit_exceeded", "Room metadata limit exceeded"


class RateLimited(GatewayError):
    status, code, title = 429, "rate_limited", "Rate limited"


class UpstreamRateLimited(RateLimited):
    """Tencent answered with a frequency-limit code; retried once the shared schedule allows."""


class Draining(GatewayError):
    status, code, title = 503, "draining", "This replica is shutting down"


class Overloaded(GatewayError):
    status, code, title = 503, "overloaded", "This replica is overloaded"


class TooManySubscribers(GatewayError):
    status, code, title = 503, "too_many_subscribers", "This replica serves all the event streams it can"


class UpstreamMisconfigured(GatewayError):
    status, code, title = 503, "upstream_misconfigured", "Tencent rejected the gateway's credentials"


class SignatureRejected(UpstreamMisconfigured):
    """Tencent rejected the UserSig in a way a fresh signature may cure (70001, 70052, ...)."""


class EgressProxyRefused(UpstreamMisconfigured):
    """The egress proxy refused the call (407, 401, 403): its credentials or policy, not Tencent."""

    title = "The egress proxy refused the gateway"


class UpstreamLockedOut(UpstreamMisconfigured):
    """Tencent locked the app out after signature failures (70050); calls pause for the tenant."""


class UpstreamUnavailable(GatewayError):
    status, code, title = 502, "upstream_unavailable", "Tencent is unavailable"


class UpstreamRejected(GatewayError):
    status, code, title = 502, "upstream_rejected", "Tencent rejected the request"


class UpstreamTimeout(GatewayError):
    status, code, title = 504, "upstream_timeout", "Tencent did not answer in time"


class ConfigError(Exception):
    """The configuration is unusable; start-up stops with this message (never a caller error)."""
