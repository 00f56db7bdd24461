"""CloudTrail in, ECS out: record types, input shapes, decoders, file reading and the ECS
normalization Elastic's AWS integration applies. No Kafka client is imported here."""
