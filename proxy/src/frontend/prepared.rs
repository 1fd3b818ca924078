//! A client's named prepared statements (protocol level). Each maps the client's name to a
//! pgtier-owned server-side name derived from the statement text and parameter types, so that
//! clients preparing the same statement share it on a server connection, and no client's name
//! ever reaches a server (where it could clash with another client's).

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use bytes::Bytes;

/// Most named statements one client may hold.
pub const MAX_PER_CLIENT: usize = 10_000;

/// One statement as the client prepared it.
#[derive(Debug)]
pub struct Prepared {
    /// The name used on servers (`pgtier_<hash>`).
    pub server_name: Arc<str>,
    /// Query string and parameter types, as in the client's Parse (for re-preparing).
    pub rest: Bytes,
}

impl Prepared {
    /// A statement for this Parse body remainder (query + parameter types).
    pub fn new(rest: &[u8]) -> Prepared {
        // DefaultHasher::new() has fixed keys: the same statement gets the same name in every
        // session, which is what lets clients share it.
        let mut h = std::collections::hash_map::DefaultHasher::new();
        rest.hash(&mut h);
        Prepared {
            server_name: format!("pgtier_{:016x}_{}", h.finish(), rest.len()).into(),
            rest: Bytes::copy_from_slice(rest),
        }
    }
}

/// A client's statements by the client's names.
#[derive(Debug, Default)]
pub struct ClientStatements {
    map: HashMap<Box<[u8]>, Arc<Prepared>>,
}

impl ClientStatements {
    /// The statement the client calls `name`.
    pub fn get(&self, name: &[u8]) -> Option<&Arc<Prepared>> {
        self.map.get(name)
    }

    /// Whether the client has a statement called `name`.
    pub fn contains(&self, name: &[u8]) -> bool {
        self.map.contains_key(name)
    }

    /// Adds a statement; false if the client is at its limit.
    pub fn insert(&mut self, name: &[u8], p: Arc<Prepared>) -> bool {
        if self.map.len() >= MAX_PER_CLIENT {
            return false;
        }
        self.map.insert(name.into(), p);
        true
    }

    /// Forgets every statement (DEALLOCATE ALL, DISCARD ALL).
    pub fn clear(&mut self) {
        self.map.clear();
    }

    /// Removes a statement (Close).
    pub fn remove(&mut self, name: &[u8]) {
        self.map.remove(name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_statement_same_server_name() {
        let a = Prepared::new(b"select 1\0\0\0");
        let b = Prepared::new(b"select 1\0\0\0");
        let c = Prepared::new(b"select 2\0\0\0");
        assert_eq!(a.server_name, b.server_name);
        assert_ne!(a.server_name, c.server_name);
        assert!(a.server_name.starts_with("pgtier_"));
    }
}
