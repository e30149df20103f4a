//! In-memory databases: each collection keeps its UUID, its options as given at `create`
//! (and changed by `collMod`), its index specs and its documents in insertion
//! (`$natural`) order. Views and time-series collections are entries without documents.

use std::collections::BTreeMap;

use bson::{doc, Bson, Document};

use crate::matcher;
use crate::state::{new_uuid, uuid_bson};

/// What `listCollections` calls `type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Collection,
    View,
    Timeseries,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Collection => "collection",
            Kind::View => "view",
            Kind::Timeseries => "timeseries",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Collection {
    pub uuid: [u8; 16],
    pub kind: Kind,
    pub options: Document,
    pub indexes: Vec<Document>,
    pub docs: Vec<Document>,
}

pub fn id_index() -> Document {
    doc! {"v": 2, "key": {"_id": 1}, "name": "_id_"}
}

impl Collection {
    pub fn new(kind: Kind, options: Document, uuid: Option<[u8; 16]>) -> Collection {
        let indexes = if kind == Kind::Collection {
            vec![id_index()]
        } else {
            Vec::new()
        };
        Collection {
            uuid: uuid.unwrap_or_else(new_uuid),
            kind,
            options,
            indexes,
            docs: Vec::new(),
        }
    }

    /// Index of the document with this `_id`.
    pub fn position_of_id(&self, id: &Bson) -> Option<usize> {
        self.docs
            .iter()
            .position(|d| d.get("_id").is_some_and(|v| matcher::equal(v, id)))
    }

    /// The `listCollections` entry.
    pub fn list_entry(&self, name: &str) -> Document {
        let mut d = doc! {"name": name, "type": self.kind.name(), "options": self.options.clone()};
        match self.kind {
            Kind::Collection => {
                d.insert("info", doc! {"readOnly": false, "uuid": uuid_bson(&self.uuid)});
                d.insert("idIndex", id_index());
            }
            Kind::View => {
                d.insert("info", doc! {"readOnly": true});
            }
            Kind::Timeseries => {
                d.insert("info", doc! {"readOnly": false});
            }
        }
        d
    }

    /// Rough data size, for `listDatabases`.
    pub fn size_bytes(&self) -> u64 {
        self.docs
            .iter()
            .map(|d| bson::to_vec(d).map(|v| v.len() as u64).unwrap_or(0))
            .sum()
    }
}

/// All databases (the oplog lives outside, in `oplog::Oplog`).
#[derive(Debug, Default)]
pub struct Store {
    pub dbs: BTreeMap<String, BTreeMap<String, Collection>>,
}

/// Splits `db.coll` at the first dot.
pub fn split_ns(ns: &str) -> Option<(&str, &str)> {
    ns.split_once('.')
}

impl Store {
    pub fn get(&self, db: &str, coll: &str) -> Option<&Collection> {
        self.dbs.get(db)?.get(coll)
    }
    pub fn get_mut(&mut self, db: &str, coll: &str) -> Option<&mut Collection> {
        self.dbs.get_mut(db)?.get_mut(coll)
    }
    /// The namespace of the collection with this UUID.
    pub fn ns_of_uuid(&self, uuid: &[u8]) -> Option<(String, String)> {
        self.dbs.iter().find_map(|(db, colls)| {
            colls
                .iter()
                .find(|(_, c)| c.uuid.as_slice() == uuid)
                .map(|(name, _)| (db.clone(), name.clone()))
        })
    }
    pub fn insert_collection(&mut self, db: &str, name: &str, c: Collection) {
        self.dbs
            .entry(db.to_string())
            .or_default()
            .insert(name.to_string(), c);
    }
    pub fn remove_collection(&mut self, db: &str, name: &str) -> Option<Collection> {
        let colls = self.dbs.get_mut(db)?;
        let c = colls.remove(name);
        if colls.is_empty() {
            self.dbs.remove(db);
        }
        c
    }
}
