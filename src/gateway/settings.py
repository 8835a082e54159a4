"""Process settings: one frozen value parsed once from a mapping (``os.environ`` is passed in).

Every knob is an environment variable ``GATEWAY_<NAME>``; the README's configuration table and
the Helm chart use these same names.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal, get_args, get_type_hints

import msgspec

from gateway.errors import ConfigError

LogLevel = Literal["debug", "info", "warning", "error"]
LISTEN_BACKLOG = 4096  # the listener's accept queue (the kernel caps it at net.core.somaxconn)


class Settings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Everything the service needs besides the tenant/caller file. Times are in seconds."""

    config: str = "gateway.yaml"
    redis_url: str | None = None
    redis_prefix: str = "lrg:"
    redis_timeout: float = 0.5
    redis_cool_off: float = 1.0
    host: str = "0.0.0.0"  # noqa: S104 - a container service listens on all interfaces
    port: int = 8080
    log_level: LogLevel = "info"
    # room cache
    cache_ttl: float = 1.0
    stale_ttl: float = 30.0
    cache_max_rooms: int = 100_000
    room_list_ttl: float = 2.0  # get_room_list's pages (10/s at Tencent): cached and coalesced this long
    fill_lock_ttl: float = 5.0
    # budget
    budget_max_wait: float = 2.0
    budget_jitter: float = 0.017
    max_replicas: int = 1
    # upstream
    upstream_timeout: float = 5.0
    deadline: float = 10.0
    retry_attempts: int = 4
    retry_backoff: float = 0.1
    retry_backoff_max: float = 2.0
    lockout_seconds: float = 60.0
    rate_limit_pause: float = 1.0
    misconfig_cooldown: float = 15.0
    upstream_connections: int = 256
    upstream_ca_file: str | None = None  # a CA bundle for TLS to Tencent (a TLS-intercepting proxy's)
    # signatures
    usersig_ttl: int = 7 * 86400
    usersig_refresh_margin: int = 86400
    # room events (SSE)
    events_keep: int = 10_000  # events kept per tenant
    events_keep_seconds: float = 86_400.0  # and for at most this long
    events_queue: int = 1_000  # a subscriber's queue; past it the subscriber reads the log itself
    events_max_subscribers: int = 1_000  # event streams per replica
    events_heartbeat: float = 15.0  # a comment on an idle stream this often
    events_hold: int = 10_000  # events held per replica while Redis is unreachable
    # shutdown and reload
    drain_seconds: float = 20.0
    config_reload_interval: float = 5.0
    # overload (overload.py): shed new API work past this event-loop lag (0: never); unready once overloaded this long
    overload_lag: float = 0.25
    overload_unready_after: float = 5.0
    max_in_flight: int = 1024  # API requests in flight a replica admits (0: no bound); past it, 503 overloaded
    overload_accept_queue: int = 128  # connections waiting to be accepted past which API work is refused (0: never)
    # Idempotency-Key (SPEC §10)
    idempotency_ttl: float = 86_400.0  # a key's answer is kept this long
    idempotency_max_keys: int = 100_000  # keys a replica keeps in process (embedded, and through Redis outages)

    def __post_init__(self) -> None:
        for name, ok, rule in self.rules():
            if not ok:
                value = _shown(getattr(self, name))
                raise ConfigError(f"{_env(name)}={value} must be {rule} (see README: Configuration)")

    def rules(self) -> list[tuple[str, bool, str]]:
        """Each constrained setting: (its name, whether this value keeps the rule, the rule)."""
        timeout, ttl = self.upstream_timeout, self.usersig_ttl
        return [
            ("cache_ttl", self.cache_ttl > 0, "> 0"),
            ("room_list_ttl", self.room_list_ttl > 0, "> 0"),
            ("redis_timeout", self.redis_timeout > 0, "> 0"),
            ("redis_cool_off", self.redis_cool_off > 0, "> 0"),
            ("fill_lock_ttl", self.fill_lock_ttl > 0, "> 0"),
            ("stale_ttl", self.stale_ttl >= 0, "≥ 0"),
            ("budget_max_wait", self.budget_max_wait >= 0, "≥ 0"),
            ("budget_jitter", 0 <= self.budget_jitter < 1, "≥ 0 and < 1"),
            ("max_replicas", self.max_replicas >= 1, "≥ 1"),
            # Tencent's own backend budget is 3 s: a shorter wait gives up on calls still running there
            ("upstream_timeout", timeout > 3.0, "> 3 (seconds: Tencent's own backend timeout is 3 s)"),
            ("deadline", self.deadline >= timeout, f"≥ GATEWAY_UPSTREAM_TIMEOUT ({timeout})"),
            ("retry_attempts", self.retry_attempts >= 1, "≥ 1"),
            ("upstream_connections", self.upstream_connections >= 1, "≥ 1"),
            ("usersig_ttl", 3600 <= ttl <= 10 * 365 * 86400, "from 3600 (an hour) to 315360000 (ten years)"),
            (
                "usersig_refresh_margin",
                0 < self.usersig_refresh_margin < ttl,
                f"> 0 and < GATEWAY_USERSIG_TTL ({ttl})",
            ),
            ("port", 0 <= self.port <= 65535, "from 0 to 65535"),
            ("events_keep", self.events_keep >= 1, "≥ 1"),
            ("events_keep_seconds", self.events_keep_seconds > 0, "> 0"),
            ("events_queue", self.events_queue >= 1, "≥ 1"),
            ("events_max_subscribers", self.events_max_subscribers >= 1, "≥ 1"),
            ("events_heartbeat", self.events_heartbeat > 0, "> 0"),
            ("events_hold", self.events_hold >= 0, "≥ 0"),
            ("overload_lag", self.overload_lag >= 0, "≥ 0 (0: never shed)"),
            ("overload_unready_after", self.overload_unready_after > 0, "> 0"),
            ("max_in_flight", self.max_in_flight >= 0, "≥ 0 (0: no bound)"),
            (
                "overload_accept_queue",
                0 <= self.overload_accept_queue < LISTEN_BACKLOG,
                f"≥ 0 and < {LISTEN_BACKLOG}, the listen backlog (0: never refuse for it)",
            ),
            ("idempotency_ttl", self.idempotency_ttl >= 1, "≥ 1"),
            ("idempotency_max_keys", self.idempotency_max_keys >= 1, "≥ 1"),
            ("cache_max_rooms", self.cache_max_rooms >= 1, "≥ 1"),
            ("retry_backoff", self.retry_backoff >= 0, "≥ 0"),
            (
                "retry_backoff_max",
                self.retry_backoff_max >= self.retry_backoff,
                f"≥ GATEWAY_RETRY_BACKOFF ({_shown(self.retry_backoff)})",
            ),
            ("lockout_seconds", self.lockout_seconds >= 0, "≥ 0"),
            ("rate_limit_pause", self.rate_limit_pause >= 0, "≥ 0"),
            ("misconfig_cooldown", self.misconfig_cooldown >= 0, "≥ 0"),
            ("drain_seconds", self.drain_seconds >= 0, "≥ 0"),
            ("config_reload_interval", self.config_reload_interval >= 0, "≥ 0 (0: never)"),
        ]


