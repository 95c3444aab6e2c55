"""The accounts file: defaults, strict types, and errors that say where the problem is."""

from __future__ import annotations

import dataclasses
import grp
import pwd
from pathlib import Path

import pytest

from orchestrator.config import (
    AccountSettings,
    Config,
    DaemonSettings,
    MetricsSettings,
    TikTokSettings,
    load_config,
    parse_config,
)
from orchestrator.errors import ConfigError

EXAMPLE = Path(__file__).resolve().parent.parent / "accounts.example.toml"
SECRET = "s3cr3t-value-that-must-not-leak"

MINIMAL = """
[daemon]
state_dir = "/var/lib/orchestrator"
[tiktok]
client_key = "key"
client_secret_file = "/etc/orchestrator/client_secret"
"""


def parse(
    extra: str = "", *, base: str = MINIMAL, path: Path = Path("/etc/o/accounts.toml")
) -> Config:
    return parse_config(base + extra, path=path)


def problem(extra: str = "", *, base: str = MINIMAL) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse(extra, base=base)
    return info.value


def account(body: str) -> str:
    return f"\n[[accounts]]\n{body}\n"


# --- the example file -------------------------------------------------------------------------


def test_example_file_loads() -> None:
    config = load_config(EXAMPLE)
    assert config.path == EXAMPLE
    assert [a.id for a in config.accounts] == ["acme-us", "acme-uk", "acme-de"]
    assert config.tiktok.base_url == "https://open.tiktokapis.com"
    assert config.tiktok.client_secret_file == EXAMPLE.parent / "secrets" / "client_secret"
    assert config.daemon.state_dir == EXAMPLE.parent / "state"
    assert any("video.upload" in a.scopes for a in config.accounts)
    for acct in config.accounts:
        assert acct.token_file == EXAMPLE.parent / "tokens" / f"{acct.id}.json"
        assert acct.region is not None


def test_example_documents_every_key() -> None:
    text = EXAMPLE.read_text()
    for cls in (DaemonSettings, TikTokSettings, AccountSettings, MetricsSettings):
        for f in dataclasses.fields(cls):
            assert f.name in text, f"{cls.__name__}.{f.name} is not documented in the example"
    for key in ("open_id", "access_token", "expires_in", "refresh_token", "refresh_expires_in"):
        assert key in text


# --- defaults ---------------------------------------------------------------------------------


def test_daemon_and_tiktok_defaults() -> None:
    config = parse()
    d = config.daemon
    assert d.state_dir == Path("/var/lib/orchestrator")
    assert d.socket_path == Path("/var/lib/orchestrator/orchestrator.sock")
    assert d.log_level == "info"
    assert d.poll_interval == 120.0
    assert d.time_scale == 1.0
    assert d.clock_epoch is None
    assert d.upload_chunk_size == 10_485_760
    assert d.request_timeout == 30.0
    assert d.drain_timeout == 20.0
    assert (d.socket_mode, d.socket_group) == (0o660, None)
    assert (d.allowed_uids, d.allowed_gids) == ((), ())
    assert d == DaemonSettings(state_dir=d.state_dir, socket_path=d.socket_path)
    assert config.metrics is None  # no [metrics]: no TCP listener
    t = config.tiktok
    assert t.base_url == "https://open.tiktokapis.com"
    assert t.client_key == "key"
    assert t.client_secret_credential is None
    assert t.redirect_uri is None
    assert t == TikTokSettings(client_key="key", client_secret_file=t.client_secret_file)
    assert config.accounts == ()


def test_account_defaults() -> None:
    config = parse(account('id = "solo"'))
    (acct,) = config.accounts
    assert acct == AccountSettings(
        id="solo",
        display_name="solo",
        region=None,
        timezone="UTC",
        tags=(),
        daily_cap=15,
        privacy_level="SELF_ONLY",
        scopes=("video.publish",),
        token_file=None,
        enabled=True,
    )
    assert acct == AccountSettings(id="solo", display_name="solo")  # one set of defaults
    assert config.account("solo") is acct
    assert config.account("nobody") is None


