"""Every librdkafka property the detector sets, with the reason, in one place.

The call sites compose each client's configuration from these tables and the user's own
properties (`kafka`, `kafka_consumer`, `kafka_producer`), which pass through unchanged. A
`*_DEFAULTS` table sits under everything the user gives; the others override the `kafka` table
(every client's) and are overridden by the client's own: `kafka_consumer` for the consumer,
`kafka_producer` for the producers. The dead-letter and changelog readers take no client table,
and the admin clients (topic checks, the broker's transaction.max.timeout.ms, `topics create`)
get only `EVERY_CLIENT` and the `kafka` table.
README.md lists the same properties; a test keeps the two equal. No Kafka client here: `config`,
`stream/`, `offline/` and `cli` import it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class KafkaProperty:
    name: str
    value: str
    """The value set; where `literal` is false, what it comes from (settings, or "removed")."""
    reason: str
    literal: bool = True


@dataclass(frozen=True)
class ClientProperties:
    """The properties one client (or one layer of its configuration) gets from the detector."""

    client: str
    properties: tuple[KafkaProperty, ...]

    def values(self) -> dict[str, str]:
        """The literal properties, to merge into a client's configuration."""
        return {p.name: p.value for p in self.properties if p.literal}


EVERY_CLIENT = ClientProperties("every client", (
    KafkaProperty("bootstrap.servers", "DETECTOR_BOOTSTRAP_SERVERS",
                  "the brokers to connect to", literal=False),
    KafkaProperty("sasl.password", "DETECTOR_KAFKA_SASL_PASSWORD(_FILE)",
                  "set only when given: kept out of the `kafka` tables so it can come from a "
                  "mounted secret file and never shows in a configuration dump", literal=False),
))

CONSUMER = ClientProperties("consumer", (
    KafkaProperty("group.id", "DETECTOR_GROUP_ID",
                  "all workers of all replicas share the input's partitions; the group's "
                  "committed offsets are where a restart resumes", literal=False),
    KafkaProperty("group.instance.id", "DETECTOR_MEMBER_NAME-worker",
                  "only with DETECTOR_STATIC_MEMBERSHIP: a restarted replica takes its "
                  "partitions back without a rebalance", literal=False),
    KafkaProperty("enable.auto.commit", "false",
                  "offsets are committed in the alerts' transaction (at-least-once: after the "
                  "alerts' delivery reports), never on a timer that could run ahead of them"),
    KafkaProperty("enable.auto.offset.store", "false",
                  "each commit names its offsets; nothing librdkafka stores on its own as it "
                  "hands messages out may be committed"),
    KafkaProperty("isolation.level", "read_committed",
                  "events of an upstream transaction that aborted are never judged; the lag "
                  "gauge measures up to the last stable offset"),
    KafkaProperty("partition.assignment.strategy", "cooperative-sticky",
                  "a joining or leaving member moves only the partitions it must; the others "
                  "keep reading and keep their open batch"),
    KafkaProperty("auto.offset.reset", "earliest",
                  "a committed offset that retention deleted resumes at the oldest message "
                  "left, not silently at the end (partitions without a commit start per "
                  "DETECTOR_START_FROM)"),
    KafkaProperty("statistics.interval.ms", "5000",
                  "librdkafka's statistics give each partition's last stable offset for "
                  "consumer_lag_messages"),
    KafkaProperty("enable.partition.eof", "false",
                  "the loop sees a drained input from a short consume; EOF events would only "
                  "come back as errors to skip"),
))

CONSUMER_DEFAULTS = ClientProperties("consumer (defaults)", (
    KafkaProperty("fetch.queue.backoff.ms", "10",
                  "librdkafka stops fetching a partition whose local queue is full for this "
                  "long, 1000 ms by default: a consumer a little slower than the broker drained "
                  "its queue and then sat idle for most of that second (138k events/s instead "
                  "of 350k in the pipeline benchmark)"),
    KafkaProperty("queued.min.messages", "20000",
                  "messages prefetched per partition, librdkafka's 100,000 by default: with the "
                  "short back-off above a smaller queue keeps the loop fed and halves the "
                  "resident memory"),
))

PRODUCER = ClientProperties("producer", (
    KafkaProperty("enable.idempotence", "true",
                  "the producer's own retries neither duplicate nor reorder an alert; "
                  "transactions require it"),
    KafkaProperty("acks", "all",
                  "an alert counts as delivered only once every in-sync replica has it"),
    KafkaProperty("linger.ms", "0",
                  "each commit flushes the producer anyway: lingering only held an alert 1-2 ms "
                  "before its first send (bench/commit_latency_bench.py), and alerts are too "
                  "few to gain from batching"),
    KafkaProperty("compression.type", "lz4",
                  "alerts are repetitive JSON of a few KiB (with event.original); lz4 is the "
                  "cheapest of librdkafka's codecs in CPU"),
    KafkaProperty("transactional.id", "DETECTOR_GROUP_ID-DETECTOR_MEMBER_NAME-worker",
                  "exactly-once only: stable across restarts of the same replica and worker, so "
                  "a restart fences its zombie; unique within the group", literal=False),
    KafkaProperty("batch.size", "the smallest max.message.bytes of its topics, if lower",
                  "the broker checks a whole record batch against the topic's "
                  "max.message.bytes: a batch above it would fail the transaction",
                  literal=False),
))

