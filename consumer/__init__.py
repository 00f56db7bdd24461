"""Streaming detection of IAM access keys created for another user, on CloudTrail in Kafka."""

__version__ = "0.1.0"
