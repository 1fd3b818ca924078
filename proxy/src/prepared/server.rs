//! Which pgtier-named prepared statements exist on one server connection. Bounded: past the
//! limit the least recently used ones are evicted (and closed on the server by the relay).
//!
//! The registry may believe a statement is absent while the server still has it (an evicting
//! Close the server skipped after an error): the relay therefore always sends a Close of the
//! name right before preparing it, which Postgres accepts whether or not it exists, so a
//! pgtier Parse can never fail with 42P05.

use std::collections::HashMap;

use crate::keyed_hash::Keyed;
use std::sync::Arc;

/// Prepared statements on one server connection.
#[derive(Debug)]
pub struct ServerStatements {
    /// Touched at every Bind: a fast keyed hash (the names are pgtier's own).
    used: HashMap<Arc<str>, u64, Keyed>,
    tick: u64,
    limit: usize,
}

impl ServerStatements {
    /// An empty registry holding at most `limit` statements.
    pub fn new(limit: usize) -> ServerStatements {
        ServerStatements {
            used: HashMap::default(),
            tick: 0,
            limit: limit.max(1),
        }
    }

    /// Whether the statement is prepared here; marks it used.
    pub fn touch(&mut self, name: &str) -> bool {
        self.tick += 1;
        match self.used.get_mut(name) {
            Some(t) => {
                *t = self.tick;
                true
            }
            None => false,
        }
    }

    /// Records a statement as prepared; returns the least recently used ones to close while
    /// the registry is over its limit (never `name` itself).
    pub fn insert(&mut self, name: Arc<str>) -> Vec<Arc<str>> {
        self.tick += 1;
        self.used.insert(name.clone(), self.tick);
        let mut victims = Vec::new();
        while self.used.len() > self.limit {
            let Some(victim) = self
                .used
                .iter()
                .filter(|(n, _)| **n != name)
                .min_by_key(|(_, t)| **t)
                .map(|(n, _)| n.clone())
            else {
                break;
            };
            self.used.remove(&victim);
            victims.push(victim);
        }
        victims
    }

    /// Records again a statement whose evicting Close the server skipped: it is still there
    /// (as least recently used, so it goes first at the next eviction).
    pub fn restore(&mut self, name: Arc<str>) {
        self.used.entry(name).or_insert(0);
    }

    /// Forgets a statement (its Parse failed or was skipped, or it was closed).
    pub fn remove(&mut self, name: &str) {
        self.used.remove(name);
    }

    /// Forgets every statement (the server dropped them all).
    pub fn clear(&mut self) {
        self.used.clear();
    }

    /// Marks a statement unusable (its plan's result type changed): it is prepared again (after
    /// a Close) at its next use.
    pub fn mark_stale(&mut self, name: &str) {
        self.used.remove(name);
    }

    /// Number of statements prepared.
    pub fn len(&self) -> usize {
        self.used.len()
    }

    /// Whether none is prepared.
    pub fn is_empty(&self) -> bool {
        self.used.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evicts_least_recently_used() {
        let mut s = ServerStatements::new(2);
        assert!(s.insert("a".into()).is_empty());
        assert!(s.insert("b".into()).is_empty());
        assert!(s.touch("a"));
        assert_eq!(s.insert("c".into()), vec![Arc::<str>::from("b")]);
        assert!(!s.touch("b"));
        assert_eq!(s.len(), 2);
        // A restored statement goes over the limit until the next insert evicts it first.
        s.restore("b".into());
        assert_eq!(s.len(), 3);
        let mut v = s.insert("d".into());
        v.sort();
        assert_eq!(v, vec![Arc::<str>::from("a"), Arc::<str>::from("b")]);
        assert_eq!(s.len(), 2);
    }
}
