from __future__ import annotations

import re
from pathlib import Path

import pytest
from psycopg.conninfo import conninfo_to_dict

from pme_exporter import settings as settings_module
from pme_exporter.errors import ConfigError
from pme_exporter.kafka_config import GUARANTEES
from pme_exporter.settings import ENVIRONMENT_VARIABLES, Settings, described, unknown_variables


def test_defaults_follow_the_seed_design() -> None:
    s = Settings.from_env({})
    assert (s.kafka_topic, s.kafka_group_id, s.db_port, s.db_sslmode) == (
        "pme-ledger",
        "pme-exporter",
        5432,
        "prefer",
    )


def test_environment_overrides_every_documented_variable() -> None:
    env = {
        "KAFKA_URL": "k1:9092,k2:9093",
        "KAFKA_TOPIC": "ledger",
        "DB_HOST": "db",
        "DB_PORT": "6432",
        "DB_USER": "u",
        "DB_PASSWORD": "pw",
        "DB_NAME": "n",
        "DB_SSLMODE": "require",
        "PME_MAX_BATCH_EVENTS": "100",
        "PME_FLUSH_INTERVAL_MS": "50",
        "PME_MAX_BUFFERED_EVENTS": "300",
        "PME_LOG_LEVEL": "debug",
    }
    s = Settings.from_env(env)
    assert s.kafka_url == "k1:9092,k2:9093" and s.db_port == 6432 and s.max_batch_events == 100
    assert s.log_level == "DEBUG" and s.flush_interval_ms == 50 and s.max_buffered_events == 300
    assert "host=db" in s.conninfo() and "port=6432" in s.conninfo() and "sslmode=require" in s.conninfo()


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"DB_PORT": "five"}, "DB_PORT"),
        ({"DATABASE_URL": "postgresql://u@h/db?port=notaport"}, "DATABASE_URL"),
        ({"DATABASE_URL": "postgresql://u@h:99999/db"}, "DATABASE_URL"),
        ({"DATABASE_URL": "postgresql://u@h/db?sslmode=bogus"}, "DATABASE_URL"),
        ({"DATABASE_URL": "postgresql://u@h/db?connect_timeout=soon"}, "DATABASE_URL"),
        ({"PME_MAX_MESSAGE_BYTES": "100"}, "PME_MAX_MESSAGE_BYTES"),
        ({"PME_LOG_FORMAT": "xml"}, "PME_LOG_FORMAT"),
        ({"PME_SHUTDOWN_DEADLINE_S": "nan"}, "PME_SHUTDOWN_DEADLINE_S"),
        ({"PME_SHUTDOWN_DEADLINE_S": "-3"}, "PME_SHUTDOWN_DEADLINE_S"),
        ({"DB_PORT": "70000"}, "DB_PORT"),
        ({"PME_MAX_BATCH_EVENTS": "0"}, "PME_MAX_BATCH_EVENTS"),
        ({"PME_FLUSH_INTERVAL_MS": "-1"}, "PME_FLUSH_INTERVAL_MS"),
        ({"PME_MAX_BATCH_EVENTS": "500", "PME_MAX_BUFFERED_EVENTS": "100"}, "PME_MAX_BUFFERED_EVENTS"),
        ({"DB_SSLMODE": "sometimes"}, "DB_SSLMODE"),
        ({"KAFKA_URL": "no-port-here"}, "KAFKA_URL"),
        ({"KAFKA_SECURITY_PROTOCOL": "SASL_SSL"}, "KAFKA_SASL_MECHANISM"),
        ({"PME_LOG_LEVEL": "chatty"}, "PME_LOG_LEVEL"),
        ({"PME_SHUTDOWN_DEADLINE_S": "soon"}, "PME_SHUTDOWN_DEADLINE_S"),
        ({"DATABASE_URL": "mysql://u:secret@h/db"}, "DATABASE_URL"),
        ({"PME_DB_STATEMENT_TIMEOUT_MS": "10"}, "PME_DB_STATEMENT_TIMEOUT_MS"),
        ({"PME_DB_STATEMENT_TIMEOUT_MS": "a minute"}, "PME_DB_STATEMENT_TIMEOUT_MS"),
        ({"PME_LIVENESS_MAX_STALL_S": "0"}, "PME_LIVENESS_MAX_STALL_S"),
        ({"PME_LIVENESS_MAX_STALL_S": "inf"}, "PME_LIVENESS_MAX_STALL_S"),
        ({"PME_TOPIC_RECREATED": "ignore"}, "PME_TOPIC_RECREATED"),
        ({"PME_REPORT_REFRESH_S": "5"}, "PME_REPORT_REFRESH_S"),
        ({"PME_REPORT_REFRESH_S": "hourly"}, "PME_REPORT_REFRESH_S"),
        ({"PME_REPORT_DATABASE_URL": "mysql://u:secret@h/db"}, "PME_REPORT_DATABASE_URL"),
        ({"PME_REPORT_DATABASE_URL": "postgresql://u@h:99999/db"}, "PME_REPORT_DATABASE_URL"),
        ({"PME_REPORT_DATABASE_URL": ""}, "PME_REPORT_DATABASE_URL"),
        ({"PME_PUBLICATION": "Pme-Ledger"}, "PME_PUBLICATION"),
        ({"PME_PUBLICATION": "x; DROP TABLE orders"}, "PME_PUBLICATION"),
        ({"PME_PUBLICATION": "9lives"}, "PME_PUBLICATION"),
    ],
)
def test_bad_values_name_the_variable(env: dict[str, str], variable: str) -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_env(env)
    assert str(info.value).startswith(f"{variable}:")
    assert "\n" not in str(info.value)


