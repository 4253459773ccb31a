"""Config loading: every refusal names the file, the key path and what is expected."""

from __future__ import annotations

import copy
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rolesanywhere_agent import config as config_module
from rolesanywhere_agent import pki
from rolesanywhere_agent.config import (
    AgentConfig,
    ListenConfig,
    LogConfig,
    load_config,
    parse_config,
)
from rolesanywhere_agent.errors import ConfigError
from rolesanywhere_agent.identity import FileKeySigner
from rolesanywhere_agent.signing import sign_request

ANCHOR = "arn:aws:rolesanywhere:eu-west-1:111122223333:trust-anchor/a1b2c3d4"
PROFILE = "arn:aws:rolesanywhere:eu-west-1:111122223333:profile/e5f6a7b8"
ROLE = "arn:aws:iam::111122223333:role/web"
SOURCE = Path("/etc/rolesanywhere-agent/agent.yaml")
ENVIRON = {"CREDENTIALS_DIRECTORY": "/run/credentials/rolesanywhere-agent.service"}

PROFILE_KEYS = (
    "ca_bundle, certificate, endpoint, imds, insecure, intermediates, passphrase_file, "
    "pkcs12, private_key, profile_arn, proxy, region, role_arn, role_session_name, "
    "session_duration, token_file, trust_anchor_arn"
)


def profile(**overrides: Any) -> dict[str, Any]:
    """A valid profile; a value of None removes the key."""
    doc: dict[str, Any] = {
        "certificate": "/etc/rolesanywhere-agent/web/cert.pem",
        "private_key": "/etc/rolesanywhere-agent/web/key.pem",
        "trust_anchor_arn": ANCHOR,
        "profile_arn": PROFILE,
        "role_arn": ROLE,
    }
    doc.update(overrides)
    return {key: value for key, value in doc.items() if value is not None}


def document(**overrides: Any) -> dict[str, Any]:
    return {"profiles": {"web": profile(**overrides)}}


def refusal(doc: Any, environ: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as caught:
        parse_config(doc, SOURCE, ENVIRON if environ is None else environ)
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_minimal_profile_gets_the_documented_defaults():
    config = parse_config(document(), SOURCE, {})

    web = config.profiles["web"]
    assert config.listen == ListenConfig("127.0.0.1", 9912, (), False)
    assert config.log == LogConfig("json", "info")
    assert config.warnings == ()
    assert web.session.region == "eu-west-1"
    assert web.session.endpoint == "https://rolesanywhere.eu-west-1.amazonaws.com"
    assert web.session.duration_seconds == 3600
    assert web.token_file.path == Path("/run/rolesanywhere-agent/web.token")
    assert web.token_file.mode == 0o600
    assert web.imds is None


def test_the_design_example_file_loads(tmp_path):
    text = f"""\
listen: {{host: 127.0.0.1, port: 9912}}
log: {{format: json, level: info}}
profiles:
  web:
    certificate: /etc/rolesanywhere-agent/web/cert.pem
    intermediates: /etc/rolesanywhere-agent/web/chain.pem
    private_key: /etc/rolesanywhere-agent/web/key.pem
    trust_anchor_arn: {ANCHOR}
    profile_arn: {PROFILE}
    role_arn: {ROLE}
    session_duration: 3600
    token_file: {{path: /run/rolesanywhere-agent/web.token, mode: "0640", group: web}}
    imds: {{port: 9911}}
"""
    path = tmp_path / "agent.yaml"
    path.write_text(text)

    web = load_config(path, {}).profiles["web"]

    assert web.identity.intermediates == Path("/etc/rolesanywhere-agent/web/chain.pem")
    assert web.token_file.mode == 0o640
    assert web.token_file.group == "web"
    assert web.imds is not None and web.imds.port == 9911


# --- the file itself ----------------------------------------------------------------------


def test_missing_file(tmp_path):
    path = tmp_path / "nowhere.yaml"

    with pytest.raises(ConfigError) as caught:
        load_config(path, {})

    assert str(caught.value) == f"{path}: config file not found"


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("profiles: [unclosed", "expected ',' or ']', but got '<stream end>' at line 1"),
        ("profiles:\n  web: a: b\n", "mapping values are not allowed here at line 2"),
        ("\tprofiles: {}\n", "found character '\\t' that cannot start any token at line 1"),
    ],
)
def test_not_yaml(tmp_path, text, problem):
    path = tmp_path / "agent.yaml"
    path.write_text(text)

    with pytest.raises(ConfigError) as caught:
        load_config(path, {})

    assert str(caught.value) == f"{path}: not valid YAML ({problem})"


