//! Metric names (all prefixed `pgoutbox_`) and their descriptions. The library records
//! through the `metrics` facade; the binary decides how to export (Prometheus).

/// Events the destination acknowledged, by `topic` and `destination`.
pub const EVENTS_DELIVERED: &str = "pgoutbox_events_delivered_total";
/// Failed deliveries by `kind`: `backpressure`, `retriable`, `final`.
pub const DELIVERY_ERRORS: &str = "pgoutbox_delivery_errors_total";
/// Events handed to the producer and not yet acked.
pub const IN_FLIGHT_EVENTS: &str = "pgoutbox_in_flight_events";
/// Bytes of those events.
pub const IN_FLIGHT_BYTES: &str = "pgoutbox_in_flight_bytes";
/// Last WAL position received from the server (status update `write`).
pub const RECEIVED_LSN: &str = "pgoutbox_received_lsn";
/// Position confirmed to the slot (status update `flush`).
pub const CONFIRMED_LSN: &str = "pgoutbox_confirmed_lsn";
/// WAL the server retains for the slot (current WAL − restart_lsn), polled.
pub const SLOT_RETAINED_WAL: &str = "pgoutbox_slot_retained_wal_bytes";
/// Current WAL − confirmed_flush_lsn, polled.
pub const SLOT_LAG: &str = "pgoutbox_slot_lag_bytes";
/// Sessions restarted after an error.
pub const RECONNECTS: &str = "pgoutbox_reconnects_total";
/// 1 while streaming, 0 otherwise.
pub const STREAMING: &str = "pgoutbox_streaming";
/// 1 while the destination refuses publishers (RabbitMQ `connection.blocked`), by `destination`.
pub const DESTINATION_BLOCKED: &str = "pgoutbox_destination_blocked";
/// 1 while the slot is a failover slot that some standby's physical slot is not synchronized
/// with (`allow_unsynchronized_failover = true` lets pgoutbox run so).
pub const FAILOVER_UNSYNCHRONIZED: &str = "pgoutbox_failover_unsynchronized";
/// Seconds for which events have waited with no ack from the destination, by `destination`
/// (0 while it moves); past 10 s `/readyz` answers 503.
pub const STALLED: &str = "pgoutbox_destination_stalled_seconds";
/// When the confirmed position last moved, as Unix seconds (alerts: stalled).
pub const CONFIRMED_ADVANCED_AT: &str = "pgoutbox_confirmed_advanced_timestamp_seconds";
/// Outbox events decoded from the source (before delivery; resent ones count again).
pub const EVENTS_DECODED: &str = "pgoutbox_events_decoded_total";
/// The server's `max_slot_wal_keep_size` in bytes; -1: unlimited (polled).
pub const SLOT_WAL_KEEP_LIMIT: &str = "pgoutbox_slot_wal_keep_limit_bytes";
/// 1 when the server has invalidated the slot (`wal_status = lost` or an invalidation
/// reason), polled.
pub const SLOT_INVALIDATED: &str = "pgoutbox_slot_invalidated";
/// Always 1, with the `version` label.
pub const BUILD_INFO: &str = "pgoutbox_build_info";
/// Seconds from the transaction's commit in PostgreSQL (polling: from the poll that read the
/// row) to the destination's ack, per event.
pub const COMMIT_TO_ACK: &str = "pgoutbox_commit_to_ack_seconds";

/// UPDATEs of outbox rows seen (`on_update` warn/error), by `table`.
pub const OUTBOX_UPDATES: &str = "pgoutbox_outbox_updates_total";
/// Undeliverable events by `action` (`dead-letter`, `skip`) and `reason`.
pub const POISON_EVENTS: &str = "pgoutbox_poison_events_total";

/// At-most-once: events whose position was confirmed but which were never acknowledged
/// (given up at a shutdown timeout, or refused for good with `on_poison = fail`).
pub const LOST_EVENTS: &str = "pgoutbox_lost_events_total";

/// Histogram buckets for [`COMMIT_TO_ACK`], 1 ms to 1 min.
pub const COMMIT_TO_ACK_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// Registers help texts with whatever recorder is installed.
pub fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(EVENTS_DELIVERED, "Events acknowledged by Kafka, by topic");
    describe_counter!(
        DELIVERY_ERRORS,
        "Failed deliveries by kind (backpressure, retriable, final)"
    );
    describe_gauge!(
        IN_FLIGHT_EVENTS,
        "Events handed to the producer, not yet acked"
    );
    describe_gauge!(IN_FLIGHT_BYTES, Unit::Bytes, "Bytes of in-flight events");
    describe_gauge!(RECEIVED_LSN, "Last WAL position received from PostgreSQL");
    describe_gauge!(
        CONFIRMED_LSN,
        "WAL position confirmed to the replication slot"
    );
    describe_gauge!(SLOT_RETAINED_WAL, Unit::Bytes, "WAL retained by the slot");
    describe_gauge!(
        SLOT_LAG,
        Unit::Bytes,
        "Current WAL position minus the slot's confirmed position"
    );
    describe_counter!(RECONNECTS, "Sessions restarted after an error");
    describe_counter!(OUTBOX_UPDATES, "UPDATEs of outbox rows seen, by table");
    describe_counter!(
        POISON_EVENTS,
        "Undeliverable events dead-lettered or skipped, by action and reason"
    );
    describe_counter!(
        LOST_EVENTS,
        "At-most-once: events confirmed to PostgreSQL but never acknowledged, each also logged by id"
    );
    describe_gauge!(STREAMING, "1 while the replication stream is running");
    describe_gauge!(
        STALLED,
        "Seconds events have waited with no ack from the destination (0 while it moves)"
    );
    describe_gauge!(
        FAILOVER_UNSYNCHRONIZED,
        "1 while a standby's physical slot is missing from synchronized_standby_slots (allow_unsynchronized_failover)"
    );
    describe_gauge!(
        DESTINATION_BLOCKED,
        "1 while the destination refuses publishers (a RabbitMQ memory or disk alarm), by destination"
    );
    describe_gauge!(
        CONFIRMED_ADVANCED_AT,
        Unit::Seconds,
        "When the confirmed position last moved (Unix time)"
    );
    describe_counter!(EVENTS_DECODED, "Outbox events decoded from the source");
    describe_gauge!(
        SLOT_WAL_KEEP_LIMIT,
        Unit::Bytes,
        "The server's max_slot_wal_keep_size (-1: unlimited)"
    );
    describe_gauge!(
        SLOT_INVALIDATED,
        "1 when the server has invalidated the slot"
    );
    describe_gauge!(BUILD_INFO, "Always 1, labelled with the version");
    metrics::gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
    describe_histogram!(
        COMMIT_TO_ACK,
        Unit::Seconds,
        "PostgreSQL commit to Kafka ack, per event"
    );
}
