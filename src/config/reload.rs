//! What a reload (SIGHUP) may change while running. A reload stops gracefully and starts
//! again from the slot's confirmed position, which is gap-free only while that position still
//! means the same thing: same server, same database, same slot, same publication, same source.
//! Pure: no I/O.

use super::Config;

/// Why `new` cannot replace `old` by a reload, as one line that says what to do and what a
/// restart costs; `None` when it can.
pub fn refusal(old: &Config, new: &Config) -> Option<String> {
    let mut why = Vec::new();
    if server(old) != server(new) {
        why.push(
            "postgres_url names another server or database, whose WAL is not this slot's: \
             events this slot still holds would stay undelivered there"
                .to_owned(),
        );
    }
    if old.slot != new.slot {
        why.push(format!(
            "slot changes from {:?} to {:?}: a new slot starts where it is created, so what \
             {:?} holds past its confirmed position would be delivered by neither; to switch \
             without a gap, stop pgoutbox, run `SELECT pg_copy_logical_replication_slot('{}', \
             '{}');` (the copy starts at the old slot's confirmed position), then start it with \
             the new slot and drop the old one",
            old.slot, new.slot, old.slot, old.slot, new.slot
        ));
    }
    if old.publication != new.publication {
        why.push(format!(
            "publication changes from {:?} to {:?}: the slot decodes the WAL past its confirmed \
             position with the publication as it was then, and one created since does not exist \
             there yet (PostgreSQL stops on that, or skips those changes)",
            old.publication, new.publication
        ));
    }
    if old.source != new.source {
        why.push(format!(
            "source changes from {:?} to {:?}: the slot's position and the table's status column \
             do not describe the same progress",
            old.source, new.source
        ));
    }
    if why.is_empty() {
        return None;
    }
    Some(format!(
        "SIGHUP refused, still streaming with the running configuration (nothing of the new one \
         applied): {}. Restart pgoutbox to apply such a change",
        why.join("; ")
    ))
}

/// Hosts, ports and database: what makes a slot position mean something.
fn server(cfg: &Config) -> Option<String> {
    let pg = cfg.pg_config().ok()?;
    Some(format!(
        "{:?} {:?} {:?}",
        pg.get_hosts(),
        pg.get_ports(),
        pg.get_dbname().or(pg.get_user())
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Source;

    fn cfg(url: &str) -> Config {
        Config::new(url, "127.0.0.1:9092")
    }

    #[test]
    fn settings_that_keep_the_position_meaningful_reload() {
        let old = cfg("postgres://u:one@db:5432/app");
        let mut new = cfg("postgres://u:two@db:5432/app?connect_timeout=3");
        new.max_in_flight_events = 5;
        new.on_poison = crate::outbox::PoisonPolicy::Skip;
        assert_eq!(refusal(&old, &new), None);
    }

    #[test]
    fn another_slot_is_refused_with_the_gap_free_way() {
        let old = cfg("postgres://db/app");
        let mut new = old.clone();
        new.slot = "third_slot".into();
        let why = refusal(&old, &new).unwrap();
        assert!(why.contains("pg_copy_logical_replication_slot('pgoutbox', 'third_slot')"));
        assert!(why.contains("Restart pgoutbox"));
    }

    #[test]
    fn another_server_or_database_is_refused() {
        let old = cfg("postgres://db/app");
        assert!(refusal(&old, &cfg("postgres://db/other")).is_some());
        assert!(refusal(&old, &cfg("postgres://db2/app")).is_some());
        assert!(refusal(&old, &cfg("postgres://db:5433/app")).is_some());
    }

    #[test]
    fn another_publication_is_refused() {
        let old = cfg("postgres://db/app");
        let mut new = old.clone();
        new.publication = "other_pub".into();
        assert!(refusal(&old, &new).unwrap().contains("publication"));
    }

    #[test]
    fn another_source_is_refused() {
        let old = cfg("postgres://db/app");
        let mut new = old.clone();
        new.source = Source::Poll;
        assert!(refusal(&old, &new).unwrap().contains("source"));
    }
}
