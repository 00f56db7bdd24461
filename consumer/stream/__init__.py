"""The running detector: Kafka source and sink, the loop and its checkpoint, the Schema Registry
clients, health, HTTP and metrics. The only package, with `offline/`, that talks to Kafka."""