TRANSACTIONAL_DEFAULTS = ClientProperties("transactional producer (defaults)", (
    KafkaProperty("retry.backoff.ms", "2",
                  "until the broker has written the last transaction's markers (a few ms) it "
                  "answers the next one's first request with CONCURRENT_TRANSACTIONS, which "
                  "librdkafka retries after this: 100 ms by default made every "
                  "send_offsets_to_transaction take ~100 ms, and 10 ms still made back-to-back "
                  "transactions of a steady stream wait ~10 ms each (docs/benchmarks.md); "
                  "retries still back off exponentially up to retry.backoff.max.ms"),
    KafkaProperty("metadata.recovery.strategy", "none",
                  "when every broker is down, librdkafka's default `rebootstrap` decommissions "
                  "the brokers it knows, the group coordinator among them, and "
                  "send_offsets_to_transaction then waits forever for it (librdkafka#5456, "
                  "#5511): every broker restart stalled the stream for the whole wedged-commit "
                  "watchdog; a replacement producer bootstraps afresh"),
    KafkaProperty("reconnect.backoff.max.ms", "1000",
                  "after an outage the transaction coordinator's connection was retried up to "
                  "10 s apart (the default), and the first commit waited for it"),
    KafkaProperty("statistics.interval.ms", "1000",
                  "the brokers' states every second: a commit blocked while a broker is up is "
                  "wedged, and the producer is replaced without waiting for the watchdog"),
))

TOOLS_PRODUCER = ClientProperties("replay producer", (
    KafkaProperty("linger.ms", "20",
                  "replay and dlq replay send in bulk and no one waits on one record: fuller "
                  "requests"),
    KafkaProperty("transactional.id", "removed",
                  "even if given: librdkafka refuses every produce outside a "
                  "transaction from a transactional producer", literal=False),
))

REPLAY_DELIVERY_TIMEOUT_MS = 30_000

TOOLS_PRODUCER_DEFAULTS = ClientProperties("replay producer (defaults)", (
    KafkaProperty("message.timeout.ms", str(REPLAY_DELIVERY_TIMEOUT_MS),
                  "a record not acknowledged by then is reported failed; librdkafka's "
                  "5 minutes would leave a replay to a dead broker hanging"),
))

DLQ_READER = ClientProperties("dlq reader", (
    KafkaProperty("group.id", "cloudtrail-detector-dlq-(random)",
                  "librdkafka needs a group to consume; a fresh one each time, so reading the "
                  "dead letters never moves anyone's offsets", literal=False),
    KafkaProperty("enable.auto.commit", "false", "reading the dead letters commits nothing"),
    KafkaProperty("enable.partition.eof", "true",
                  "dlq show and dlq replay stop at the end each partition had when reached"),
    KafkaProperty("isolation.level", "read_committed",
                  "only the dead letters of committed transactions, as the detector's own "
                  "readers see them"),
))

CHANGELOG_READER = ClientProperties("changelog reader", (
    KafkaProperty("group.id", "DETECTOR_GROUP_ID.restore",
                  "librdkafka needs a group to consume; the reader only assigns changelog "
                  "partitions and commits nothing, so the group holds no offsets",
                  literal=False),
    KafkaProperty("enable.auto.commit", "false",
                  "a restore reads a changelog partition from its beginning every time"),
    KafkaProperty("isolation.level", "read_committed",
                  "the state changes of aborted transactions never come back"),
    KafkaProperty("enable.partition.eof", "true",
                  "a restore ends where the partition ends, which librdkafka reports as EOF"),
    KafkaProperty("auto.offset.reset", "earliest",
                  "the oldest record left, should compaction have removed where a read starts"),
))

SETTINGS_CHECK = ClientProperties("settings check", (
    KafkaProperty("log_level", "0",
                  "the clients built without brokers at start-up only let librdkafka check the "
                  "properties: their complaints about having no broker are noise"),
))

ALL = (
    EVERY_CLIENT, CONSUMER, CONSUMER_DEFAULTS, PRODUCER, TRANSACTIONAL_DEFAULTS, TOOLS_PRODUCER,
    TOOLS_PRODUCER_DEFAULTS, DLQ_READER, CHANGELOG_READER, SETTINGS_CHECK,
)
"""What README.md lists, in this order."""
