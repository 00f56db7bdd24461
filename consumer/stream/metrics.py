"""Prometheus metrics: one prefix, base units, low-cardinality labels only.

Labels never carry user names, event ids or other per-event values: topic, partition, rule id,
severity, a short decode-error reason, a rule-skip kind, an input shape and an exception list and
item id are the only dimensions (rule_info adds the rule's name, one per rule id, for readable
dashboard legends).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

PREFIX = "cloudtrail_detector"

PROCESSING_LATENCY_BUCKETS = (
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5,
)
"""From consume to alert produced: tens of microseconds on the hot path, seconds when stuck."""

EVENT_TO_ALERT_BUCKETS = (1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0)
"""From the event's eventTime to its alert: CloudTrail itself delivers within minutes."""

BATCH_SIZE_BUCKETS = (1, 10, 50, 100, 250, 500, 1000, 2500, 5000, 10000)

COMMIT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
"""A healthy commit takes milliseconds; seconds mean a struggling broker or coordinator."""


class Metrics:
    """Every metric the detector exports, registered in one registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        def name(suffix: str) -> str:
            return f"{PREFIX}_{suffix}"

        self.registry = registry
        self.messages_consumed = Counter(
            name("messages_consumed"), "Messages read from the input topics.",
            ["topic", "partition"], registry=registry,
        )
        self.bytes_consumed = Counter(
            name("consumed_bytes"), "Bytes of message values read from the input topics.",
            ["topic", "partition"], registry=registry,
        )
        self.events_decoded = Counter(
            name("events_decoded"), "Messages decoded into CloudTrail records.",
            registry=registry,
        )
        self.decode_errors = Counter(
            name("decode_errors"), "Messages that could not be decoded, by reason.",
            ["reason"], registry=registry,
        )
        self.dead_letters = Counter(
            name("dead_letters"), "Messages written to the dead-letter topic, by reason.",
            ["reason"], registry=registry,
        )
        self.messages_without_cloudtrail = Counter(
            name("messages_without_cloudtrail"),
            "Messages skipped because they hold no CloudTrail event (a digest file, a CloudWatch "
            "Logs control message, an EventBridge event from another service), by shape.",
            ["shape"], registry=registry,
        )
        self.prefilter_skipped = Counter(
            name("prefilter_skipped"),
            "Messages skipped without decoding because no enabled rule can match their bytes.",
            registry=registry,
        )
        self.rule_evaluations = Counter(
            name("rule_evaluations"), "Events evaluated by a rule.", ["rule_id"],
            registry=registry,
        )
        self.rule_matches = Counter(
            name("rule_matches"), "Events a rule matched.", ["rule_id"], registry=registry,
        )
        self.alerts = Counter(
            name("alerts"), "Alerts produced to the alerts topic.", ["rule_id", "severity"],
            registry=registry,
        )
        self.alerts_throttled = Counter(
            name("alerts_throttled"),
            "Matches above a rule's max_signals per interval, reported in a summary alert.",
            ["rule_id"], registry=registry,
        )
        self.exception_removals = Counter(
            name("exception_removals"),
            "Matches an exception item removed, by rule, exception list and item id.",
            ["rule_id", "list_id", "item_id"], registry=registry,
        )
        self.exception_reloads = Counter(
            name("exception_reloads"),
            "Reloads of the exception files, by outcome (applied, or failed: the previous set "
            "stays).", ["outcome"], registry=registry,
        )
        self.exception_items = Gauge(
            name("exception_items"), "Exception items attached to the enabled rules.",
            registry=registry,
        )
        self.processing_latency = Histogram(
            name("processing_latency_seconds"),
            "Time from consuming a message to producing its alert.",
            buckets=PROCESSING_LATENCY_BUCKETS, registry=registry,
        )
        self.event_to_alert_latency = Histogram(
            name("event_to_alert_latency_seconds"),
            "Time from the event's eventTime to its alert being produced.",
            buckets=EVENT_TO_ALERT_BUCKETS, registry=registry,
        )
        self.batch_size = Histogram(
            name("batch_size_messages"), "Messages per consumed batch.",
            buckets=BATCH_SIZE_BUCKETS, registry=registry,
        )
        self.consumer_lag = Gauge(
            name("consumer_lag_messages"),
            "Messages between the group's committed offset and the partition's end (its last "
            "stable offset), for partitions assigned to this worker.",
            ["topic", "partition"], registry=registry,
        )
        self.committed_offset = Gauge(
            name("committed_offset"),
            "The group's committed offset: read at assignment, then what this worker commits.",
            ["topic", "partition"], registry=registry,
        )
        self.assigned_partitions = Gauge(
            name("assigned_partitions"), "Input partitions assigned to this worker.",
            registry=registry,
        )
        self.rebalances = Counter(
            name("rebalances"), "Partition assignment changes, by kind.", ["kind"],
            registry=registry,
        )
        self.transactions = Counter(
            name("transactions"), "Kafka transactions, by outcome (committed or aborted).",
            ["outcome"], registry=registry,
        )
        self.commit_duration = Histogram(
            name("commit_duration_seconds"),
            "Time the loop waited to commit a batch (transaction, or flush and offset commit).",
            buckets=COMMIT_BUCKETS, registry=registry,
        )
        self.produce_errors = Counter(
            name("produce_errors"), "Messages whose delivery failed, by error name.",
            ["error"], registry=registry,
        )
        self.messages_too_large = Counter(
            name("messages_too_large"),
            "Messages refused as larger than their topic's max.message.bytes or the producer's "
            "message.max.bytes (alerts go without event.original, dead letters without value).",
            ["topic"], registry=registry,
        )
        self.messages_in_flight = Gauge(
            name("producer_messages_in_flight"), "Messages waiting in the producer's queue.",
            registry=registry,
        )
        self.ready = Gauge(
            name("ready"), "1 when partitions are assigned and the broker is reachable.",
            registry=registry,
        )
        self.rules_loaded = Gauge(
            name("rules_loaded"), "Enabled rules this worker runs.", registry=registry,
        )
        self.rules_skipped = Gauge(
            name("rules_skipped"),
            "Valid rules not run because their rule type (rule_type) or something in their "
            "query (query) is not supported yet; each is named in the start-up log.",
            ["reason_kind"], registry=registry,
        )
        self.stateful_open_groups = Gauge(
            name("stateful_open_groups"),
            "Groups with state (aggregation buckets, suppression windows) on this worker's "
            "repartition partitions, by rule.", ["rule_id"], registry=registry,
        )
        self.stateful_state_bytes = Gauge(
            name("stateful_state_bytes"),
            "Bytes of that state as its changelog holds it (JSON), by rule.", ["rule_id"],
            registry=registry,
        )
        self.watermark_lag = Gauge(
            name("watermark_lag_seconds"),
            "Wall clock minus the watermark of each repartition partition this worker owns.",
            ["partition"], registry=registry,
        )
        self.late_events = Counter(
            name("late_events"),
            "Rows of aggregating rules that arrived after every run reading their time was "
            "evaluated: counted here and dropped.", ["rule_id"], registry=registry,
        )
        self.suppressed_matches = Counter(
            name("suppressed_matches"),
            "Alerts absorbed into a suppression window's count (alert_suppression), by rule.",
            ["rule_id"], registry=registry,
        )
        self.state_restore = Histogram(
            name("state_restore_seconds"),
            "Time to restore a repartition partition's state from its changelog.",
            buckets=(*COMMIT_BUCKETS, 30.0, 60.0, 120.0), registry=registry,
        )
        self.build = Info(
            name("build"), "Version, worker index and enabled rules of this detector.",
            registry=registry,
        )
        self.rule = Info(
            name("rule"),
            "Name and severity of each enabled rule, joined on rule_id for readable legends.",
            ["rule_id"], registry=registry,
        )

