//! Which pgtier-named prepared statements exist on one server connection. Bounded: past the
//! limit the least recently used one is evicted (and closed on the server by the relay).

use std::collections::HashMap;
use std::sync::Arc;

/// Prepared statements on one server connection.
#[derive(Debug)]
pub struct ServerStatements {
    used: HashMap<Arc<str>, u64>,
    /// Statements still on the server but unusable (their plan's result type changed): closed
    /// before they are prepared again.
    stale: Vec<Arc<str>>,
    tick: u64,
    limit: usize,
}

impl ServerStatements {
    /// An empty registry holding at most `limit` statements.
    pub fn new(limit: usize) -> ServerStatements {
        ServerStatements {
            used: HashMap::new(),
            stale: Vec::new(),
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

    /// Records a statement as prepared; returns the least recently used one to close if the
    /// registry is over its limit.
    pub fn insert(&mut self, name: Arc<str>) -> Option<Arc<str>> {
        self.tick += 1;
        self.used.insert(name.clone(), self.tick);
        if self.used.len() <= self.limit {
            return None;
        }
        let (victim, _) = self
            .used
            .iter()
            .filter(|(n, _)| **n != name)
            .min_by_key(|(_, t)| **t)
            .map(|(n, t)| (n.clone(), *t))?;
        self.used.remove(&victim);
        Some(victim)
    }

    /// Forgets a statement (its Parse failed or it was closed).
    pub fn remove(&mut self, name: &str) {
        self.used.remove(name);
    }

    /// Forgets every statement (the server dropped them all).
    pub fn clear(&mut self) {
        self.used.clear();
        self.stale.clear();
    }

    /// Marks a statement unusable: it must be closed on the server before it is prepared again.
    pub fn mark_stale(&mut self, name: &Arc<str>) {
        if self.used.remove(name).is_some() && self.stale.len() < self.limit {
            self.stale.push(name.clone());
        }
    }

    /// Whether `name` is stale (and forgets that: the caller closes it now).
    pub fn take_stale(&mut self, name: &str) -> bool {
        let before = self.stale.len();
        self.stale.retain(|n| &**n != name);
        self.stale.len() != before
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
        assert_eq!(s.insert("a".into()), None);
        assert_eq!(s.insert("b".into()), None);
        assert!(s.touch("a"));
        assert_eq!(s.insert("c".into()).as_deref(), Some("b"));
        assert!(!s.touch("b"));
        assert_eq!(s.len(), 2);
    }
}
