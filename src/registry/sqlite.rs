//! The embedded registry: one SQLite file, one row per gateway holding its record as JSON.
//!
//! The database runs in WAL mode with `synchronous = FULL`, so a write that returned is on
//! disk, and a crash in the middle of a write leaves the previous state.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};

use super::{GatewayRecord, Registry, RegistryError};

/// Schema version stored in `PRAGMA user_version`.
const SCHEMA_VERSION: i64 = 1;

/// Registry stored in a SQLite file.
pub struct SqliteRegistry {
    path: PathBuf,
    connection: Mutex<Connection>,
}

fn storage(error: impl std::fmt::Display) -> RegistryError {
    RegistryError::Storage(error.to_string())
}

impl SqliteRegistry {
    /// Opens (and creates if needed) the registry at `path`.
    pub fn open(path: &Path) -> Result<Self, RegistryError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|error| storage(format!("cannot create {}: {error}", dir.display())))?;
        }
        let connection = Connection::open(path)
            .map_err(|error| storage(format!("cannot open {}: {error}", path.display())))?;
        connection
            .execute_batch(
                "PRAGMA journal_mode = WAL;
                 PRAGMA synchronous = FULL;
                 PRAGMA busy_timeout = 5000;
                 CREATE TABLE IF NOT EXISTS gateways (
                     id TEXT PRIMARY KEY NOT NULL,
                     record TEXT NOT NULL,
                     updated_at INTEGER NOT NULL
                 );",
            )
            .map_err(storage)?;
        let version: i64 = connection
            .query_row("PRAGMA user_version", [], |row| row.get(0))
            .map_err(storage)?;
        match version {
            0 => connection
                .execute_batch(&format!("PRAGMA user_version = {SCHEMA_VERSION}"))
                .map_err(storage)?,
            SCHEMA_VERSION => {}
            other => {
                return Err(storage(format!(
                    "{} has schema version {other}, but this Server knows version {SCHEMA_VERSION}; run a newer ipaas-server",
                    path.display()
                )))
            }
        }
        Ok(Self {
            path: path.to_owned(),
            connection: Mutex::new(connection),
        })
    }

    /// File the registry lives in.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.connection
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.as_secs() as i64)
        .unwrap_or(0)
}

fn decode(id: &str, json: &str) -> Result<GatewayRecord, RegistryError> {
    serde_json::from_str(json)
        .map_err(|error| storage(format!("gateway `{id}` is stored damaged: {error}")))
}

fn encode(record: &GatewayRecord) -> Result<String, RegistryError> {
    serde_json::to_string(record).map_err(storage)
}

impl Registry for SqliteRegistry {
    fn list(&self) -> Result<Vec<GatewayRecord>, RegistryError> {
        let connection = self.lock();
        let mut statement = connection
            .prepare("SELECT id, record FROM gateways ORDER BY id")
            .map_err(storage)?;
        let rows = statement
            .query_map([], |row| {
                Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?))
            })
            .map_err(storage)?;
        rows.map(|row| {
            let (id, json) = row.map_err(storage)?;
            decode(&id, &json)
        })
        .collect()
    }

    fn get(&self, id: &str) -> Result<Option<GatewayRecord>, RegistryError> {
        let connection = self.lock();
        let json: Option<String> = connection
            .query_row("SELECT record FROM gateways WHERE id = ?1", [id], |row| {
                row.get(0)
            })
            .optional()
            .map_err(storage)?;
        json.map(|json| decode(id, &json)).transpose()
    }

    fn insert(&self, record: &GatewayRecord) -> Result<(), RegistryError> {
        let connection = self.lock();
        let inserted = connection
            .execute(
                "INSERT INTO gateways (id, record, updated_at) VALUES (?1, ?2, ?3) ON CONFLICT(id) DO NOTHING",
                params![record.id, encode(record)?, now()],
            )
            .map_err(storage)?;
        if inserted == 0 {
            return Err(RegistryError::Conflict(record.id.clone()));
        }
        Ok(())
    }

    fn modify(
        &self,
        id: &str,
        change: &mut dyn FnMut(&mut GatewayRecord) -> Result<(), RegistryError>,
    ) -> Result<GatewayRecord, RegistryError> {
        let mut connection = self.lock();
        let transaction = connection
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(storage)?;
        let json: Option<String> = transaction
            .query_row("SELECT record FROM gateways WHERE id = ?1", [id], |row| {
                row.get(0)
            })
            .optional()
            .map_err(storage)?;
        let Some(json) = json else {
            return Err(RegistryError::NotFound(id.to_owned()));
        };
        let mut record = decode(id, &json)?;
        change(&mut record)?;
        if record.id != id {
            return Err(storage("a change may not rename a gateway"));
        }
        transaction
            .execute(
                "UPDATE gateways SET record = ?2, updated_at = ?3 WHERE id = ?1",
                params![id, encode(&record)?, now()],
            )
            .map_err(storage)?;
        transaction.commit().map_err(storage)?;
        Ok(record)
    }

    fn delete(&self, id: &str) -> Result<(), RegistryError> {
        let deleted = self
            .lock()
            .execute("DELETE FROM gateways WHERE id = ?1", [id])
            .map_err(storage)?;
        if deleted == 0 {
            return Err(RegistryError::NotFound(id.to_owned()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::ServiceRecord;

    fn record(id: &str) -> GatewayRecord {
        GatewayRecord {
            id: id.into(),
            name: String::new(),
            public_keys: Vec::new(),
            allow: vec!["127.0.0.1".into()],
            services: vec![ServiceRecord {
                name: "web".into(),
                target: "127.0.0.1:80".into(),
                listen: "127.0.0.1:30001".into(),
            }],
        }
    }

    #[test]
    fn records_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data/registry.db");
        {
            let registry = SqliteRegistry::open(&path).unwrap();
            registry.insert(&record("b")).unwrap();
            registry.insert(&record("a")).unwrap();
            registry
                .modify("a", &mut |record| {
                    record.name = "renamed".into();
                    Ok(())
                })
                .unwrap();
        }
        let registry = SqliteRegistry::open(&path).unwrap();
        let ids: Vec<_> = registry
            .list()
            .unwrap()
            .into_iter()
            .map(|record| record.id)
            .collect();
        assert_eq!(ids, ["a", "b"]);
        assert_eq!(registry.get("a").unwrap().unwrap().name, "renamed");
    }

    #[test]
    fn conflicts_and_missing_ids() {
        let dir = tempfile::tempdir().unwrap();
        let registry = SqliteRegistry::open(&dir.path().join("registry.db")).unwrap();
        registry.insert(&record("a")).unwrap();
        assert!(matches!(
            registry.insert(&record("a")),
            Err(RegistryError::Conflict(_))
        ));
        assert!(matches!(
            registry.delete("missing"),
            Err(RegistryError::NotFound(_))
        ));
        assert!(matches!(
            registry.modify("missing", &mut |_| Ok(())),
            Err(RegistryError::NotFound(_))
        ));
        registry.delete("a").unwrap();
        assert!(registry.get("a").unwrap().is_none());
    }

    #[test]
    fn rejected_change_keeps_the_old_record() {
        let dir = tempfile::tempdir().unwrap();
        let registry = SqliteRegistry::open(&dir.path().join("registry.db")).unwrap();
        registry.insert(&record("a")).unwrap();
        let result = registry.modify("a", &mut |record| {
            record.allow.clear();
            Err(RegistryError::Invalid(Vec::new()))
        });
        assert!(result.is_err());
        assert_eq!(registry.get("a").unwrap().unwrap(), record("a"));
    }
}
