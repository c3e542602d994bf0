//! `[[tables]]` in the config file: further outbox tables, each with its own routing; a key
//! left out takes the main table's value.

use serde::{Deserialize, Serialize};

use pgoutbox::outbox::{OutboxConfig, TableName};

/// One `[[tables]]` entry: another outbox table.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TableSettings {
    /// Schema-qualified table name (required).
    pub table: String,
    pub topic_template: Option<String>,
    pub additional_headers: Option<String>,
    pub id_column: Option<String>,
    pub route_column: Option<String>,
    pub key_column: Option<String>,
    pub type_column: Option<String>,
    pub payload_column: Option<String>,
    pub partition_column: Option<String>,
    pub tombstone_on_empty_payload: Option<bool>,
    pub require_key: Option<bool>,
}

impl TableSettings {
    /// This table's routing: its own keys over the main table's.
    pub(super) fn apply(&self, main: &OutboxConfig) -> anyhow::Result<OutboxConfig> {
        let pick = |own: &Option<String>, inherited: &String| {
            own.clone().unwrap_or_else(|| inherited.clone())
        };
        Ok(OutboxConfig {
            table: TableName::parse(&self.table).map_err(anyhow::Error::msg)?,
            id_column: pick(&self.id_column, &main.id_column),
            route_column: pick(&self.route_column, &main.route_column),
            key_column: pick(&self.key_column, &main.key_column),
            type_column: pick(&self.type_column, &main.type_column),
            payload_column: pick(&self.payload_column, &main.payload_column),
            topic_template: match &self.topic_template {
                Some(t) => t.parse()?,
                None => main.topic_template.clone(),
            },
            additional_headers: match &self.additional_headers {
                Some(h) => parse_headers(h),
                None => main.additional_headers.clone(),
            },
            partition_column: match &self.partition_column {
                Some(c) => Some(c.clone()).filter(|c| !c.is_empty()),
                None => main.partition_column.clone(),
            },
            tombstone_on_empty_payload: self
                .tombstone_on_empty_payload
                .unwrap_or(main.tombstone_on_empty_payload),
            require_key: self.require_key.unwrap_or(main.require_key),
            message_prefix: None,
        })
    }
}

/// `column:header, …` (a bare column is its own header name).
pub(super) fn parse_headers(list: &str) -> Vec<(String, String)> {
    list.split(',')
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .map(|c| match c.split_once(':') {
            Some((col, header)) => (col.trim().to_owned(), header.trim().to_owned()),
            None => (c.to_owned(), c.to_owned()),
        })
        .collect()
}