def test_every_value_is_read(tmp_path: Path) -> None:
    text = """
[daemon]
state_dir = "st"
socket_path = "run/o.sock"
log_level = "debug"
poll_interval = 2
time_scale = 60
clock_epoch = 1700000000
upload_chunk_size = 5242880
request_timeout = 1.5
drain_timeout = 7
socket_mode = "600"
socket_group = "root"
allowed_users = ["root", 1000, "1001", "root"]
allowed_groups = ["root", 7]
[metrics]
listen = "[::1]:9464"
[tiktok]
base_url = "http://127.0.0.1:8080/"
client_key = "k"
client_secret_credential = "client-secret"
redirect_uri = "https://example.com/cb"
[[accounts]]
id = "a_1"
display_name = "A one"
region = "FR"
timezone = "Europe/Paris"
tags = ["x", "y", "x"]
daily_cap = 1000
privacy_level = "MUTUAL_FOLLOW_FRIENDS"
scopes = ["video.upload", "video.list"]
token_file = "../t/a.json"
enabled = false
"""
    config = parse_config(text, path=tmp_path / "conf" / "accounts.toml")
    d = config.daemon
    assert (d.state_dir, d.socket_path) == (tmp_path / "conf/st", tmp_path / "conf/run/o.sock")
    assert (d.log_level, d.poll_interval, d.time_scale) == ("debug", 2.0, 60.0)
    assert isinstance(d.poll_interval, float)
    assert (d.clock_epoch, d.upload_chunk_size, d.request_timeout) == (1.7e9, 5_242_880, 1.5)
    assert (d.drain_timeout, d.socket_mode) == (7.0, 0o600)
    root_uid, root_gid = pwd.getpwnam("root").pw_uid, grp.getgrnam("root").gr_gid
    assert d.socket_group == root_gid
    assert d.allowed_uids == (root_uid, 1000, 1001)  # names resolved, duplicates dropped
    assert d.allowed_gids == (root_gid, 7)
    assert config.metrics == MetricsSettings(host="::1", port=9464)
    t = config.tiktok
    assert t.base_url == "http://127.0.0.1:8080"  # trailing slash stripped
    assert (t.client_secret_file, t.client_secret_credential) == (None, "client-secret")
    assert t.redirect_uri == "https://example.com/cb"
    (a,) = config.accounts
    assert (a.id, a.display_name, a.region, a.timezone) == ("a_1", "A one", "FR", "Europe/Paris")
    assert (a.tags, a.daily_cap, a.privacy_level) == (("x", "y"), 1000, "MUTUAL_FOLLOW_FRIENDS")
    assert a.scopes == ("video.upload", "video.list")
    assert a.token_file == tmp_path / "t" / "a.json"
    assert a.enabled is False


def test_relative_paths_resolve_against_the_files_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    conf = tmp_path / "etc"
    conf.mkdir()
    (conf / "accounts.toml").write_text(
        MINIMAL.replace('"/var/lib/orchestrator"', '"./state"').replace(
            '"/etc/orchestrator/client_secret"', '"secrets/cs"'
        )
        + account('id = "a"\ntoken_file = "./tokens/a.json"')
    )
    monkeypatch.chdir(tmp_path)  # a relative config path, and a working dir that is elsewhere
    config = load_config("etc/accounts.toml")
    assert config.path == conf / "accounts.toml"
    assert config.daemon.state_dir == conf / "state"
    assert config.daemon.socket_path == conf / "state" / "orchestrator.sock"
    assert config.tiktok.client_secret_file == conf / "secrets" / "cs"
    assert config.accounts[0].token_file == conf / "tokens" / "a.json"


def test_zero_accounts_is_valid() -> None:
    assert parse(base="accounts = []\n" + MINIMAL).accounts == ()


# --- error messages ---------------------------------------------------------------------------


def test_daemon_error_names_file_and_dotted_field() -> None:
    err = problem(base=MINIMAL.replace('state_dir = "/var/lib/orchestrator"', 'log_level = "loud"'))
    assert err.file == "/etc/o/accounts.toml"
    assert "/etc/o/accounts.toml" in str(err)
    assert "field 'daemon.state_dir': is required" in str(err)
    assert "field 'daemon.log_level': 'loud' is not one of debug, info, warning, error" in str(err)


def test_account_error_names_account_and_field() -> None:
    err = problem(account('id = "acme-1"\ndaily_cap = 0'))
    assert (err.account, err.field) == ("acme-1", "daily_cap")
    assert str(err) == (
        "/etc/o/accounts.toml, account 'acme-1', field 'daily_cap': "
        "must be between 1 and 1_000, not 0"
    )


def test_account_without_valid_id_is_named_by_position() -> None:
    err = problem(account('id = "ok"') + account('id = "Bad Id!"\ndaily_cap = 2000'))
    assert err.account == "#2"
    assert "account '#2', field 'id': 'Bad Id!' is not valid" in str(err)
    assert "account '#2', field 'daily_cap'" in str(err)
    missing = problem(account('display_name = "x"'))
    assert "account '#1', field 'id': is required" in str(missing)


