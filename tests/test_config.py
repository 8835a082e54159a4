"""Config file and settings: good ones load, bad ones stop start-up with the field named."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gateway.errors import ConfigError
from gateway.settings import Settings, settings_from_env
from gateway.tenants import REGION_DOMAINS, Secret, hash_token, load_directory
from tests.support import SECRETS, config_yaml

GOOD = config_yaml("http://127.0.0.1:9100")


def write(tmp_path: Path, text: str, name: str = "gateway.yaml") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_yaml_config_loads(tmp_path: Path) -> None:
    """Tenants resolve their keys from the environment and keep base_url overrides."""
    directory = load_directory(write(tmp_path, GOOD), SECRETS)
    acme = directory.tenants["acme"]
    assert acme.sdkappid == 1400000001
    assert acme.base_url == "http://127.0.0.1:9100"
    assert acme.secret_key.reveal() == SECRETS["ACME_SECRET_KEY"]
    assert acme.qps == 200
    assert {c.name for c in directory.callers} == {"checkout", "viewer", "writer", "globex-app", "ops", "listener"}


def test_a_callers_weight_defaults_to_one(tmp_path: Path) -> None:
    """Weights are optional (1 each); a given weight is kept as configured."""
    weighted = config_yaml("http://127.0.0.1:9100", weights={"writer": 4})
    callers = {c.name: c.weight for c in load_directory(write(tmp_path, weighted), SECRETS).callers}
    assert callers == {"checkout": 1, "viewer": 1, "writer": 4, "globex-app": 1, "ops": 1, "listener": 1}


def test_json_config_loads(tmp_path: Path) -> None:
    """A .json file is read as JSON."""
    config = {
        "tenants": {"t": {"sdkappid": 1, "identifier": "admin", "region": "china", "secret_key_env": "K"}},
        "callers": {"c": {"token_sha256": hash_token("x"), "tenants": ["*"], "scopes": ["read"]}},
    }
    directory = load_directory(write(tmp_path, json.dumps(config), "g.json"), {"K": "secret"})
    assert directory.tenants["t"].base_url == "https://console.tim.qq.com"


@pytest.mark.parametrize(("region", "domain"), sorted(REGION_DOMAINS.items()))
def test_regions_map_to_tencents_domains(tmp_path: Path, region: str, domain: str) -> None:
    """Each region calls its documented domain over HTTPS."""
    text = f"tenants:\n  t:\n    sdkappid: 1\n    identifier: admin\n    region: {region}\n    secret_key_env: K\n"
    assert load_directory(write(tmp_path, text), {"K": "s"}).tenants["t"].base_url == f"https://{domain}"


def test_secret_key_from_a_file(tmp_path: Path) -> None:
    """secret_key_file reads a mounted secret, trailing newline stripped."""
    (tmp_path / "key").write_text("from-file\n")
    text = "tenants:\n  t:\n    sdkappid: 1\n    identifier: a\n    region: usa\n"
    text += f"    secret_key_file: {tmp_path / 'key'}\n"
    assert load_directory(write(tmp_path, text), {}).tenants["t"].secret_key.reveal() == "from-file"


BROKEN = [
    (GOOD, {}, "tenants.acme.secret_key_env: environment variable ACME_SECRET_KEY is not set"),
    (GOOD.replace("region: singapore", "region: mars"), SECRETS, "tenants.acme.region: Invalid enum value 'mars'"),
    (
        GOOD.replace("sdkappid: 1400000001", "sdkapid: 1400000001"),
        SECRETS,
        "tenants.acme: Object contains unknown field `sdkapid`",
    ),
    (GOOD.replace("sdkappid: 1400000001", "sdkappid: lots"), SECRETS, "tenants.acme.sdkappid: Expected `int`"),
    (GOOD.replace("tenants: [acme]", "tenants: [nope]", 1), SECRETS, "callers.checkout.tenants: unknown tenant 'nope'"),
    (GOOD.replace("scopes: [read]", "scopes: [admin]", 1), SECRETS, "callers.viewer.scopes[0]"),
    (GOOD.replace(hash_token("token-rw"), "abc"), SECRETS, "callers.checkout.token_sha256"),
    (GOOD.replace("base_url: http://127.0.0.1:9100", "base_url: ftp://x/y", 1), SECRETS, "tenants.acme.base_url"),
    ("tenants: [oops", SECRETS, "malformed"),
    ("tenants:\n  t:\n    sdkappid: 1\n    identifier: a\n    region: usa\n", {}, "set exactly one of"),
    ("callers: {}\n", {}, "missing required field 'tenants'"),
    ("tenants: {}\nextra: 1\n", {}, "unknown top-level field 'extra'"),
    ("- a list\n", {}, "Expected `object`"),
    ("tenants:\n  'bad name!': {}\n", {}, "tenants.bad name!: names are"),
    (
        config_yaml("http://127.0.0.1:9100", weights={"checkout": 0}),
        SECRETS,
        "callers.checkout.weight: Expected `int` >= 1",
    ),
    (
        config_yaml("http://127.0.0.1:9100", weights={"writer": -2}),
        SECRETS,
        "callers.writer.weight: Expected `int` >= 1",
    ),
    (
        GOOD.replace("  viewer:\n", "  viewer:\n    weight: 1.5\n"),
        SECRETS,
        "callers.viewer.weight: Expected `int`, got `float`",
    ),
    (
        GOOD.replace("  viewer:\n", "  viewer:\n    weight: heavy\n"),
        SECRETS,
        "callers.viewer.weight: Expected `int`, got `str`",
    ),
    (
        GOOD.replace("  viewer:\n", "  viewer:\n    weight: true\n"),
        SECRETS,
        "callers.viewer.weight: Expected `int`, got `bool`",
    ),
    (GOOD, {k: v for k, v in SECRETS.items() if k != "ACME_CALLBACK_TOKEN"}, "tenants.acme.callback_token_env"),
    (
        GOOD.replace("callback_token_env: ACME_CALLBACK_TOKEN", "callback_token_env: X\n    callback_token_file: /y"),
        SECRETS,
        "tenants.acme: set at most one of callback_token_env and callback_token_file",
    ),
    (GOOD, {**SECRETS, "ACME_CALLBACK_TOKEN": "t" * 129}, "a token is 1 to 128 characters"),
]


@pytest.mark.parametrize(("text", "env", "message"), BROKEN)
def test_broken_config_names_the_field(tmp_path: Path, text: str, env: dict[str, str], message: str) -> None:
    """Every config error says which field is wrong."""
    with pytest.raises(ConfigError) as error:
        load_directory(write(tmp_path, text), env)
    assert message in str(error.value)


def test_api_qps_names_the_commands_the_gateway_calls(tmp_path: Path) -> None:
    """A tenant's api_qps may name any command the gateway calls (one a body chooses, the callback
    settings' too), and no other."""
    known = GOOD.replace("    qps: 200\n", "    qps: 200\n    api_qps: {send_custom_msg: 50, update_callback: 5}\n", 1)
    limits = load_directory(write(tmp_path, known), SECRETS).tenants["acme"].api_qps
    assert limits == {"send_custom_msg": 50, "update_callback": 5}
    with pytest.raises(ConfigError, match=r"tenants\.acme\.api_qps: unknown Tencent API 'send_msg'"):
        load_directory(write(tmp_path, known.replace("update_callback", "send_msg")), SECRETS)


