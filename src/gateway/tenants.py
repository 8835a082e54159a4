"""Tenants (Tencent apps) and callers (our clients) from the config file; resolving credentials.

The file is YAML or JSON, decoded straight into typed Structs so that a typo or a wrong type
stops start-up with a message naming the field. Secret keys are read from the environment or
from a file (a mounted Kubernetes Secret) and kept in ``Secret`` so they never print.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar
from urllib.parse import urlsplit

import msgspec
from msgspec import Meta

from gateway.catalogue.operations import DOCUMENTED
from gateway.errors import ConfigError, Forbidden, TenantNotFound, Unauthenticated
from gateway.models import Scope
from gateway.transport import proxy_from_url

Region = Literal["china", "singapore", "usa", "jakarta", "seoul", "tokyo", "frankfurt", "mumbai"]

REGION_DOMAINS: dict[str, str] = {
    "china": "console.tim.qq.com",
    "singapore": "adminapisgp.im.qcloud.com",
    "usa": "adminapiusa.im.qcloud.com",
    "jakarta": "adminapiidn.im.qcloud.com",
    "seoul": "adminapikr.im.qcloud.com",
    "tokyo": "adminapijpn.im.qcloud.com",
    "frankfurt": "adminapiger.im.qcloud.com",
    "mumbai": "adminapiind.im.qcloud.com",
}

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
_Sha256 = Annotated[str, Meta(pattern=r"^[0-9a-f]{64}$")]


class TenantConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    sdkappid: Annotated[int, Meta(ge=1, le=2**32 - 1)]
    identifier: Annotated[str, Meta(min_length=1, max_length=32)]
    region: Region
    secret_key_env: str | None = None
    secret_key_file: str | None = None
    base_url: Annotated[str, Meta(pattern=r"^https?://[^/?#]+$")] | None = None
    qps: Annotated[int, Meta(ge=1, le=100_000)] = 200
    api_qps: dict[str, Annotated[int, Meta(ge=1, le=100_000)]] = {}  # single APIs' budgets (limits bought)
    proxy_url: str | None = None  # http://[user:password@]host[:port]; else HTTPS_PROXY / HTTP_PROXY
    callback_token_env: str | None = None  # verifies Tencent's callbacks (README: Tencent's callbacks)
    callback_token_file: str | None = None


class CallerConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    token_sha256: _Sha256
    tenants: list[str]
    scopes: list[Scope]
    weight: Annotated[int, Meta(ge=1, le=1000)] = 1  # its share of a contended budget (README: Fair share)


class ConfigFile(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    tenants: dict[str, TenantConfig]
    callers: dict[str, CallerConfig] = {}


class Secret:
    """A string that never shows itself in ``repr``/``str`` (logs, tracebacks, errors)."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    @property
    def fingerprint(self) -> str:
        """A short one-way digest: tells two keys apart without showing either."""
        return hashlib.sha256(self._value.encode()).hexdigest()[:16]

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__


class Tenant(msgspec.Struct, frozen=True, kw_only=True):
    """One Tencent app, resolved: credentials, where to call it and its per-API budget."""

    name: str
    sdkappid: int
    identifier: str
    secret_key: Secret
    base_url: str
    qps: int
    api_qps: Mapping[str, int] = {}
    proxy_url: Secret | None = None  # the egress proxy to Tencent, if any (its URL may hold a password)
    callback_token: Secret | None = None  # Tencent signs its callbacks with it (set_callback_token)

    def limit(self, api: str, documented: int = 200) -> int:
        """The API's budget per second: ``api_qps`` if it names the API; else ``qps`` for the APIs
        Tencent documents at the common 200/s, and for the others (get_room_list's 10/s, the
        robots' and stats' 100/s) their documented limit, or ``qps`` where that is lower."""
        if api in self.api_qps:
            return self.api_qps[api]
        return self.qps if documented >= 200 else min(documented, self.qps)