@pytest.mark.parametrize(
    ("doc", "kind"), [([1, 2], "a list"), ("profiles", "a string"), (3, "int")]
)
def test_top_level_not_a_mapping(doc, kind):
    assert refusal(doc) == f"{SOURCE}: expected a mapping, got {kind}"


def test_utf8_bom_in_the_yaml_file_is_accepted(tmp_path):
    path = tmp_path / "agent.yaml"
    path.write_bytes(b"\xef\xbb\xbf" + yaml.safe_dump(document()).encode().replace(b"\n", b"\r\n"))

    config = load_config(path, {})

    assert list(config.profiles) == ["web"]
    assert config.source == path


# --- structure ----------------------------------------------------------------------------


def test_unknown_top_level_key():
    doc = {**document(), "profile": {}}

    assert refusal(doc) == (
        f"{SOURCE}: profile: unknown key (did you mean profiles?); "
        "expected one of listen, log, profiles, token_dir"
    )


def test_unknown_profile_key_suggests_the_close_one():
    doc = document(certifcate="/x.pem")

    assert refusal(doc) == (
        f"{SOURCE}: profiles.web.certifcate: unknown key (did you mean certificate?); "
        f"expected one of {PROFILE_KEYS}"
    )


def test_unknown_key_without_a_close_match_lists_the_keys():
    doc = document(colour="blue")

    assert refusal(doc) == (
        f"{SOURCE}: profiles.web.colour: unknown key; expected one of {PROFILE_KEYS}"
    )


@pytest.mark.parametrize("doc", [{}, {"profiles": None}, None])
def test_missing_profiles(doc):
    assert refusal(doc) == (
        f"{SOURCE}: profiles: required: a mapping of profile names to their settings"
    )


def test_empty_profiles():
    assert refusal({"profiles": {}}) == f"{SOURCE}: profiles: expected at least one profile"


def test_profiles_not_a_mapping():
    assert refusal({"profiles": ["web"]}) == f"{SOURCE}: profiles: expected a mapping, got a list"


def test_profile_without_settings():
    assert refusal({"profiles": {"web": None}}) == (
        f"{SOURCE}: profiles.web: expected a mapping, got nothing"
    )


@pytest.mark.parametrize("name", ["we b", "-web", "web/prod", "w" * 65, "ünïcode"])
def test_bad_profile_name(name):
    doc = {"profiles": {name: profile()}}

    assert refusal(doc) == (
        f"{SOURCE}: profiles.{name}: expected a name of 1-64 letters, digits, '.', '_' or '-' "
        "that starts with a letter or digit"
    )


@pytest.mark.parametrize("key", ["certificate", "private_key"])
def test_missing_certificate_or_key(key):
    doc = document(**{key: None})

    assert refusal(doc) == f"{SOURCE}: profiles.web.{key}: required (a file path), or set pkcs12"


def test_pkcs12_together_with_certificate():
    doc = document(pkcs12="/etc/identity.p12", private_key=None)

    assert refusal(doc) == (
        f"{SOURCE}: profiles.web.certificate: not used together with pkcs12; drop one"
    )


def test_pkcs12_alone_is_enough():
    doc = document(pkcs12="/etc/identity.p12", certificate=None, private_key=None)

    identity = parse_config(doc, SOURCE, {}).profiles["web"].identity

    assert identity.pkcs12 == Path("/etc/identity.p12")
    assert identity.certificate is None and identity.private_key is None


# --- ARNs, region, endpoint ---------------------------------------------------------------

ANCHOR_SHAPE = "arn:aws:rolesanywhere:REGION:ACCOUNT:trust-anchor/ID"
PROFILE_SHAPE = "arn:aws:rolesanywhere:REGION:ACCOUNT:profile/ID"
ROLE_SHAPE = "arn:aws:iam::ACCOUNT:role/NAME"


