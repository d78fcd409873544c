from __future__ import annotations

import pytest

from pme_exporter.errors import ConfigError
from pme_exporter.settings import ENVIRONMENT_VARIABLES, Settings


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