def test_secrets_stay_out_of_repr_and_errors() -> None:
    s = Settings.from_env({"DB_PASSWORD": "hunter2", "KAFKA_SASL_PASSWORD": "s3cret"})
    assert "hunter2" not in repr(s) and "s3cret" not in repr(s)
    with pytest.raises(ConfigError) as info:
        Settings.from_env({"DATABASE_URL": "mysql://u:hunter2@h/db"})
    assert "hunter2" not in str(info.value)


def test_database_url_wins_over_db_variables() -> None:
    s = Settings.from_env({"DATABASE_URL": "postgresql://u:pw@dbhost:5433/ledger", "DB_HOST": "other"})
    assert s.db_target() == "dbhost:5433/ledger"


def test_kafka_security_settings_reach_librdkafka() -> None:
    s = Settings.from_env(
        {
            "KAFKA_SECURITY_PROTOCOL": "sasl_ssl",
            "KAFKA_SASL_MECHANISM": "scram-sha-512",
            "KAFKA_SASL_USERNAME": "x",
        }
    )
    config = s.kafka_config()
    assert config["security.protocol"] == "SASL_SSL" and config["sasl.mechanism"] == "SCRAM-SHA-512"


def test_every_variable_is_in_the_readme() -> None:
    from tests.stack import REPO

    readme = (REPO / "README.md").read_text()
    missing = [name for name, _ in ENVIRONMENT_VARIABLES if f"`{name}`" not in readme]
    assert not missing, f"README lacks {missing}"


def test_to_env_builds_the_same_settings_again() -> None:
    s = Settings.from_env(
        {"DB_PASSWORD": "pw", "PME_GROUP_INSTANCE_ID": "pod-1", "PME_MAX_BATCH_EVENTS": "7"}
    )
    assert Settings.from_env(s.to_env()) == s


def test_a_secret_can_come_from_a_file(tmp_path: Path) -> None:
    secret = tmp_path / "db-password"
    secret.write_text("s3cret pass\n")
    s = Settings.from_env({"DB_PASSWORD_FILE": str(secret), "KAFKA_SSL_KEY_PASSWORD_FILE": str(secret)})
    assert s.db_password == "s3cret pass" and s.kafka_ssl_key_password == "s3cret pass"
    assert s.kafka_config()["ssl.key.password"] == "s3cret pass"
    assert "s3cret" not in repr(s)


@pytest.mark.parametrize(
    ("env", "says"),
    [
        (
            {"DB_PASSWORD_FILE": "/nonexistent/pw"},
            "DB_PASSWORD_FILE: cannot read /nonexistent/pw: No such file",
        ),
        ({"KAFKA_SASL_PASSWORD_FILE": "/"}, "KAFKA_SASL_PASSWORD_FILE: cannot read /: Is a directory"),
        (
            {"DB_PASSWORD": "x", "DB_PASSWORD_FILE": "/etc/hostname"},
            "DB_PASSWORD and DB_PASSWORD_FILE are both set",
        ),
    ],
)
def test_a_secret_file_that_cannot_be_used_is_a_clear_config_error(env: dict[str, str], says: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(says)):
        Settings.from_env(env)