@pytest.mark.parametrize(
    ("key", "value", "shape"),
    [
        ("trust_anchor_arn", PROFILE, ANCHOR_SHAPE),
        ("trust_anchor_arn", ANCHOR.replace("111122223333", "1111"), ANCHOR_SHAPE),
        ("trust_anchor_arn", ANCHOR.replace("rolesanywhere", "iam"), ANCHOR_SHAPE),
        ("profile_arn", ANCHOR, PROFILE_SHAPE),
        ("profile_arn", PROFILE + "/extra", PROFILE_SHAPE),
        ("role_arn", "arn:aws:iam::111122223333:user/web", ROLE_SHAPE),
        ("role_arn", "web", ROLE_SHAPE),
    ],
)
def test_malformed_arn(key, value, shape):
    doc = document(**{key: value})

    assert refusal(doc) == f"{SOURCE}: profiles.web.{key}: expected {shape}, got {value!r}"


@pytest.mark.parametrize(
    ("key", "shape"),
    [("trust_anchor_arn", ANCHOR_SHAPE), ("profile_arn", PROFILE_SHAPE), ("role_arn", ROLE_SHAPE)],
)
def test_missing_arn(key, shape):
    doc = document(**{key: None})

    assert refusal(doc) == f"{SOURCE}: profiles.web.{key}: required: {shape}"


def test_arn_not_a_string():
    doc = document(role_arn=12)

    assert refusal(doc) == (
        f"{SOURCE}: profiles.web.role_arn: expected a non-empty string, got int"
    )


def test_profile_arn_region_differs_from_the_anchor():
    doc = document(profile_arn=PROFILE.replace("eu-west-1", "us-east-1"))

    assert refusal(doc) == (
        f"{SOURCE}: profiles.web.profile_arn: region us-east-1 differs from the trust anchor's "
        "region eu-west-1; both must be in one region"
    )


@pytest.mark.parametrize("region", ["eu_west_1", "EU-WEST-1", "europe", "eu-west"])
def test_region_malformed(region):
    assert refusal(document(region=region)) == (
        f"{SOURCE}: profiles.web.region: {region!r} is not a region name like eu-west-1"
    )


def test_region_differing_from_the_anchor():
    assert refusal(document(region="us-east-1")) == (
        f"{SOURCE}: profiles.web.region: us-east-1 differs from the trust anchor's region "
        "eu-west-1"
    )


def test_china_region_gets_the_cn_endpoint():
    doc = document(
        trust_anchor_arn="arn:aws-cn:rolesanywhere:cn-north-1:111122223333:trust-anchor/a1",
        profile_arn="arn:aws-cn:rolesanywhere:cn-north-1:111122223333:profile/p1",
        role_arn="arn:aws-cn:iam::111122223333:role/web",
    )

    session = parse_config(doc, SOURCE, {}).profiles["web"].session

    assert session.region == "cn-north-1"
    assert session.endpoint == "https://rolesanywhere.cn-north-1.amazonaws.com.cn"


GOV_ANCHOR = "arn:aws-us-gov:rolesanywhere:us-gov-west-1:111122223333:trust-anchor/a1"
GOV_PROFILE = "arn:aws-us-gov:rolesanywhere:us-gov-west-1:111122223333:profile/p1"
GOV_ROLE = "arn:aws-us-gov:iam::111122223333:role/web"


@pytest.mark.parametrize("region", ["us-gov-west-1-fips", "fips-us-gov-west-1"])
def test_case_c11_fips_region_markers(region):
    """A FIPS marker picks the FIPS host; the signature scope gets the clean region."""
    doc = document(
        trust_anchor_arn=GOV_ANCHOR, profile_arn=GOV_PROFILE, role_arn=GOV_ROLE, region=region
    )
    session = parse_config(doc, SOURCE, {}).profiles["web"].session
    leaf = pki.issue("fips-host", key_type="p256")
    now = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)

    signed = sign_request(
        method="POST",
        url=session.endpoint + "/sessions",
        headers={"Content-Type": "application/json"},
        body=session.body(),
        certificate=leaf.certificate,
        chain=[],
        signer=FileKeySigner(leaf.key),
        region=session.region,
        now=now,
    )

    assert session.region == "us-gov-west-1"
    assert session.endpoint == "https://rolesanywhere-fips.us-gov-west-1.amazonaws.com"
    assert signed.headers["host"] == "rolesanywhere-fips.us-gov-west-1.amazonaws.com"
    credential = re.search(r"Credential=(\d+)/(\S+),", signed.headers["authorization"])
    assert credential is not None
    assert credential.group(2) == "20260301/us-gov-west-1/rolesanywhere/aws4_request"


