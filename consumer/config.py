"""Settings from CLI options, DETECTOR_* environment variables and an optional TOML file.

Everything is validated before the detector touches Kafka, so a bad setting stops start-up
with one message that names it. librdkafka properties pass through unchanged.
"""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, Literal

from confluent_kafka import Consumer, KafkaException, Producer
from pydantic import (
    BeforeValidator,
    Field,
    FilePath,
    PositiveFloat,
    PositiveInt,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
    TomlConfigSettingsSource,
)

from consumer.cloudtrail.envelopes import Shape
from consumer.times import parse_duration

ENV_PREFIX = "DETECTOR_"
_config_file: ContextVar[Path | None] = ContextVar("config_file", default=None)

SECRET_KAFKA_PROPERTIES = frozenset(
    {
        "sasl.password",
        "sasl.oauthbearer.client.secret",
        "ssl.key.password",
        "ssl.key.pem",
        "ssl.keystore.password",
        "ssl.truststore.password",
        "basic.auth.user.info",
    }
)
"""librdkafka properties whose values never appear in logs or configuration dumps."""

StartFrom = Literal["earliest", "latest", "lookback"] | timedelta | datetime


def parse_start_from(text: str) -> StartFrom:
    """earliest | latest | lookback | now-<duration> | an ISO-8601 time."""
    if text in ("earliest", "latest", "lookback"):
        return text  # type: ignore[return-value]
    if text.startswith("now-"):
        return parse_duration(text.removeprefix("now-"))
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(
            f"{text!r}: use earliest, latest, lookback, now-<duration> or an ISO-8601 time"
        ) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _read_secret_file(value: Any) -> Any:
    """A path in, the file's content out (without the trailing newline editors add)."""
    if value is None or isinstance(value, SecretStr):
        return value
    path = Path(value)
    try:
        secret = path.read_text(encoding="utf-8").rstrip("\r\n")
    except (OSError, UnicodeDecodeError) as error:
        raise ValueError(f"cannot read the secret file {path}: {error}") from None
    if not secret:
        raise ValueError(f"the secret file {path} is empty")
    return secret


def _comma_separated(value: Any) -> Any:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