def test_a_secret_file_that_is_not_text_is_refused_without_showing_it(tmp_path: Path) -> None:
    secret = tmp_path / "binary"
    secret.write_bytes(b"\xff\xfe\x00zz-content-zz")
    with pytest.raises(ConfigError) as info:
        Settings.from_env({"DB_PASSWORD_FILE": str(secret)})
    assert "not UTF-8 text" in str(info.value) and "zz-content-zz" not in str(info.value)


def test_unknown_variables_are_named_with_the_nearest_known_one() -> None:
    env = {"PME_FLUSH_INTERVAL": "5", "DB_PASWORD": "x", "KAFKA_URL": "k:1", "PME_ZZZ": "1", "HOME": "/root"}
    assert unknown_variables(env) == [
        ("DB_PASWORD", "DB_PASSWORD"),
        ("PME_FLUSH_INTERVAL", "PME_FLUSH_INTERVAL_MS"),
        ("PME_ZZZ", None),
    ]
    assert unknown_variables({"DB_PASSWORD_FILE": "/x"}) == []


def test_the_effective_configuration_hides_every_secret() -> None:
    s = Settings.from_env(
        {"DB_PASSWORD": "pw1", "KAFKA_SASL_PASSWORD": "pw2", "DATABASE_URL": "postgresql://u:pw3@h/db"}
    )
    shown = dict(described(s))
    assert shown["DB_PASSWORD"] == shown["KAFKA_SASL_PASSWORD"] == shown["DATABASE_URL"] == "(set, hidden)"
    assert shown["KAFKA_SSL_KEY_PASSWORD"] == "(not set)" and shown["DB_PORT"] == "5432"
    assert not any(pw in value for value in shown.values() for pw in ("pw1", "pw2", "pw3"))
    assert [n for n, _ in described(s)] == [n for n, _ in ENVIRONMENT_VARIABLES]


def test_the_project_s_own_tool_variables_are_not_unknown() -> None:
    from tests.stack import REPO

    scripts = "\n".join(p.read_text() for p in (REPO / "deploy" / "local").iterdir() if p.is_file())
    used = set(re.findall(r"\b(PME_[A-Z_]+)", scripts))
    assert used and unknown_variables(dict.fromkeys(used, "1")) == []


def test_librdkafka_properties_pass_through_and_secrets_stay_hidden() -> None:
    env = {
        "PME_RDKAFKA_SASL_OAUTHBEARER_CONFIG": "principal=pme secret=oauth-pw",
        "PME_RDKAFKA_FETCH_MIN_BYTES": "1024",
        "PME_RDKAFKA_SSL_ENDPOINT_IDENTIFICATION_ALGORITHM": "https",
    }
    s = Settings.from_env(env)
    config = s.kafka_config()
    assert config["sasl.oauthbearer.config"] == "principal=pme secret=oauth-pw"
    assert config["fetch.min.bytes"] == "1024" and config["ssl.endpoint.identification.algorithm"] == "https"
    shown = dict(described(s))
    assert shown["PME_RDKAFKA_SASL_OAUTHBEARER_CONFIG"] == "(set, hidden)"
    assert shown["PME_RDKAFKA_FETCH_MIN_BYTES"] == "1024"
    assert "oauth-pw" not in repr(s) and unknown_variables(env) == []
    assert Settings.from_env(s.to_env()) == s


@pytest.mark.parametrize(
    ("variable", "says"),
    [
        ("PME_RDKAFKA_ENABLE_AUTO_COMMIT", "enable.auto.commit is set by the exporter itself"),
        ("PME_RDKAFKA_GROUP_ID", "group.id is set by PME_GROUP_ID; set that instead"),
        ("PME_RDKAFKA_LOGGER", "logger is set by the exporter itself"),
        ("PME_RDKAFKA_", "does not name a librdkafka property"),
        ("PME_RDKAFKA_FETCH-MIN", "does not name a librdkafka property"),
    ],
)
def test_pass_through_cannot_change_what_the_exporter_sets_or_name_nothing(variable: str, says: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(f"{variable}: {says}")):
        Settings.from_env({variable: "x"})


