"""What a match becomes: the alert document, its Avro encoding and the per-rule throttle.
No Kafka client is imported here."""