class Settings(BaseSettings):
    """The detector's configuration. Each field is also DETECTOR_<NAME> in the environment."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, extra="forbid", validate_default=True, frozen=True
    )

    bootstrap_servers: str = Field("localhost:9092", min_length=1)
    input_topics: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["cloudtrail-events"],
        description="Topics to read, comma-separated in the environment.",
    )
    input_pattern: str | None = Field(
        None, description="A regex of topics to read instead of input_topics (must start with ^)."
    )
    group_id: str = Field("cloudtrail-detector", min_length=1)
    alerts_topic: str = Field("cloudtrail-alerts", min_length=1)
    dlq_topic: str | None = Field(None, description="Dead-letter topic; default <input>.dlq.")
    input_format: Literal["avro-registry", "avro", "json"] = "avro-registry"
    input_envelope: Shape | None = Field(
        None, description="JSON input: read only this shape (record, records, eventbridge, "
        "cloudwatch, filebeat, cribl, lookup-events); default detected per message."
    )
    writer_schema: Path | None = Field(
        None, description="Writer schema file for schemaless Avro; default the bundled schema."
    )
    schema_registry_url: str | None = None
    schema_registry_basic_auth: SecretStr | None = Field(
        None, description="user:password for the Schema Registry."
    )
    schema_registry_timeout_s: float = Field(
        2.0,
        gt=0,
        le=60,
        description="Seconds to wait for the Schema Registry to answer one request; a registry "
        "that does not answer pauses the partitions that need it instead of holding the loop.",
    )
    schema_registry_ca_location: Path | None = None
    schema_registry_certificate_location: Path | None = None
    schema_registry_key_location: Path | None = None
    alert_format: Literal["json", "avro-registry"] = "json"
    include_event_original: bool = True
    data_stream_namespace: str = Field(
        "default",
        pattern=r"^[a-z0-9_]{1,100}$",
        description="data_stream.namespace of the events, as Elastic's integration policy sets it.",
    )
    geoip_city_database: FilePath | None = Field(
        None, description="A MaxMind-format City database (GeoLite2-City.mmdb) for source.geo.*."
    )
    geoip_asn_database: FilePath | None = Field(
        None, description="A MaxMind-format ASN database (e.g. GeoLite2-ASN.mmdb) for source.as.*."
    )
    delivery: Literal["exactly-once", "at-least-once"] = "exactly-once"
    prefilter: bool = Field(
        True,
        description="Skip decoding messages whose bytes no rule can match (their framing is "
        "still checked). false decodes everything, so every corrupt body reaches the DLQ.",
    )
    batch_size: PositiveInt = Field(1000, description="Messages per consume call.")
    transaction_max_messages: PositiveInt = 250_000
    transaction_max_ms: PositiveInt = 250
    start_from: str = Field(
        "lookback",
        description="Where a partition with no committed offset starts: earliest, latest, "
        "lookback (the longest rule lookback, now-6m for the seed rule), now-<duration> or a time.",
    )
    rules_dir: Path | None = None
    exceptions_dir: Path | None = Field(
        None,
        description="Elastic exception lists (*.toml) and value lists (other files, known by "
        "file name); reloaded when they change or on SIGHUP.",
    )
    exceptions_reload_s: PositiveFloat = Field(
        5.0, description="How often the exceptions directory is checked for changes."
    )
    enable_rules: Annotated[list[str], NoDecode] = Field(default_factory=list)
    disable_rules: Annotated[list[str], NoDecode] = Field(default_factory=list)
    metrics_host: str = Field(
        "127.0.0.1", description="Bind address of /metrics, /healthz, /readyz (loopback: no auth)."
    )
    metrics_port: int = Field(9464, ge=0, le=65535)
    shutdown_timeout_s: PositiveFloat = 10.0
    workers: PositiveInt = 1
    member_name: str = Field(
        default_factory=socket.gethostname,
        description="Stable name of this replica: transactional.id and static membership use it.",
    )
    static_membership: bool = False
    kafka: dict[str, str] = Field(
        default_factory=dict,
        description="librdkafka properties for every client (security.protocol, sasl.*, ssl.*).",
    )
    kafka_consumer: dict[str, str] = Field(default_factory=dict)
    kafka_producer: dict[str, str] = Field(default_factory=dict)
    kafka_sasl_password: SecretStr | None = Field(None, description="Becomes sasl.password.")
    kafka_sasl_password_file: Annotated[SecretStr | None, BeforeValidator(_read_secret_file)] = (
        Field(
            None,
            description="A file holding the SASL password (e.g. a mounted secret): read at "
            "start-up, its content stands in for kafka_sasl_password.",
        )
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    @field_validator("input_topics", "enable_rules", "disable_rules", mode="before")
    @classmethod
    def _split(cls, value: Any) -> Any:
        return _comma_separated(value)

    @field_validator("input_pattern")
    @classmethod
    def _pattern(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not value.startswith("^"):
            raise ValueError("librdkafka treats a topic as a regex only when it starts with ^")
        re.compile(value)
        return value

    @field_validator("writer_schema")
    @classmethod
    def _writer_schema(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_file():
            raise ValueError(f"the writer schema file {value} does not exist")
        return value

    @field_validator("start_from")
    @classmethod
    def _start_from(cls, value: str) -> str:
        parse_start_from(value)
        return value

    @field_validator("kafka", "kafka_consumer", "kafka_producer", mode="before")
    @classmethod
    def _stringify(cls, value: Any) -> Any:
        """TOML gives numbers and booleans; librdkafka wants every property as a string."""
        if isinstance(value, Mapping):
            return {
                str(k): str(v).lower() if isinstance(v, bool) else str(v) for k, v in value.items()
            }
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        if not self.input_topics and self.input_pattern is None:
            raise ValueError("set input_topics or input_pattern")
        if self.kafka_sasl_password is not None and self.kafka_sasl_password_file is not None:
            raise ValueError("set kafka_sasl_password or kafka_sasl_password_file, not both")
        if "avro-registry" in (self.input_format, self.alert_format) and not (
            self.schema_registry_url
        ):
            raise ValueError(
                "schema_registry_url is required for the avro-registry format: give "
                "--schema-registry-url or DETECTOR_SCHEMA_REGISTRY_URL (or schema_registry_url "
                "in the config file), or choose --input-format json or avro"
            )
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """CLI options win over the environment, which wins over the config file."""
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        config_file = _config_file.get()
        if config_file is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=config_file))
        return tuple(sources)

    @property
    def subscription(self) -> list[str]:
        return [self.input_pattern] if self.input_pattern else list(self.input_topics)

    @property
    def dead_letter_topic(self) -> str:
        if self.dlq_topic:
            return self.dlq_topic
        base = self.input_topics[0] if self.input_topics else "cloudtrail-events"
        return f"{base}.dlq"

    def start_position(self) -> StartFrom:
        return parse_start_from(self.start_from)

    def transactional_id(self, worker: int) -> str:
        """Stable across restarts of the same replica and worker, unique within the group."""
        return f"{self.group_id}-{self.member_name}-{worker}"

    def client_config(self) -> dict[str, str]:
        """What every Kafka client shares: bootstrap servers, `kafka` properties, the password."""
        config = {"bootstrap.servers": self.bootstrap_servers, **self.kafka}
        password = self.kafka_sasl_password or self.kafka_sasl_password_file
        if password is not None:
            config["sasl.password"] = password.get_secret_value()
        return config

    def consumer_config(self, worker: int) -> dict[str, str]:
        config = {
            **self.client_config(),
            "group.id": self.group_id,
            "enable.auto.commit": "false",
            "enable.auto.offset.store": "false",
            "isolation.level": "read_committed",
            "partition.assignment.strategy": "cooperative-sticky",
            "auto.offset.reset": "earliest",
            "statistics.interval.ms": "5000",
            "enable.partition.eof": "false",
        }
        if self.static_membership:
            config["group.instance.id"] = f"{self.member_name}-{worker}"
        return {**config, **self.kafka_consumer}

    def producer_config(self, worker: int) -> dict[str, str]:
        config = {
            **self.client_config(),
            "enable.idempotence": "true",
            "acks": "all",
            # Every commit flushes the batch's alerts anyway: lingering only delays the first
            # send of an alert (1-2 ms of its latency, bench/commit_latency_bench.py).
            "linger.ms": "0",
            "compression.type": "lz4",
        }
        if self.delivery == "exactly-once":
            config["transactional.id"] = self.transactional_id(worker)
        return {**config, **self.kafka_producer}

    def plain_producer_config(self) -> dict[str, str]:
        """An idempotent producer outside any transaction, for the tools (replay, dlq replay):
        with a transactional.id librdkafka refuses every produce outside a transaction."""
        config = {**self.producer_config(0), "linger.ms": "20"}
        config.pop("transactional.id", None)
        return config

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        """repr() and str() show the redacted values: a logged Settings object leaks nothing."""
        redacted = self.redacted()
        for name, value in super().__repr_args__():
            yield name, redacted.get(name or "", value)

    def redacted(self) -> dict[str, Any]:
        """The settings as a dump safe for logs: every secret shows as ***."""
        dump = self.model_dump(mode="json")
        for section in ("kafka", "kafka_consumer", "kafka_producer"):
            dump[section] = {
                key: "***" if key in SECRET_KAFKA_PROPERTIES else value
                for key, value in dump[section].items()
            }
        for key, value in dump.items():
            if isinstance(getattr(self, key), SecretStr) and value is not None:
                dump[key] = "***"
        return dump


class ConfigError(Exception):
    """A setting is missing, unknown or invalid; the message names it."""


def env_name(field: str) -> str:
    return f"{ENV_PREFIX}{field.upper()}"


def _unknown_env_settings() -> list[str]:
    known = {env_name(name) for name in Settings.model_fields} | {f"{ENV_PREFIX}CONFIG_FILE"}
    return sorted(name for name in os.environ if name.startswith(ENV_PREFIX) and name not in known)


def option_name(field: str) -> str:
    """The command-line flag of a setting."""
    return "--" + field.replace("_", "-")


def _where(field: str, overrides: Mapping[str, Any], config_file: Path | None) -> str:
    """Which source gave a setting its value: the flag, the variable or the config file key."""
    if overrides.get(field) is not None:
        return f"{option_name(field)}, {env_name(field)}"
    if env_name(field) in os.environ or config_file is None:
        return env_name(field)
    return f"{config_file}: key {field}"


def describe_validation_error(
    error: ValidationError,
    overrides: Mapping[str, Any] | None = None,
    config_file: Path | None = None,
) -> str:
    overrides = overrides or {}
    lines = []
    for problem in error.errors():
        location = ".".join(str(part) for part in problem["loc"])
        message = problem["msg"].removeprefix("Value error, ")
        if problem["type"] == "extra_forbidden":
            # The environment and the flags are checked by name first: only the file is left.
            lines.append(f"config file {config_file}: unknown key {location}")
        elif location:
            field = str(problem["loc"][0])
            where = _where(field, overrides, config_file)
            lines.append(f"setting {location} ({where}): {message}")
        else:
            lines.append(f"settings: {message}")
    return "\n".join(lines)


_FIELD_IN_SOURCE_ERROR = re.compile(r'field "(\w+)"')


def _describe_settings_error(error: SettingsError) -> str:
    """pydantic-settings' message for an environment value that is not JSON, naming the setting
    and what was wrong with it instead of the source class."""
    match = _FIELD_IN_SOURCE_ERROR.search(str(error))
    if match is None:
        return str(error)
    field = match[1]
    return f"setting {field} ({env_name(field)}): not a JSON object: {error.__cause__ or error}"


@contextmanager
def _reading_config_file(path: Path | None) -> Iterator[None]:
    token = _config_file.set(path)
    try:
        yield
    finally:
        _config_file.reset(token)


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Settings from overrides, the environment and the config file, or a ConfigError."""
    unknown = _unknown_env_settings()
    if unknown:
        raise ConfigError(f"unknown setting(s) in the environment: {', '.join(unknown)}")
    config_file = config_file or (
        Path(os.environ[f"{ENV_PREFIX}CONFIG_FILE"])
        if os.environ.get(f"{ENV_PREFIX}CONFIG_FILE")
        else None
    )
    if config_file is not None and not config_file.is_file():
        raise ConfigError(f"config file {config_file} ({ENV_PREFIX}CONFIG_FILE) does not exist")
    try:
        with _reading_config_file(config_file):
            settings = Settings(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as error:
        raise ConfigError(describe_validation_error(error, overrides, config_file)) from None
    except SettingsError as error:
        raise ConfigError(_describe_settings_error(error)) from None
    except ValueError as error:  # TOML syntax errors surface as ValueError subclasses
        raise ConfigError(f"config file {config_file}: {error}") from None
    check_kafka_properties(settings)
    return settings


_PROPERTY_IN_ERROR = re.compile(r'property:? "([^"]+)"')


def check_kafka_properties(settings: Settings) -> None:
    """librdkafka checks property names and values when a client is built, before it connects:
    build a consumer and a producer without brokers, so a misspelt property stops start-up
    naming the setting that holds it, instead of a traceback once the detector runs."""
    quiet = {"log_level": "0"}
    checks: list[tuple[Callable[[dict[str, str]], Any], dict[str, str], tuple[str, ...]]] = [
        (Consumer, settings.consumer_config(0), ("kafka_consumer", "kafka")),
        (Producer, settings.producer_config(0), ("kafka_producer", "kafka")),
    ]
    for client, config, sections in checks:
        offline = {key: value for key, value in config.items() if key != "bootstrap.servers"}
        try:
            built = client({**offline, **quiet})
        except KafkaException as error:
            text = error.args[0].str().strip()
            match = _PROPERTY_IN_ERROR.search(text)
            holder = next(
                (name for name in sections if match and match[1] in getattr(settings, name)),
                sections[-1],
            )
            raise ConfigError(f"setting {holder} ({env_name(holder)}): {text}") from None
        if isinstance(built, Consumer):
            built.close()


def start_timestamp_ms(start: StartFrom, lookback: timedelta, now: datetime) -> int | None:
    """Where a partition without committed offsets starts; None for earliest/latest."""
    if start == "lookback":
        return int((now - lookback).timestamp() * 1000)
    if isinstance(start, timedelta):
        return int((now - start).timestamp() * 1000)
    if isinstance(start, datetime):
        return int(start.timestamp() * 1000)
    return None