def test_missing_config_file(tmp_path: Path) -> None:
    """A missing file names the path and the variable that sets it."""
    with pytest.raises(ConfigError, match="GATEWAY_CONFIG"):
        load_directory(str(tmp_path / "absent.yaml"), {})


def test_secret_never_prints() -> None:
    """A Secret's repr and str hide the value (tracebacks, logs, error messages)."""
    secret = Secret("hunter2")
    assert "hunter2" not in repr(secret)
    assert "hunter2" not in str(secret)
    assert "hunter2" not in repr([secret])


def test_settings_from_env() -> None:
    """GATEWAY_* variables are parsed into typed settings; unrelated variables are ignored."""
    settings = settings_from_env({"GATEWAY_CACHE_TTL": "2.5", "GATEWAY_PORT": "9000", "HOME": "/root"})
    assert settings.cache_ttl == 2.5
    assert settings.port == 9000
    assert settings_from_env({}) == Settings()


@pytest.mark.parametrize(
    ("env", "name"),
    [
        ({"GATEWAY_CACHE_TTL": "soon"}, "GATEWAY_CACHE_TTL"),
        ({"GATEWAY_UPSTREAM_TIMEOUT": "2"}, "GATEWAY_UPSTREAM_TIMEOUT"),
        ({"GATEWAY_LOG_LEVEL": "loud"}, "GATEWAY_LOG_LEVEL"),
        ({"GATEWAY_USERSIG_TTL": "60"}, "GATEWAY_USERSIG_TTL"),
    ],
)
def test_bad_settings_name_the_variable(env: dict[str, str], name: str) -> None:
    """A bad GATEWAY_* value stops start-up naming the variable."""
    with pytest.raises(ConfigError, match=name):
        settings_from_env(env)


