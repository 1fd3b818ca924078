//! Causal scopes: tokens shared by the clients of one user, one application_name or one
//! database, so that a read waits for every write committed by a client of its scope, not only
//! its own (`causal_scope`). A token is an atomic WAL position that only moves forward; a
//! writer advances it before its commit's ReadyForQuery reaches it, so a read the application
//! sends after that commit (on any connection of the scope) sees the token.
//!
//! Tokens live as long as the process (a reload keeps them: a scope is never lower than a
//! write it has seen). Their number is bounded per database and kind; names beyond the bound
//! share one overflow token, which can only make their reads stricter, never staler.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::cluster::Lsn;
use crate::config::CausalScope;

/// Distinct users or application names with a token of their own, per database.
pub const MAX_SCOPES_PER_KIND: usize = 4096;

/// One scope's token: the latest commit position of any client in it.
#[derive(Debug, Default)]
pub struct ScopeToken(AtomicU64);

impl ScopeToken {
    /// The position every read of the scope must see.
    pub fn get(&self) -> Lsn {
        Lsn(self.0.load(Ordering::Acquire))
    }

    /// Moves the token to `lsn` if that is later.
    pub fn advance(&self, lsn: Lsn) {
        self.0.fetch_max(lsn.0, Ordering::AcqRel);
    }
}

/// Tokens of one kind (users or application names) in one database.
#[derive(Debug, Default)]
struct Named {
    map: Mutex<HashMap<String, Arc<ScopeToken>>>,
    /// Shared by the names beyond `MAX_SCOPES_PER_KIND`.
    overflow: Arc<ScopeToken>,
}

impl Named {
    fn token(&self, name: &str) -> Arc<ScopeToken> {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(t) = map.get(name) {
            return t.clone();
        }
        if map.len() >= MAX_SCOPES_PER_KIND {
            return self.overflow.clone();
        }
        let t = Arc::new(ScopeToken::default());
        map.insert(name.to_owned(), t.clone());
        t
    }

    fn list(&self, kind: CausalScope, out: &mut Vec<ScopeRow>) {
        let map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        out.extend(map.iter().map(|(k, t)| ScopeRow {
            scope: kind,
            key: k.clone(),
            token: t.get(),
        }));
        let overflow = self.overflow.get();
        if overflow != Lsn::ZERO {
            out.push(ScopeRow {
                scope: kind,
                key: "(overflow)".into(),
                token: overflow,
            });
        }
    }
}

/// The tokens of one database.
#[derive(Debug, Default)]
pub struct DbScopes {
    database: Arc<ScopeToken>,
    users: Named,
    application_names: Named,
}

/// A scope and its token, as SHOW CAUSAL lists it.
#[derive(Debug, Clone)]
pub struct ScopeRow {
    /// The kind of scope.
    pub scope: CausalScope,
    /// The user or application name (empty for the database's).
    pub key: String,
    /// Its token.
    pub token: Lsn,
}

impl DbScopes {
    /// The token a client shares under `scope` (None: `connection`, nothing shared).
    pub fn token(
        &self,
        scope: CausalScope,
        user: &str,
        application_name: &str,
    ) -> Option<Arc<ScopeToken>> {
        match scope {
            CausalScope::Connection => None,
            CausalScope::User => Some(self.users.token(user)),
            CausalScope::ApplicationName => Some(self.application_names.token(application_name)),
            CausalScope::Database => Some(self.database.clone()),
        }
    }

    /// Every token in use, for SHOW CAUSAL.
    pub fn rows(&self) -> Vec<ScopeRow> {
        let mut out = Vec::new();
        let db = self.database.get();
        if db != Lsn::ZERO {
            out.push(ScopeRow {
                scope: CausalScope::Database,
                key: String::new(),
                token: db,
            });
        }
        self.users.list(CausalScope::User, &mut out);
        self.application_names
            .list(CausalScope::ApplicationName, &mut out);
        out.sort_by(|a, b| (a.scope.as_str(), &a.key).cmp(&(b.scope.as_str(), &b.key)));
        out
    }
}

/// Every database's tokens, kept across reloads.
#[derive(Debug, Default)]
pub struct ScopeRegistry {
    map: Mutex<HashMap<String, Arc<DbScopes>>>,
}

impl ScopeRegistry {
    /// The tokens of `database` (created on first use).
    pub fn database(&self, database: &str) -> Arc<DbScopes> {
        self.map
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(database.to_owned())
            .or_default()
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_shared_per_scope_and_only_move_forward() {
        let s = DbScopes::default();
        assert!(s.token(CausalScope::Connection, "u", "a").is_none());
        let a = s.token(CausalScope::User, "u", "x").unwrap();
        let b = s.token(CausalScope::User, "u", "y").unwrap();
        let other = s.token(CausalScope::User, "v", "x").unwrap();
        a.advance(Lsn(10));
        assert_eq!(b.get(), Lsn(10));
        assert_eq!(other.get(), Lsn::ZERO);
        b.advance(Lsn(5));
        assert_eq!(a.get(), Lsn(10));
        let app = s.token(CausalScope::ApplicationName, "u", "web").unwrap();
        assert_eq!(app.get(), Lsn::ZERO);
        let d1 = s.token(CausalScope::Database, "u", "a").unwrap();
        let d2 = s.token(CausalScope::Database, "v", "b").unwrap();
        d2.advance(Lsn(7));
        assert_eq!(d1.get(), Lsn(7));
        // database, users u and v, application web.
        assert_eq!(s.rows().len(), 4);
    }

    #[test]
    fn names_beyond_the_bound_share_the_overflow_token() {
        let s = DbScopes::default();
        for i in 0..MAX_SCOPES_PER_KIND {
            s.token(CausalScope::ApplicationName, "u", &format!("app{i}"));
        }
        let x = s.token(CausalScope::ApplicationName, "u", "x").unwrap();
        let y = s.token(CausalScope::ApplicationName, "u", "y").unwrap();
        x.advance(Lsn(3));
        // Stricter for y, never staler for x.
        assert_eq!(y.get(), Lsn(3));
        assert_eq!(
            s.application_names.map.lock().unwrap().len(),
            MAX_SCOPES_PER_KIND
        );
    }
}