class Caller(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    token_sha256: bytes
    tenants: frozenset[str]
    scopes: frozenset[str]
    weight: int = 1

    def may(self, tenant: str, scope: str) -> bool:
        return ("*" in self.tenants or tenant in self.tenants) and scope in self.scopes


class Directory(msgspec.Struct, frozen=True, kw_only=True):
    """The loaded config: tenants by name and callers; answers "who is this and may they?"."""

    tenants: dict[str, Tenant]
    callers: tuple[Caller, ...]
    sources: tuple[str, ...] = ()  # the files it was read from (config, secret-key files)

    def authenticate(self, token: str | None) -> Caller:
        """The caller whose token this is, compared in constant time against every caller."""
        if not token:
            raise Unauthenticated("send 'Authorization: Bearer <token>'")
        digest = hashlib.sha256(token.encode()).digest()
        found: Caller | None = None
        for caller in self.callers:  # no early exit: the time taken does not depend on the match
            if hmac.compare_digest(digest, caller.token_sha256):
                found = caller
        if found is None:
            raise Unauthenticated("unknown bearer token")
        return found

    def authorize(self, caller: Caller, tenant: str, scope: str) -> Tenant:
        """The tenant, if this caller may use it with this scope."""
        if not caller.may(tenant, scope):
            raise Forbidden(f"caller '{caller.name}' may not use scope '{scope}' on tenant '{tenant}'")
        found = self.tenants.get(tenant)
        if found is None:
            raise TenantNotFound(f"no tenant named '{tenant}'")
        return found


T = TypeVar("T")


def parse_config(text: bytes, *, source: str) -> ConfigFile:
    """Decode the YAML or JSON config; the error names the offending field.

    Each tenant and caller is converted on its own so that an error names it: msgspec's own
    paths elide mapping keys (``$.tenants[...].region``).
    """
    try:
        raw = msgspec.json.decode(text) if source.endswith(".json") else msgspec.yaml.decode(text)
    except msgspec.DecodeError as exc:
        raise ConfigError(f"{source}: malformed file: {exc}") from exc
    top = _convert(raw, dict[str, Any], source, "$")
    unknown = sorted(set(top) - {"tenants", "callers"})
    if unknown:
        raise ConfigError(f"{source}: unknown top-level field {unknown[0]!r}")
    if "tenants" not in top:
        raise ConfigError(f"{source}: missing required field 'tenants'")
    tenants = _convert(top["tenants"], dict[str, Any], source, "tenants")
    callers = _convert(top.get("callers") or {}, dict[str, Any], source, "callers")
    return ConfigFile(
        tenants={
            _name(n, source, "tenants"): _convert(t, TenantConfig, source, f"tenants.{n}") for n, t in tenants.items()
        },
        callers={
            _name(n, source, "callers"): _convert(c, CallerConfig, source, f"callers.{n}") for n, c in callers.items()
        },
    )


def _convert(value: object, kind: type[T], source: str, where: str) -> T:
    try:
        return msgspec.convert(value, kind)
    except msgspec.ValidationError as exc:
        head, sep, path = str(exc).partition(" - at `$")
        field = f"{where}{path.rstrip('`')}" if sep else where
        raise ConfigError(f"{source}: {field}: {head}") from exc


def _name(name: str, source: str, section: str) -> str:
    if not _NAME.match(name):
        raise ConfigError(f"{source}: {section}.{name}: names are letters, digits, '_', '.' and '-' (max 63)")
    return name


def load_directory(path: str, env: Mapping[str, str]) -> Directory:
    """Read, parse and resolve the config file at ``path`` (secrets from ``env`` or files)."""
    try:
        text = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path!r} (GATEWAY_CONFIG): {exc.strerror}") from exc
    config = parse_config(text, source=path)
    secret_files = tuple(
        path for t in config.tenants.values() for path in (t.secret_key_file, t.callback_token_file) if path is not None
    )
    return resolve(config, env, sources=(path, *secret_files))


def resolve(config: ConfigFile, env: Mapping[str, str], *, sources: tuple[str, ...] = ()) -> Directory:
    tenants = {name: _tenant(name, t, env) for name, t in config.tenants.items()}
    callers = tuple(_caller(name, c, tenants) for name, c in config.callers.items())
    return Directory(tenants=tenants, callers=callers, sources=sources)


def _api_qps(name: str, cfg: TenantConfig) -> dict[str, int]:
    unknown = sorted(cfg.api_qps.keys() - DOCUMENTED.keys())
    if unknown:
        raise ConfigError(f"tenants.{name}.api_qps: unknown Tencent API {unknown[0]!r}")
    return dict(cfg.api_qps)


def _tenant(name: str, cfg: TenantConfig, env: Mapping[str, str]) -> Tenant:
    base_url = cfg.base_url or f"https://{REGION_DOMAINS[cfg.region]}"
    proxy = cfg.proxy_url or egress_proxy(base_url, env)
    if proxy is not None:
        where = f"tenants.{name}.proxy_url" if cfg.proxy_url else "HTTPS_PROXY / HTTP_PROXY"
        _check_proxy_url(proxy, where)
    return Tenant(
        name=name,
        sdkappid=cfg.sdkappid,
        identifier=cfg.identifier,
        secret_key=Secret(_secret_key(name, cfg, env)),
        base_url=base_url,
        qps=cfg.qps,
        api_qps=_api_qps(name, cfg),
        proxy_url=None if proxy is None else Secret(proxy),
        callback_token=_callback_token(name, cfg, env),
    )