def _env(name: str) -> str:
    return f"GATEWAY_{name.upper()}"


def _shown(value: object) -> str:
    """A value as an operator writes it: 4 rather than 4.0."""
    return f"{value:g}" if isinstance(value, float) else str(value)


_PREFIX = "GATEWAY_"


def settings_from_env(env: Mapping[str, str], **overrides: object) -> Settings:
    """Parse ``GATEWAY_*`` variables (strings) into Settings; ``overrides`` win (CLI flags)."""
    names = set(Settings.__struct_fields__)
    raw: dict[str, object] = {}
    for key, value in env.items():
        if key.startswith(_PREFIX) and key[len(_PREFIX) :].lower() in names and value != "":
            raw[key[len(_PREFIX) :].lower()] = value
    raw.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return msgspec.convert(raw, Settings, strict=False)
    except msgspec.ValidationError as exc:
        raise ConfigError(_invalid(str(exc), raw)) from exc


def _invalid(message: str, raw: Mapping[str, object]) -> str:
    """msgspec's "Expected `float`, got `str` - at `$.cache_ttl`" as the variable the operator
    sets, its value and the type it must have."""
    head, sep, path = message.partition(" - at `$.")
    if not sep:
        return f"invalid setting: {message}"
    name = path.rstrip("`")
    wanted = {"float": "a number", "int": "a whole number", "bool": "true or false"}
    choices = get_args(get_type_hints(Settings).get(name))
    if head.startswith("Invalid enum value") and choices:
        rule = f"must be one of {', '.join(map(str, choices))}"
    elif head.startswith("Expected `"):
        kind = head.removeprefix("Expected `").partition("`")[0]
        rule = f"must be {wanted.get(kind, kind)}"
    else:
        rule = f"is invalid: {head}"
    return f"{_env(name)}={raw.get(name)!s} {rule} (see README: Configuration)"