def test_fips_marker_around_a_malformed_region():
    doc = document(
        trust_anchor_arn=GOV_ANCHOR,
        profile_arn=GOV_PROFILE,
        role_arn=GOV_ROLE,
        region="fips-gov-1-fips",
    )

    assert refusal(doc) == (
        f"{SOURCE}: profiles.web.region: 'fips-gov-1-fips' is not a region name like eu-west-1"
    )


@pytest.mark.parametrize(
    "endpoint",
    [
        "rolesanywhere.eu-west-1.amazonaws.com",
        "ftp://example.org",
        "https://",
        "http://[::1",
        "https://example.org:99999/",
    ],
)
def test_endpoint_not_a_url(endpoint):
    assert refusal(document(endpoint=endpoint)) == (
        f"{SOURCE}: profiles.web.endpoint: expected an https:// URL, got {endpoint!r}"
    )


@pytest.mark.parametrize("endpoint", ["http://example.org:8080", "http://10.0.0.1"])
def test_plain_http_endpoint_to_a_remote_host(endpoint):
    assert refusal(document(endpoint=endpoint)) == (
        f"{SOURCE}: profiles.web.endpoint: plain http is only allowed to a loopback host"
    )


@pytest.mark.parametrize(
    "endpoint", ["http://127.0.0.1:8443/", "http://[::1]:8443", "http://localhost:8443"]
)
def test_plain_http_endpoint_to_loopback_is_allowed(endpoint):
    session = parse_config(document(endpoint=endpoint), SOURCE, {}).profiles["web"].session

    assert session.endpoint == endpoint.rstrip("/")


# --- session ------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [899, 43201, 0, -1, "3600", 3600.0, True, None])
def test_session_duration_out_of_range_or_not_an_integer(value):
    doc = document()
    doc["profiles"]["web"]["session_duration"] = value

    assert refusal(doc) == (
        f"{SOURCE}: profiles.web.session_duration: expected an integer from 900 to 43200, "
        f"got {value!r}"
    )


@pytest.mark.parametrize("value", [900, 43200])
def test_session_duration_bounds_are_inclusive(value):
    config = parse_config(document(session_duration=value), SOURCE, {})

    assert config.profiles["web"].session.duration_seconds == value


def test_case_c23_short_session_warns_at_load():
    config = parse_config(document(session_duration=900), SOURCE, {})

    assert config.warnings == (
        "profiles.web.session_duration: 900 s sessions make SDKs poll constantly "
        "(botocore refreshes within 15 min of expiry); consider 3600",
    )


def test_twenty_minute_session_does_not_warn():
    assert parse_config(document(session_duration=1200), SOURCE, {}).warnings == ()


def test_role_session_name_checked():
    assert refusal(document(role_session_name="a b")) == (
        f"{SOURCE}: profiles.web.role_session_name: 2-64 characters of letters, digits and +=,.@_-"
    )


# --- token file, listen, log, imds --------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "shown"),
    [
        ("0777", "'0777'"),
        ("rw", "'rw'"),
        (511, "511"),
        (600.0, "600.0"),
        (True, "True"),
        (["0600"], "['0600']"),
    ],
)
def test_token_file_mode_invalid(mode, shown):
    doc = document(token_file={"path": "/run/web.token", "mode": mode})

    assert refusal(doc) == (
        f'{SOURCE}: profiles.web.token_file.mode: expected "0600" or "0640" (in quotes), '
        f"got {shown}"
    )


@pytest.mark.parametrize(
    ("line", "mode"),
    [('mode: "0640"', 0o640), ("mode: 0640", 0o640), ("mode: 0600", 0o600), ("mode: 640", 0o640)],
)
def test_token_file_mode_as_yaml_writes_it(tmp_path, line, mode):
    """Unquoted 0640 is an octal integer to YAML; it must still mean mode 0640."""
    token_file = f"    token_file:\n      path: /run/web.token\n      {line}\n"
    text = yaml.safe_dump(document()) + token_file
    path = tmp_path / "agent.yaml"
    path.write_text(text)

    assert load_config(path, {}).profiles["web"].token_file.mode == mode