def _callback_token(name: str, cfg: TenantConfig, env: Mapping[str, str]) -> Secret | None:
    """The token Tencent signs callbacks with (1-128 characters), if the tenant receives them."""
    field = f"tenants.{name}"
    if cfg.callback_token_env is not None and cfg.callback_token_file is not None:
        raise ConfigError(f"{field}: set at most one of callback_token_env and callback_token_file")
    if cfg.callback_token_env is None and cfg.callback_token_file is None:
        return None
    value = _read_secret(f"{field}.callback_token", cfg.callback_token_env, cfg.callback_token_file, env)
    if not 1 <= len(value) <= 128:
        raise ConfigError(f"{field}.callback_token: a token is 1 to 128 characters (Tencent's limit)")
    return Secret(value)


def egress_proxy(base_url: str, env: Mapping[str, str]) -> str | None:
    """The proxy the environment names for ``base_url``, as curl and requests read it: for an
    https URL ``https_proxy`` (else ``HTTPS_PROXY``), for http ``http_proxy`` (else
    ``HTTP_PROXY``), unless ``no_proxy`` / ``NO_PROXY`` matches the host."""
    parts = urlsplit(base_url)  # (base_url's form was checked: http(s)://host[:port])
    https = parts.scheme == "https"
    names = ("https_proxy", "HTTPS_PROXY") if https else ("http_proxy", "HTTP_PROXY")
    proxy = next((env[n] for n in names if env.get(n)), None)
    if proxy is None:
        return None
    host, port = parts.hostname or "", parts.port or (443 if https else 80)
    bypass = env.get("no_proxy") or env.get("NO_PROXY") or ""
    return None if any(_bypasses(entry.strip().lower(), host, port) for entry in bypass.split(",")) else proxy


def _bypasses(entry: str, host: str, port: int) -> bool:
    """One NO_PROXY entry: ``*``; a name, matching it and its subdomains (a leading dot is the
    same); an IP address or CIDR block; any of these with ``:port``."""
    if not entry:
        return False
    if entry == "*":
        return True
    name, want = entry, None
    if entry.startswith("["):  # [v6] or [v6]:port
        name, _, tail = entry[1:].partition("]")
        want = int(tail[1:]) if tail.startswith(":") and tail[1:].isdigit() else None
    elif entry.count(":") == 1:  # name:port (a bare IPv6 address has more colons)
        name, _, tail = entry.partition(":")
        want = int(tail) if tail.isdigit() else -1
    if want is not None and want != port:
        return False
    name = name.lstrip(".")
    try:
        return ipaddress.ip_address(host) in ipaddress.ip_network(name, strict=False)
    except ValueError:
        return host == name or host.endswith("." + name)


def _check_proxy_url(url: str, where: str) -> None:
    """Refused at load time, naming where it came from (the transport's message never holds
    the password)."""
    try:
        proxy_from_url(url)
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}") from exc


def _secret_key(name: str, cfg: TenantConfig, env: Mapping[str, str]) -> str:
    field = f"tenants.{name}"
    if (cfg.secret_key_env is None) == (cfg.secret_key_file is None):
        raise ConfigError(f"{field}: set exactly one of secret_key_env and secret_key_file")
    return _read_secret(f"{field}.secret_key", cfg.secret_key_env, cfg.secret_key_file, env)


def _read_secret(field: str, env_name: str | None, path: str | None, env: Mapping[str, str]) -> str:
    """A secret from the environment variable ``env_name``, else from the file ``path`` (a
    mounted Kubernetes Secret); empty or unreadable stops start-up, naming ``field``_env/_file."""
    if env_name is not None:
        value = env.get(env_name, "")
        if not value:
            raise ConfigError(f"{field}_env: environment variable {env_name} is not set")
        return value
    assert path is not None
    try:
        value = Path(path).read_text().strip()
    except OSError as exc:
        raise ConfigError(f"{field}_file: cannot read {path}: {exc.strerror}") from exc
    if not value:
        raise ConfigError(f"{field}_file: {path} is empty")
    return value


def _caller(name: str, cfg: CallerConfig, tenants: Mapping[str, Tenant]) -> Caller:
    unknown = [t for t in cfg.tenants if t != "*" and t not in tenants]
    if unknown:
        raise ConfigError(f"callers.{name}.tenants: unknown tenant {unknown[0]!r}")
    if not cfg.scopes:
        raise ConfigError(f"callers.{name}.scopes: give at least one of read, write, events")
    return Caller(
        name=name,
        token_sha256=bytes.fromhex(cfg.token_sha256),
        tenants=frozenset(cfg.tenants),
        scopes=frozenset(cfg.scopes),
        weight=cfg.weight,
    )


def hash_token(token: str) -> str:
    """The ``token_sha256`` value to put in the config for a bearer token."""
    return hashlib.sha256(token.encode()).hexdigest()