def test_all_problems_are_reported_one_per_line() -> None:
    err = problem(
        "\n[daemon.extra]\n"
        + account('id = "a"\ndaily_cap = "15"\nprivacy_level = "PUBLIC"')
        + account('id = "b"\ntimezone = "Mars/Olympus"')
    )
    lines = str(err).splitlines()
    assert len(lines) == 4
    assert all(line.startswith("/etc/o/accounts.toml, ") for line in lines)
    assert (err.account, err.field) == (None, "daemon.extra")  # the first problem's place
    assert "account 'a', field 'daily_cap': must be an integer, not a string" in lines[1]
    assert "account 'a', field 'privacy_level': 'PUBLIC' is not one of" in lines[2]
    assert "account 'b', field 'timezone': 'Mars/Olympus' is not an IANA time zone" in lines[3]


def test_unknown_key_lists_known_keys_and_suggests_a_close_one() -> None:
    err = problem(account('id = "acme-1"\ndaily_capp = 3'))
    assert (err.account, err.field) == ("acme-1", "daily_capp")
    assert "unknown key 'daily_capp' (known: " in str(err)
    assert "display_name, enabled, id" in str(err)
    assert str(err).endswith("did you mean 'daily_cap'?")
    top = problem("\n[deamon]\nx = 1\n")
    assert (
        "field 'deamon': unknown key 'deamon' "
        "(known: accounts, alerts, daemon, metrics, tiktok, webhooks)" in str(top)
    )
    assert "did you mean 'daemon'?" in str(top)
    far = problem(base=MINIMAL.replace("[tiktok]", "[tiktok]\nzzz = 1"))
    assert "field 'tiktok.zzz'" in str(far)
    assert "did you mean" not in str(far)


def test_duplicate_account_id() -> None:
    err = problem(account('id = "twin"') + account('id = "other"') + account('id = "twin"'))
    assert (err.account, err.field) == ("twin", "id")
    assert "duplicate account id: accounts #1 and #3" in str(err)


def test_bad_timezone_suggests_a_real_one() -> None:
    err = problem(account('id = "a"\ntimezone = "Europe/Berln"'))
    assert (err.account, err.field) == ("a", "timezone")
    assert "'Europe/Berln' is not an IANA time zone name; did you mean 'Europe/Berlin'?" in str(err)


def test_bad_privacy_level() -> None:
    err = problem(account('id = "a"\nprivacy_level = "self_only"'))
    assert (err.account, err.field) == ("a", "privacy_level")
    assert "PUBLIC_TO_EVERYONE, MUTUAL_FOLLOW_FRIENDS, FOLLOWER_OF_CREATOR, SELF_ONLY" in str(err)


@pytest.mark.parametrize(
    ("line", "field", "expected"),
    [
        ("daily_cap = true", "daily_cap", "must be an integer, not a boolean"),
        ("daily_cap = 15.0", "daily_cap", "must be an integer, not a float"),
        ("enabled = 1", "enabled", "must be true or false, not an integer"),
        ('enabled = "yes"', "enabled", "must be true or false, not a string"),
        ("region = 44", "region", "must be a string, not an integer"),
        ('region = "us"', "region", "'us' is not valid (ISO 3166-1 alpha-2"),
        ('tags = "one"', "tags", "must be an array of strings, not a string"),
        ('tags = ["Good"]', "tags", "an entry 'Good' is not valid"),
        ("scopes = []", "scopes", "must not be empty"),
        ('scopes = ["video.post"]', "scopes", "an entry 'video.post' is not one of"),
        ('display_name = " "', "display_name", "must not be empty"),
        ("token_file = 2024-01-01", "token_file", "must be a string, not a TOML date"),
    ],
)
def test_account_values_are_type_checked(line: str, field: str, expected: str) -> None:
    err = problem(account(f'id = "a"\n{line}'))
    assert (err.account, err.field) == ("a", field)
    assert expected in str(err)


