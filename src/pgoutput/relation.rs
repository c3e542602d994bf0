//! The caller-owned relation cache that turns relation ids back into tables.

use std::collections::HashMap;

use super::Relation;

/// Latest Relation message per relation id, as sent by the server in this session.
#[derive(Debug, Default)]
pub struct RelationCache {
    relations: HashMap<u32, Relation>,
}

impl RelationCache {
    /// Stores (or replaces, after DDL) a relation's description.
    pub fn update(&mut self, relation: Relation) {
        self.relations.insert(relation.id, relation);
    }

    /// The relation with this id, if the server has described it.
    pub fn get(&self, id: u32) -> Option<&Relation> {
        self.relations.get(&id)
    }
}
