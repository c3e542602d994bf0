//! (e) The real binary, killed with SIGKILL at random instants under continuous load and
//! restarted each time: at-least-once loses nothing and keeps per-key order; at-most-once
//! never delivers an event twice; exactly-once neither loses nor repeats an event among the
//! records of committed Kafka transactions. `PGOUTBOX_KILL_CYCLES` sets the number of kills (default
//! 20; `scripts/soak.sh` runs 200).

use std::collections::HashSet;
use std::time::Duration;

use crate::common::kill::{cycles, kill_loop};
use crate::common::*;
use pgoutbox::embedded::ConsumedRecord;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_stream_loses_nothing() {
    let cycles = cycles();
    let env = Env::start().await;
    let checker = env.lsn_checker();
    let mut k = kill_loop(&env, cycles, &[], false).await;
    let lsn = checker.finish().await;

    let got = read_until_all(&env.reader(), &k.ids, Duration::from_secs(90)).await;
    let seen = distinct(&got);
    let lost = k.ids.difference(&seen).count();
    assert_eq!(lost, 0, "{lost} events lost; streamer log:\n{}", k.log);
    assert_eq!(order_violations(&got), 0);
    eprintln!(
        "kill -9 run (at-least-once): {cycles} kills ({} with unconfirmed WAL), {} events inserted, {} distinct delivered, {lost} lost, {} duplicates, 0 order violations, confirmed LSN sampled {} times, passed an unacked transaction {} times",
        k.kills_with_unconfirmed_wal,
        k.ids.len(),
        seen.len(),
        got.len() - seen.len(),
        lsn.samples,
        lsn.early_confirms,
    );
    // pgoutbox confirms as soon as the watermark moves (coalesced to one update per 20 ms),
    // so a kill resends about the in-flight window. Confirming only every status interval
    // resent 2,566 per kill here (51,315 in 20 kills); prompt confirmation 8 per kill.
    let duplicates = got.len() - seen.len();
    assert!(
        duplicates <= cycles * 150,
        "{duplicates} duplicates in {cycles} kills: more than the in-flight window"
    );
    assert!(lsn.samples >= 2, "too few LSN samples to mean anything");
    assert_eq!(
        lsn.early_confirms, 0,
        "confirmed_flush_lsn passed an unacked transaction"
    );
    assert!(
        k.kills_with_unconfirmed_wal > 0,
        "no kill happened mid-stream: the test proved nothing"
    );
    k.child.start_kill().unwrap();
}

/// At-most-once confirms each transaction before producing it: whatever a kill interrupts is
/// lost, never sent twice. (At-least-once, above, typically sends thousands twice.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_most_once_never_duplicates() {
    let cycles = cycles() / 2;
    let env = Env::start().await;
    let mut k = kill_loop(
        &env,
        cycles,
        &[("PGOUTBOX_DELIVERY", "at-most-once")],
        false,
    )
    .await;
    // Everything is confirmed; what the last instance produced arrives within a few seconds.
    let got = env
        .reader()
        .read(usize::MAX, Duration::from_secs(5))
        .await
        .unwrap();
    let seen = distinct(&got);
    let duplicates = got.len() - seen.len();
    let lost = k.ids.difference(&seen).count();
    eprintln!(
        "kill -9 run (at-most-once): {cycles} kills ({} with unconfirmed WAL), {} events inserted, {} delivered, {lost} lost, {duplicates} duplicates",
        k.kills_with_unconfirmed_wal,
        k.ids.len(),
        got.len(),
    );
    assert_eq!(
        duplicates, 0,
        "at-most-once sent events twice; log:\n{}",
        k.log
    );
    assert!(seen.is_subset(&k.ids), "delivered events nobody committed");
    assert!(
        seen.len() > k.ids.len() / 2,
        "most events should still arrive: {} of {}",
        seen.len(),
        k.ids.len()
    );
    assert!(
        k.kills_with_unconfirmed_wal > 0,
        "no kill happened mid-stream: the test proved nothing"
    );
    k.child.start_kill().unwrap();
}

/// Exactly-once under SIGKILL. The mock broker doesn't hide aborted transactions from
/// read_committed consumers, so the test does what such a consumer does: it counts only
/// records whose `pgoutbox.txn` header names a Kafka transaction the broker confirmed
/// committed (the streamer logs each commit result). Among those, nothing may be missing
/// and nothing may appear twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_exactly_once_neither_loses_nor_repeats() {
    let cycles = cycles() / 2;
    let env = Env::start().await;
    env.kafka.create_topic("pgoutbox.offsets", 1).unwrap();
    let mut k = kill_loop(&env, cycles, &[("PGOUTBOX_DELIVERY", "exactly-once")], true).await;
    // Everything is confirmed, so committed: read it all (copies in aborted transactions
    // may arrive before the committed ones, so reading until every id was seen isn't enough).
    let got = env
        .reader()
        .read(usize::MAX, Duration::from_secs(3))
        .await
        .unwrap();
    let log = std::fs::read_to_string(k.log_path()).unwrap_or_default();
    let committed = txns_logged(&log, "committed Kafka transaction");
    // The transaction a restarted instance resumed after, read back from the offsets topic.
    // A real broker returns only committed ones there; a kill between the commit and its log
    // line leaves such a transaction committed but unlogged.
    let resumed = txns_logged(&log, "resuming after Kafka transaction");
    let resumed_only: HashSet<&String> = resumed.difference(&committed).collect();
    let visible: Vec<&ConsumedRecord> = got
        .iter()
        .filter(|r| {
            let t = header_str(r, "pgoutbox.txn");
            committed.contains(&t) || resumed.contains(&t)
        })
        .collect();
    let untagged = got
        .iter()
        .filter(|r| r.header("pgoutbox.txn").is_none())
        .count();
    let seen: HashSet<String> = visible.iter().map(|r| header_str(r, "id")).collect();
    let duplicates = visible.len() - seen.len();
    let lost = k.ids.difference(&seen).count();
    eprintln!(
        "kill -9 run (exactly-once): {cycles} kills ({} with unconfirmed WAL), {} events inserted, {} records read, {} in {} committed Kafka transactions ({} known only from a restart's offsets read), {} in aborted ones, {lost} lost, {duplicates} duplicates",
        k.kills_with_unconfirmed_wal,
        k.ids.len(),
        got.len(),
        visible.len(),
        committed.len() + resumed_only.len(),
        resumed_only.len(),
        got.len() - visible.len(),
    );
    if std::env::var("PGOUTBOX_SHOW_LOG").is_ok() {
        eprintln!("{log}");
    }
    assert_eq!(untagged, 0, "every record carries its Kafka transaction");
    assert_eq!(lost, 0, "exactly-once lost events; log:\n{log}");
    assert_eq!(duplicates, 0, "exactly-once repeated events; log:\n{log}");
    assert!(
        k.kills_with_unconfirmed_wal > 0,
        "no kill happened mid-stream: the test proved nothing"
    );
    k.child.start_kill().unwrap();
}