def test_token_file_as_a_plain_path():
    config = parse_config(document(token_file="/run/agent/web.token"), SOURCE, {})

    assert config.profiles["web"].token_file.path == Path("/run/agent/web.token")


@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.10", "example.org", "::"])
def test_listen_host_not_loopback_without_allow_remote(host):
    doc = {**document(), "listen": {"host": host}}

    assert refusal(doc) == (
        f"{SOURCE}: listen.host: {host!r} is not a loopback address; use 127.0.0.1 or set "
        "listen.allow_remote: true"
    )


def test_listen_host_remote_with_allow_remote():
    doc = {**document(), "listen": {"host": "0.0.0.0", "allow_remote": True}}

    assert parse_config(doc, SOURCE, {}).listen.allow_remote is True


@pytest.mark.parametrize("port", [-1, 65536, "9912", 9912.5])
def test_listen_port_out_of_range(port):
    doc = {**document(), "listen": {"port": port}}

    assert refusal(doc) == (
        f"{SOURCE}: listen.port: expected an integer from 0 to 65535, got {port!r}"
    )


def test_log_format_invalid():
    doc = {**document(), "log": {"format": "xml"}}

    assert refusal(doc) == f"{SOURCE}: log.format: expected one of json, console, got 'xml'"


def test_log_level_invalid():
    doc = {**document(), "log": {"level": "verbose"}}

    assert refusal(doc) == (
        f"{SOURCE}: log.level: expected one of debug, info, warning, error, got 'verbose'"
    )


def test_log_level_is_case_insensitive():
    doc = {**document(), "log": {"level": "WARNING", "format": "console"}}

    assert parse_config(doc, SOURCE, {}).log == LogConfig("console", "warning")


def test_imds_port_clashes_with_listen_port():
    doc = {**document(imds={"port": 9100}), "listen": {"port": 9100}}

    assert refusal(doc) == (
        f"{SOURCE}: profiles.web.imds.port: port 9100 is already used by listen.port"
    )


def test_imds_port_clashes_between_profiles():
    doc = {"profiles": {"a": profile(imds={"port": 9911}), "b": profile(imds={"port": 9911})}}

    assert refusal(doc) == (
        f"{SOURCE}: profiles.b.imds.port: port 9911 is already used by profiles.a.imds.port"
    )


# --- paths --------------------------------------------------------------------------------


def test_credentials_directory_is_expanded():
    doc = document(
        private_key="${CREDENTIALS_DIRECTORY}/web-key.pem",
        passphrase_file="$CREDENTIALS_DIRECTORY/web-passphrase",
    )

    identity = parse_config(doc, SOURCE, ENVIRON).profiles["web"].identity

    folder = Path("/run/credentials/rolesanywhere-agent.service")
    assert identity.private_key == folder / "web-key.pem"
    assert identity.passphrase_file == folder / "web-passphrase"


def test_credentials_directory_unset():
    doc = document(private_key="${CREDENTIALS_DIRECTORY}/web-key.pem")

    assert refusal(doc, environ={}) == (
        f"{SOURCE}: profiles.web.private_key: uses $CREDENTIALS_DIRECTORY, which is not set in "
        "the environment"
    )


def test_relative_paths_resolve_from_the_config_folder(tmp_path):
    folder = tmp_path / "conf"
    folder.mkdir()
    source = folder / "agent.yaml"
    doc = document(certificate="web/cert.pem", private_key="../keys/key.pem", intermediates=None)

    identity = parse_config(doc, source, {}).profiles["web"].identity

    assert identity.certificate == (folder / "web" / "cert.pem").resolve()
    assert identity.private_key == (tmp_path / "keys" / "key.pem").resolve()


def test_token_dir_default_follows_runtime_directory():
    environ = {"RUNTIME_DIRECTORY": "/run/rolesanywhere-agent:/run/other"}

    config = parse_config(document(), SOURCE, environ)

    assert config.profiles["web"].token_file.path == Path("/run/rolesanywhere-agent/web.token")


def test_path_with_a_nul_byte():
    assert refusal(document(certificate="cert\x00.pem")) == (
        f"{SOURCE}: profiles.web.certificate: contains a NUL character; expected a file path"
    )