@pytest.mark.parametrize(
    ("line", "field", "expected"),
    [
        ("poll_interval = true", "poll_interval", "must be a number, not a boolean"),
        ('poll_interval = "10"', "poll_interval", "must be a number, not a string"),
        ("poll_interval = 0", "poll_interval", "must be greater than 0, not 0"),
        ("time_scale = -2.5", "time_scale", "must be greater than 0, not -2.5"),
        ("request_timeout = inf", "request_timeout", "must be a finite number"),
        ("upload_chunk_size = 1024", "upload_chunk_size", "between 5_242_880 and 64_000_000"),
        ("upload_chunk_size = 64_000_001", "upload_chunk_size", "not 64_000_001"),
        ('socket_path = ""', "socket_path", "must not be empty"),
        (f'socket_path = "/{"x" * 120}"', "socket_path", "too long for a Unix socket"),
        ("drain_timeout = 0", "drain_timeout", "must be greater than 0, not 0"),
        ('drain_timeout = "20s"', "drain_timeout", "must be a number, not a string"),
        ("socket_mode = 0o660", "socket_mode", 'octal digits such as "0660", not an integer'),
        ('socket_mode = "0666"', "socket_mode", "'0666' lets every local user write"),
        ('socket_mode = "0662"', "socket_mode", "lets every local user write to the socket"),
        ('socket_mode = "rw-rw----"', "socket_mode", "'rw-rw----' is not a file mode"),
        ('socket_mode = "04660"', "socket_mode", "is not a file mode (3 octal digits"),
        ('socket_mode = "0680"', "socket_mode", "is not a file mode"),
        ('socket_mode = "0460"', "socket_mode", "takes reading or writing away from the daemon"),
        ('socket_group = "no-such-group-x"', "socket_group", "no group named 'no-such-group-x'"),
        ("socket_group = -1", "socket_group", "-1 is not a valid numeric group id"),
        ("socket_group = true", "socket_group", "a group name or a numeric id, not a boolean"),
        ('socket_group = ""', "socket_group", "must not be empty"),
        ('allowed_users = "root"', "allowed_users", "an array of names or numeric ids, not a"),
        ('allowed_users = ["no-such-user-x"]', "allowed_users", "an entry: no user named"),
        ("allowed_users = [1.5]", "allowed_users", "a user name or a numeric id, not a float"),
        ("allowed_groups = [4294967295]", "allowed_groups", "not a valid numeric group id"),
        ('allowed_groups = ["no-such-group-x"]', "allowed_groups", "no group named"),
    ],
)
def test_daemon_values_are_checked(line: str, field: str, expected: str) -> None:
    err = problem(base=MINIMAL.replace("[tiktok]", f"{line}\n[tiktok]"))
    assert err.field == f"daemon.{field}"
    assert err.account is None
    assert expected in str(err)


@pytest.mark.parametrize(
    ("listen", "host", "port"),
    [
        ("127.0.0.1:9464", "127.0.0.1", 9464),
        ("127.8.9.10:0", "127.8.9.10", 0),  # any loopback address; port 0 picks a free one
        ("[::1]:9464", "::1", 9464),
        ("localhost:9464", "localhost", 9464),
    ],
)
def test_metrics_listen_on_loopback(listen: str, host: str, port: int) -> None:
    config = parse(f'\n[metrics]\nlisten = "{listen}"\n')
    assert config.metrics == MetricsSettings(host=host, port=port)


@pytest.mark.parametrize(
    ("listen", "expected"),
    [
        ("0.0.0.0:9464", "'0.0.0.0' is not a loopback address: metrics are served without"),
        ("[::]:9464", "'::' is not a loopback address"),
        ("192.168.1.5:9464", "'192.168.1.5' is not a loopback address"),
        ("metrics.example.com:9464", "only 127.0.0.0/8, ::1 or localhost are accepted"),
        ("127.0.0.1", "'127.0.0.1' is not HOST:PORT"),
        ("127.0.0.1:65536", "is not HOST:PORT"),
        (":9464", "is not HOST:PORT"),
    ],
)
def test_metrics_refuse_anything_but_loopback(listen: str, expected: str) -> None:
    err = problem(f'\n[metrics]\nlisten = "{listen}"\n')
    assert (err.account, err.field) == (None, "metrics.listen")
    assert expected in str(err)


def test_metrics_table_is_checked() -> None:
    assert "field 'metrics.listen': is required" in str(problem("\n[metrics]\n"))
    err = problem('\n[metrics]\nlisten = "127.0.0.1:1"\nport = 9464\n')
    assert err.field == "metrics.port"
    assert "unknown key 'port' (known: listen)" in str(err)
    assert "must be a string, not an integer" in str(problem("\n[metrics]\nlisten = 9464\n"))


@pytest.mark.parametrize(
    "url",
    ["ftp://example.com", "example.com", "https://", "https://x.com/?a=1", "https://x.com/#f"],
)
def test_base_url_must_be_plain_http(url: str) -> None:
    err = problem(base=MINIMAL.replace("[tiktok]", f'[tiktok]\nbase_url = "{url}"'))
    assert err.field == "tiktok.base_url"


