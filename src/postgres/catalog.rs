//! What the catalog says about the outbox right now: which relation OIDs are an outbox table
//! (the table and its partitions), and whether the publication still sends its inserts.
//!
//! Decoding replays the catalog as it was at each WAL position, so a rename, a partition or a
//! publication change shows in the stream only as relation ids and missing inserts; these
//! lookups tie them back to the configured tables. Queries only: the pipeline decides.

use tokio_postgres::Client;

use crate::lsn::Lsn;
use crate::outbox::TableName;

/// The relation OIDs of a configured table: the table itself and, when partitioned, every
/// partition (whose OIDs pgoutput sends when `publish_via_partition_root` is off). Empty
/// when the table does not exist.
pub async fn table_oids(pg: &Client, table: &TableName) -> Result<Vec<u32>, tokio_postgres::Error> {
    let rows = pg
        .query(
            "WITH t AS (SELECT to_regclass(format('%I.%I', $1::text, $2::text)) AS rel)
             SELECT rel::oid FROM t WHERE rel IS NOT NULL
             UNION
             SELECT relid::oid FROM t, pg_partition_tree(t.rel) WHERE t.rel IS NOT NULL",
            &[&table.schema, &table.name],
        )
        .await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// The relation `oid` and the tables it is a partition of, nearest first; empty when no
/// such relation exists (any more).
pub async fn ancestors(pg: &Client, oid: u32) -> Result<Vec<u32>, tokio_postgres::Error> {
    let rows = pg
        .query(
            "SELECT a::oid FROM pg_class c, pg_partition_ancestors(c.oid) a WHERE c.oid = $1",
            &[&oid],
        )
        .await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// Whether publication `publication` sends inserts of relation `oid`: the relation itself or
/// one of its partitions is among its tables.
pub async fn publishes(
    pg: &Client,
    publication: &str,
    oid: u32,
) -> Result<bool, tokio_postgres::Error> {
    pg.query_one(
        // Names joined, not cast: a cast (to_regclass) may be evaluated on rows of schemas
        // the role may not see (pg_toast), and fail.
        "SELECT EXISTS (
             SELECT 1 FROM pg_publication_tables pt
             JOIN pg_namespace n ON n.nspname = pt.schemaname
             JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = pt.tablename
             WHERE pt.pubname = $1
               AND c.oid IN (SELECT $2::oid
                             UNION ALL SELECT p.relid::oid FROM pg_class r, pg_partition_tree(r.oid) p
                                       WHERE r.oid = $2))",
        &[&publication, &oid],
    )
    .await
    .map(|r| r.get(0))
}

/// The publication and the outbox tables as they were when streaming started.
#[derive(Debug, Clone)]
pub struct Baseline {
    pub publication: String,
    /// The publication's OID: a dropped and recreated publication has another.
    pub publication_oid: u32,
    /// Each configured table (as named in the configuration) with its OID.
    pub tables: Vec<(TableName, u32)>,
}

impl Baseline {
    /// Reads the baseline; every table must exist (the setup checks ran first).
    pub async fn read(
        pg: &Client,
        publication: &str,
        tables: &[TableName],
    ) -> Result<Baseline, tokio_postgres::Error> {
        let publication_oid: Option<u32> = pg
            .query_opt(
                "SELECT oid FROM pg_publication WHERE pubname = $1",
                &[&publication],
            )
            .await?
            .map(|r| r.get(0));
        let mut out = Vec::new();
        for t in tables {
            let oid: Option<u32> = pg
                .query_one(
                    "SELECT to_regclass(format('%I.%I', $1::text, $2::text))::oid",
                    &[&t.schema, &t.name],
                )
                .await?
                .get(0);
            out.push((t.clone(), oid.unwrap_or(0)));
        }
        Ok(Baseline {
            publication: publication.to_owned(),
            publication_oid: publication_oid.unwrap_or(0),
            tables: out,
        })
    }
}

/// A change since the baseline after which PostgreSQL no longer sends an outbox's inserts.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Drift {
    #[error("publication {publication:?} was dropped")]
    PublicationDropped { publication: String },
    #[error(
        "publication {publication:?} was dropped and created again: decoding this slot fails from the drop on, however the publication looks now"
    )]
    PublicationRecreated { publication: String },
    #[error("publication {publication:?} no longer publishes inserts")]
    NoInserts { publication: String },
    #[error(
        "outbox table {table} was dropped (or dropped and created again: the table by that name now is another one, which the slot's publication membership does not follow)"
    )]
    TableDropped { table: TableName },
    #[error("outbox table {table} (now named {now}) was taken out of publication {publication:?}")]
    NotPublished {
        table: TableName,
        now: String,
        publication: String,
    },
}

impl Drift {
    /// The statement that puts things back, for the error message.
    pub fn fix(&self) -> String {
        match self {
            Drift::PublicationDropped { publication }
            | Drift::PublicationRecreated { publication } => format!(
                "recreate the publication if needed, then move the slot past the gap with `pgoutbox slot skip --to now` (or recreate the slot); publication {publication:?} cannot be decoded across its drop"
            ),
            Drift::NoInserts { publication } => {
                format!("`ALTER PUBLICATION {publication} SET (publish = 'insert');`")
            }
            Drift::TableDropped { table } => format!(
                "make sure {table} is the outbox and in the publication (`ALTER PUBLICATION … ADD TABLE {table};`)"
            ),
            Drift::NotPublished {
                now, publication, ..
            } => format!("`ALTER PUBLICATION {publication} ADD TABLE {now};`"),
        }
    }
}

/// Compares the catalog now with the baseline: the current WAL position and the first drift.
pub async fn drift(
    pg: &Client,
    base: &Baseline,
) -> Result<(Lsn, Option<Drift>), tokio_postgres::Error> {
    let row = pg
        .query_one(
            "SELECT pg_current_wal_lsn()::text, p.oid, p.pubinsert
             FROM (SELECT 1) one LEFT JOIN pg_publication p ON p.pubname = $1",
            &[&base.publication],
        )
        .await?;
    let now: Lsn = row.get::<_, String>(0).parse().unwrap_or(Lsn::ZERO);
    let publication = base.publication.clone();
    let oid: Option<u32> = row.get(1);
    match oid {
        None => return Ok((now, Some(Drift::PublicationDropped { publication }))),
        Some(o) if o != base.publication_oid => {
            return Ok((now, Some(Drift::PublicationRecreated { publication })))
        }
        Some(_) => {}
    }
    if !row.get::<_, Option<bool>>(2).unwrap_or(false) {
        return Ok((now, Some(Drift::NoInserts { publication })));
    }
    for (table, oid) in &base.tables {
        let name: Option<String> = pg
            .query_opt(
                "SELECT format('%I.%I', n.nspname, c.relname) FROM pg_class c
                 JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = $1",
                &[oid],
            )
            .await?
            .map(|r| r.get(0));
        let Some(name) = name else {
            return Ok((
                now,
                Some(Drift::TableDropped {
                    table: table.clone(),
                }),
            ));
        };
        if !publishes(pg, &base.publication, *oid).await? {
            return Ok((
                now,
                Some(Drift::NotPublished {
                    table: table.clone(),
                    now: name,
                    publication,
                }),
            ));
        }
    }
    Ok((now, None))
}