# One value breaking each rule in Settings.rules, and the message an operator reads.
BROKEN_SETTINGS = {
    "GATEWAY_CACHE_TTL": ("0", "GATEWAY_CACHE_TTL=0 must be > 0"),
    "GATEWAY_ROOM_LIST_TTL": ("-1", "GATEWAY_ROOM_LIST_TTL=-1 must be > 0"),
    "GATEWAY_REDIS_TIMEOUT": ("0", "GATEWAY_REDIS_TIMEOUT=0 must be > 0"),
    "GATEWAY_REDIS_COOL_OFF": ("0", "GATEWAY_REDIS_COOL_OFF=0 must be > 0"),
    "GATEWAY_FILL_LOCK_TTL": ("0", "GATEWAY_FILL_LOCK_TTL=0 must be > 0"),
    "GATEWAY_STALE_TTL": ("-0.5", "GATEWAY_STALE_TTL=-0.5 must be ≥ 0"),
    "GATEWAY_BUDGET_MAX_WAIT": ("-1", "GATEWAY_BUDGET_MAX_WAIT=-1 must be ≥ 0"),
    "GATEWAY_BUDGET_JITTER": ("1", "GATEWAY_BUDGET_JITTER=1 must be ≥ 0 and < 1"),
    "GATEWAY_MAX_REPLICAS": ("0", "GATEWAY_MAX_REPLICAS=0 must be ≥ 1"),
    "GATEWAY_UPSTREAM_TIMEOUT": ("2", "GATEWAY_UPSTREAM_TIMEOUT=2 must be > 3 (seconds: Tencent's own backend"),
    "GATEWAY_DEADLINE": ("4", "GATEWAY_DEADLINE=4 must be ≥ GATEWAY_UPSTREAM_TIMEOUT (5.0)"),
    "GATEWAY_RETRY_ATTEMPTS": ("0", "GATEWAY_RETRY_ATTEMPTS=0 must be ≥ 1"),
    "GATEWAY_UPSTREAM_CONNECTIONS": ("0", "GATEWAY_UPSTREAM_CONNECTIONS=0 must be ≥ 1"),
    "GATEWAY_USERSIG_TTL": ("60", "GATEWAY_USERSIG_TTL=60 must be from 3600 (an hour) to 315360000 (ten years)"),
    "GATEWAY_USERSIG_REFRESH_MARGIN": (
        "604800",
        "GATEWAY_USERSIG_REFRESH_MARGIN=604800 must be > 0 and < GATEWAY_USERSIG_TTL (604800)",
    ),
    "GATEWAY_PORT": ("70000", "GATEWAY_PORT=70000 must be from 0 to 65535"),
    "GATEWAY_EVENTS_KEEP": ("0", "GATEWAY_EVENTS_KEEP=0 must be ≥ 1"),
    "GATEWAY_EVENTS_KEEP_SECONDS": ("0", "GATEWAY_EVENTS_KEEP_SECONDS=0 must be > 0"),
    "GATEWAY_EVENTS_QUEUE": ("0", "GATEWAY_EVENTS_QUEUE=0 must be ≥ 1"),
    "GATEWAY_EVENTS_MAX_SUBSCRIBERS": ("0", "GATEWAY_EVENTS_MAX_SUBSCRIBERS=0 must be ≥ 1"),
    "GATEWAY_EVENTS_HEARTBEAT": ("0", "GATEWAY_EVENTS_HEARTBEAT=0 must be > 0"),
    "GATEWAY_EVENTS_HOLD": ("-1", "GATEWAY_EVENTS_HOLD=-1 must be ≥ 0"),
    "GATEWAY_OVERLOAD_LAG": ("-0.5", "GATEWAY_OVERLOAD_LAG=-0.5 must be ≥ 0 (0: never shed)"),
    "GATEWAY_OVERLOAD_UNREADY_AFTER": ("0", "GATEWAY_OVERLOAD_UNREADY_AFTER=0 must be > 0"),
    "GATEWAY_MAX_IN_FLIGHT": ("-1", "GATEWAY_MAX_IN_FLIGHT=-1 must be ≥ 0 (0: no bound)"),
    "GATEWAY_OVERLOAD_ACCEPT_QUEUE": (
        "4096",
        "GATEWAY_OVERLOAD_ACCEPT_QUEUE=4096 must be ≥ 0 and < 4096, the listen backlog (0: never refuse for it)",
    ),
    "GATEWAY_IDEMPOTENCY_TTL": ("0.5", "GATEWAY_IDEMPOTENCY_TTL=0.5 must be ≥ 1"),
    "GATEWAY_IDEMPOTENCY_MAX_KEYS": ("0", "GATEWAY_IDEMPOTENCY_MAX_KEYS=0 must be ≥ 1"),
    "GATEWAY_CACHE_MAX_ROOMS": ("-1", "GATEWAY_CACHE_MAX_ROOMS=-1 must be ≥ 1"),
    "GATEWAY_RETRY_BACKOFF": ("-0.1", "GATEWAY_RETRY_BACKOFF=-0.1 must be ≥ 0"),
    "GATEWAY_RETRY_BACKOFF_MAX": ("0.05", "GATEWAY_RETRY_BACKOFF_MAX=0.05 must be ≥ GATEWAY_RETRY_BACKOFF (0.1)"),
    "GATEWAY_LOCKOUT_SECONDS": ("-1", "GATEWAY_LOCKOUT_SECONDS=-1 must be ≥ 0"),
    "GATEWAY_RATE_LIMIT_PAUSE": ("-1", "GATEWAY_RATE_LIMIT_PAUSE=-1 must be ≥ 0"),
    "GATEWAY_MISCONFIG_COOLDOWN": ("-1", "GATEWAY_MISCONFIG_COOLDOWN=-1 must be ≥ 0"),
    "GATEWAY_DRAIN_SECONDS": ("-1", "GATEWAY_DRAIN_SECONDS=-1 must be ≥ 0"),
    "GATEWAY_CONFIG_RELOAD_INTERVAL": ("-1", "GATEWAY_CONFIG_RELOAD_INTERVAL=-1 must be ≥ 0 (0: never)"),
}