def test_sections_and_accounts_must_be_tables() -> None:
    err = problem(base='daemon = 3\n[tiktok]\nclient_key = "k"\nclient_secret_file = "f"')
    assert err.field == "daemon"
    assert str(err).splitlines()[0].endswith("must be a table, not an integer")
    err = problem(base="accounts = 3\n" + MINIMAL)
    assert err.field == "accounts"
    assert "write [[accounts]]" in str(err)
    err = problem(base="accounts = [1]\n" + MINIMAL)
    assert err.account == "#1"
    assert str(err).endswith("must be a table, not an integer")


# --- the client secret ------------------------------------------------------------------------


def test_inline_secret_is_rejected_without_quoting_it() -> None:
    err = problem(base=MINIMAL.replace("[tiktok]", f'[tiktok]\nclient_secret = "{SECRET}"'))
    assert err.field == "tiktok.client_secret"
    assert (
        "use client_secret_file (a file holding only the secret) or client_secret_credential"
        in str(err)
    )
    assert SECRET not in str(err)
    assert len(str(err).splitlines()) == 1  # no second complaint about the missing source


def test_exactly_one_secret_source() -> None:
    none = problem(base='[daemon]\nstate_dir = "s"\n[tiktok]\nclient_key = "k"\n')
    assert none.field == "tiktok.client_secret_file"
    assert "give one of client_secret_file and client_secret_credential" in str(none)
    both = problem(base=MINIMAL + 'client_secret_credential = "c"\n')
    assert "not both" in str(both)
    bad = problem(base=MINIMAL.replace("client_secret_file", 'client_secret_credential = "a/b"\n#'))
    assert bad.field == "tiktok.client_secret_credential"


def test_secret_from_file(tmp_path: Path) -> None:
    (tmp_path / "cs").write_text(f"  {SECRET}\n")
    config = parse_config(
        MINIMAL.replace("/etc/orchestrator/client_secret", "cs"), path=tmp_path / "accounts.toml"
    )
    assert config.tiktok.client_secret() == SECRET
    assert SECRET not in repr(config)


def test_secret_from_systemd_credential(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "client-secret").write_text(SECRET)
    text = MINIMAL.replace(
        'client_secret_file = "/etc/orchestrator/client_secret"',
        'client_secret_credential = "client-secret"',
    )
    settings = parse(base=text).tiktok
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    assert settings.client_secret() == SECRET
    monkeypatch.delenv("CREDENTIALS_DIRECTORY")
    with pytest.raises(ConfigError) as info:
        settings.client_secret()
    assert info.value.field == "tiktok.client_secret_credential"
    assert "$CREDENTIALS_DIRECTORY, which is unset" in str(info.value)


def test_secret_errors_name_field_and_path_never_the_value(tmp_path: Path) -> None:
    missing = TikTokSettings(client_key="k", client_secret_file=tmp_path / "nope")
    with pytest.raises(ConfigError) as info:
        missing.client_secret()
    assert (info.value.file, info.value.field) == (
        str(tmp_path / "nope"),
        "tiktok.client_secret_file",
    )
    assert "No such file or directory" in str(info.value)

    empty = tmp_path / "empty"
    empty.write_text(" \n")
    with pytest.raises(ConfigError, match="is empty"):
        TikTokSettings(client_key="k", client_secret_file=empty).client_secret()

    binary = tmp_path / "binary"
    binary.write_bytes(SECRET.encode() + b"\xff")
    with pytest.raises(ConfigError) as info:
        TikTokSettings(client_key="k", client_secret_file=binary).client_secret()
    assert "not UTF-8" in str(info.value)
    assert SECRET not in str(info.value)
    assert info.value.__cause__ is None and info.value.__suppress_context__


# --- the file itself --------------------------------------------------------------------------


def test_toml_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "accounts.toml"
    path.write_text(MINIMAL + '\n[[accounts]]\nid = "a"\ndaily_cap = = 3\n')
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.file == str(path)
    assert str(info.value).startswith(f"{path}: invalid TOML at line 10, column")


def test_syntax_error_does_not_quote_a_secret() -> None:
    err = problem(base=MINIMAL.replace("[tiktok]", f'[tiktok]\nclient_secret = "{SECRET}'))
    assert "invalid TOML at line" in str(err)
    assert SECRET not in str(err)


def test_missing_or_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "absent.toml")
    assert info.value.file == str(tmp_path / "absent.toml")
    assert "cannot read the accounts file: No such file or directory" in str(info.value)
    with pytest.raises(ConfigError, match="cannot read the accounts file"):
        load_config(tmp_path)
    (tmp_path / "latin1.toml").write_bytes(b"# caf\xe9\n")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_config(tmp_path / "latin1.toml")


def test_config_values_are_frozen() -> None:
    config = parse(account('id = "a"'))
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.accounts[0].daily_cap = 99  # type: ignore[misc]
