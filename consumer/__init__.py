"""Elastic's AWS detection rules on CloudTrail in Kafka, as the events arrive, exactly once."""

__version__ = "0.1.0"
