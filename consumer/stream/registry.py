"""The Schema Registry client the detector builds from its settings, and alert schema registration.

Reading writer schemas is `consumer.cloudtrail.decode.RegistryAvroDecoder`'s job; it takes this
client through a protocol, so the CloudTrail package needs no Kafka library.
"""

from __future__ import annotations

from confluent_kafka.schema_registry import Schema, SchemaRegistryClient

from consumer.alerts.avro import ALERT_SCHEMA_TEXT, WireAlertEncoder
from consumer.config import Settings


def registry_client(settings: Settings) -> SchemaRegistryClient:
    """No retries inside the client: they would hold up the whole loop (up to 7 s per lookup
    with its defaults) where the service pauses only the partition and reads it again later."""
    config: dict[str, object] = {
        "url": settings.schema_registry_url,
        "timeout": settings.schema_registry_timeout_s,
        "max.retries": 0,
    }
    if settings.schema_registry_basic_auth is not None:
        config["basic.auth.user.info"] = settings.schema_registry_basic_auth.get_secret_value()
    for key, path in (
        ("ssl.ca.location", settings.schema_registry_ca_location),
        ("ssl.certificate.location", settings.schema_registry_certificate_location),
        ("ssl.key.location", settings.schema_registry_key_location),
    ):
        if path is not None:
            config[key] = str(path)
    return SchemaRegistryClient(config)


def registered_alert_encoder(client: SchemaRegistryClient, subject: str) -> WireAlertEncoder:
    """Registers our alert schema under `subject` (idempotent in the registry) and encodes with
    the id it returns."""
    return WireAlertEncoder(client.register_schema(subject, Schema(ALERT_SCHEMA_TEXT, "AVRO")))