@pytest.mark.parametrize(
    "variable",
    ["KAFKA_SSL_CA_LOCATION", "KAFKA_SSL_CERTIFICATE_LOCATION", "KAFKA_SSL_KEY_LOCATION", "DB_SSLROOTCERT"],
)
def test_a_certificate_or_key_file_that_is_missing_or_a_directory_is_named_with_its_variable(
    variable: str, tmp_path: Path
) -> None:
    for path, says in ((tmp_path / "gone.pem", "no such file"), (tmp_path, "is a directory")):
        settings = Settings.from_env({variable: str(path)})
        with pytest.raises(ConfigError) as info:
            settings.check_files()
        assert str(info.value) == f"{variable}: {path}: {says}" + (
            "" if says == "no such file" else ", not a file"
        )
    present = tmp_path / "ca.pem"
    present.write_text("-----BEGIN CERTIFICATE-----\n")
    Settings.from_env({variable: str(present)}).check_files()


def test_the_server_ca_reaches_libpq() -> None:
    settings = Settings.from_env({"DB_SSLMODE": "verify-full", "DB_SSLROOTCERT": "/etc/pme/ca.pem"})
    assert (
        "sslrootcert=/etc/pme/ca.pem" in settings.conninfo() and "sslmode=verify-full" in settings.conninfo()
    )


def test_every_connection_is_bounded_and_speaks_utf8() -> None:
    for env in ({}, {"DATABASE_URL": "postgresql://u@h/db?keepalives_idle=99"}):
        info = conninfo_to_dict(Settings.from_env(env).conninfo())
        assert info["client_encoding"] == "UTF8"
        assert (info["keepalives"], info["tcp_user_timeout"]) == ("1", "30000")


@pytest.mark.parametrize(
    ("prop", "variable"), [(prop, variable) for prop, variable, _ in settings_module.KAFKA_PROPERTIES]
)
def test_a_pass_through_of_a_property_a_variable_sets_names_that_variable(prop: str, variable: str) -> None:
    passed = "PME_RDKAFKA_" + prop.upper().replace(".", "_")
    with pytest.raises(
        ConfigError, match=re.escape(f"{passed}: {prop} is set by {variable}; set that instead")
    ):
        Settings.from_env({passed: "1000"})


@pytest.mark.parametrize("prop", sorted(GUARANTEES))
def test_a_pass_through_of_a_guarantee_is_refused(prop: str) -> None:
    passed = "PME_RDKAFKA_" + prop.upper().replace(".", "_")
    with pytest.raises(ConfigError, match=re.escape(f"{passed}: {prop} is set by the exporter itself")):
        Settings.from_env({passed: "x"})


def test_database_url_may_come_from_a_file(tmp_path: Path) -> None:
    secret = tmp_path / "url"
    secret.write_text("postgresql://u:pw@dbhost:6543/ledger\n")
    s = Settings.from_env({"DATABASE_URL_FILE": str(secret)})
    info = conninfo_to_dict(s.conninfo())
    assert (info["host"], info["port"], info["dbname"], info["password"]) == (
        "dbhost",
        "6543",
        "ledger",
        "pw",
    )
    assert unknown_variables({"DATABASE_URL_FILE": str(secret)}) == []


def test_a_passed_through_property_may_come_from_a_file(tmp_path: Path) -> None:
    password, fetch = tmp_path / "password", tmp_path / "fetch"
    password.write_text("s3cret\n")
    fetch.write_text("2048")
    env = {"PME_RDKAFKA_SASL_PASSWORD_FILE": str(password), "PME_RDKAFKA_FETCH_MIN_BYTES_FILE": str(fetch)}
    s = Settings.from_env(env)
    # sasl.password is KAFKA_SASL_PASSWORD's: read into it, judged and hidden like it.
    assert s.kafka_sasl_password == "s3cret" and s.kafka_config()["sasl.password"] == "s3cret"
    assert s.kafka_extra == {"fetch.min.bytes": "2048"}
    assert "s3cret" not in repr(s) and unknown_variables(env) == []
    with pytest.raises(
        ConfigError, match="KAFKA_SASL_PASSWORD and PME_RDKAFKA_SASL_PASSWORD_FILE are both set"
    ):
        Settings.from_env({**env, "KAFKA_SASL_PASSWORD": "other"})


@pytest.mark.parametrize("variable", ["KAFKA_URL", "KAFKA_TOPIC", "DB_HOST", "DATABASE_URL"])
def test_a_variable_set_but_empty_is_an_error_not_a_default(variable: str) -> None:
    with pytest.raises(ConfigError, match=f"^{variable}: is set but empty"):
        Settings.from_env({variable: " "})


def test_a_misspelt_database_url_is_warned_about() -> None:
    assert unknown_variables({"DATABASE_URI": "postgresql://h/db"}) == [("DATABASE_URI", "DATABASE_URL")]