@pytest.mark.parametrize(("variable", "value", "message"), [(k, *v) for k, v in BROKEN_SETTINGS.items()])
def test_a_setting_breaking_its_rule_names_the_rule_and_the_value(variable: str, value: str, message: str) -> None:
    """Every constrained setting, given a value its rule forbids, stops start-up with a message
    naming the variable, the value and the rule (and where the README states them)."""
    with pytest.raises(ConfigError) as error:
        settings_from_env({variable: value})
    assert str(error.value).startswith(message)
    assert str(error.value).endswith(" (see README: Configuration)")


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("GATEWAY_CACHE_TTL", "abc", "GATEWAY_CACHE_TTL=abc must be a number"),
        ("GATEWAY_PORT", "8.5", "GATEWAY_PORT=8.5 must be a whole number"),
        ("GATEWAY_LOG_LEVEL", "loud", "GATEWAY_LOG_LEVEL=loud must be one of debug, info, warning, error"),
    ],
)
def test_a_setting_of_the_wrong_type_names_the_value_and_the_type(variable: str, value: str, message: str) -> None:
    """A value that is not even of the setting's type is refused the same way: the variable,
    the value and what it must be."""
    with pytest.raises(ConfigError) as error:
        settings_from_env({variable: value})
    assert str(error.value) == f"{message} (see README: Configuration)"


def test_every_rule_is_stated_in_the_readme_table() -> None:
    """The README's settings table states each constrained setting's rule (its Rule column is
    not empty), and the table is one table (no paragraph splits it)."""
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    rows = [line for line in readme.splitlines() if line.startswith("| `GATEWAY_")]
    table = readme[readme.index(rows[0]) : readme.index(rows[-1])]
    assert all(line.startswith("|") for line in table.splitlines())
    for name, _, _ in Settings().rules():
        row = next(line for line in rows if f"`GATEWAY_{name.upper()}`" in line)
        assert row.split("|")[3].strip(), row


def test_every_constrained_setting_is_covered_by_the_table_above() -> None:
    """The table of broken settings covers every rule Settings checks (a new rule needs a row)."""
    assert {f"GATEWAY_{name.upper()}" for name, _, _ in Settings().rules()} == set(BROKEN_SETTINGS)