def test_path_with_an_unknown_home():
    assert refusal(document(certificate="~no-such-user-here/cert.pem")) == (
        f"{SOURCE}: profiles.web.certificate: cannot expand '~no-such-user-here/cert.pem': "
        "no such user"
    )


# --- property: arbitrary documents fail only with ConfigError -----------------------------

# Every profile key the loader knows (so new ones are fuzzed too), and the keys around them.
REAL_KEYS = sorted(
    config_module._PROFILE_KEYS
    | {"listen", "log", "token_dir", "profiles", "host", "port", "allowed_hosts"}
    | {"allow_remote", "format", "level", "path", "mode", "group"}
)
PATHS = [
    "relative/file.pem",
    "/abs/file.pem",
    "~",
    "~/cert.pem",
    "~nobody-x/y",
    "a\x00b",
    "/a\x00b",
    "${CREDENTIALS_DIRECTORY}/k",
    "$UNSET_VAR/x",
    "${",
    "$",
    " ",
    "..",
]
URLS = [
    "https://h",
    "http://[::1",
    "https://h:99999",
    "http://127.0.0.1:1",
    "http://[::1]:8",
    "https://[x]/",
    "http://",
    "//h",
    "https://h:-1",
    "https://user@h:0",
]
WORDS = [
    ANCHOR,
    PROFILE,
    ROLE,
    GOV_ANCHOR,
    GOV_PROFILE,
    "127.0.0.1",
    "::1",
    "0.0.0.0",
    "localhost",
    "json",
    "console",
    "info",
    "DEBUG",
    "0600",
    "0640",
    "eu-west-1",
    "us-gov-west-1-fips",
    "fips-",
    "-fips",
    "fips-us-gov-west-1",
    "",
]
scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=True)
    | st.text(max_size=20)
    | st.sampled_from(WORDS + PATHS + URLS)
)
keys = st.sampled_from(REAL_KEYS) | st.text(max_size=8) | st.integers(-3, 3) | st.none()
yamlish = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(keys, inner, max_size=6),
    max_leaves=25,
)
path_values = st.sampled_from(PATHS) | st.text(max_size=12) | scalars
profile_values: dict[str, st.SearchStrategy[Any]] = {
    **{key: yamlish for key in REAL_KEYS[10:]},
    **{key: path_values for key in REAL_KEYS[10:15]},
    "endpoint": st.sampled_from(URLS) | st.text(max_size=20) | scalars,
    "token_file": st.fixed_dictionaries(
        {}, optional={"path": path_values, "mode": yamlish, "group": scalars}
    )
    | yamlish,
    "imds": st.fixed_dictionaries({"port": scalars}) | yamlish,
}


@st.composite
def near_valid_documents(draw: st.DrawFn) -> dict[str, Any]:
    """A valid document with some values replaced by arbitrary ones."""
    doc = copy.deepcopy(document(intermediates="chain.pem", imds={"port": 9911}))
    web = doc["profiles"]["web"]
    for key in draw(st.lists(st.sampled_from(sorted(profile_values)), min_size=1, max_size=4)):
        web[key] = draw(profile_values[key])
    for key in draw(st.lists(st.sampled_from(["listen", "log", "token_dir"]), max_size=2)):
        doc[key] = draw(yamlish)
    return doc


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(doc=yamlish | near_valid_documents())
def test_any_document_gives_a_config_or_a_config_error(doc):
    try:
        config = parse_config(doc, SOURCE, ENVIRON)
    except ConfigError as exc:
        assert str(exc).startswith(f"{SOURCE}")
    else:
        assert isinstance(config, AgentConfig)
        assert config.profiles


@settings(max_examples=200, deadline=None)
@given(text=st.text(max_size=200))
def test_any_file_text_gives_a_config_or_a_config_error(tmp_path_factory, text):
    path = tmp_path_factory.mktemp("cfg") / "agent.yaml"
    path.write_text(text, encoding="utf-8")

    try:
        load_config(path, ENVIRON)
    except ConfigError as exc:
        assert str(exc).startswith(f"{path}")


def test_a_key_given_twice_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "agent.yaml"
    path.write_text("listen: {port: 1}\nlisten: {port: 2}\nprofiles: {}\n")

    with pytest.raises(ConfigError) as refused:
        load_config(path, {})

    assert str(refused.value) == f"{path}: not valid YAML (key 'listen' is given twice at line 2)"
