//! Statement classification: may this SQL text run on a replica (`Class::Read`) or must it run
//! on the primary (`Class::Write`)? Anything not provably read-only is `Write`.
//!
//! SKELETON: the first-keyword rule below is a placeholder; the real classifier (lexer fast
//! path, sqlparser deep check, function volatility, bounded cache, hints) replaces it.

use std::sync::Arc;

use super::lexer::{Lexer, Token};
use crate::cluster::Lsn;

/// Where a statement may run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// Provably read-only: a replica may run it.
    Read,
    /// Writes, or not provably read-only: the primary only.
    Write,
}

/// Why a statement got its class (for `SHOW ROUTE` and debug logs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// A read-only statement (SELECT without writes, SHOW, ...).
    ReadOnly,
    /// A statement that changes data or schema.
    WriteStatement,
    /// Not recognised, or could not be parsed: the primary is the safe side.
    NotProvablyReadOnly,
}

/// A routing hint from a leading comment: `/* pgtier:primary */` or `/* pgtier:replica */`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hint {
    /// Run on the primary.
    Primary,
    /// Run on a replica if one is eligible.
    Replica,
}

/// What pgtier knows about one statement text (cached by text).
#[derive(Debug, Clone)]
pub struct Classification {
    /// Read or write.
    pub class: Class,
    /// Why.
    pub reason: Reason,
    /// A routing hint comment, if any.
    pub hint: Option<Hint>,
    /// `/* pgtier:min_lsn=X/Y */`: the read must see at least this WAL position.
    pub min_lsn: Option<Lsn>,
    /// Tables the statement touches, lower-cased, as written (`payments`, `billing.payments`).
    pub tables: Arc<[String]>,
}

/// Function volatility knowledge: built-in lists, `pg_proc`, config overrides.
#[derive(Debug, Clone, Default)]
pub struct FunctionTable {}

impl FunctionTable {
    /// The built-in knowledge only (used until `pg_proc` has been read).
    pub fn builtin() -> FunctionTable {
        FunctionTable {}
    }
}

/// Classifies statement texts, caching results (bounded).
#[derive(Debug)]
pub struct Classifier {
    _funcs: FunctionTable,
}

impl Classifier {
    /// A classifier using `funcs`, caching up to `cache_capacity` statement texts.
    pub fn new(funcs: FunctionTable, _cache_capacity: usize) -> Classifier {
        Classifier { _funcs: funcs }
    }

    /// Classifies `sql` (one Query or Parse string, possibly several statements).
    pub fn classify(&self, sql: &[u8]) -> Classification {
        let read = Lexer::new(sql)
            .find_map(|t| match t {
                Token::Word(w) => Some(w.eq_ignore_ascii_case(b"select")),
                _ => None,
            })
            .unwrap_or(false);
        Classification {
            class: if read { Class::Read } else { Class::Write },
            reason: if read {
                Reason::ReadOnly
            } else {
                Reason::NotProvablyReadOnly
            },
            hint: None,
            min_lsn: None,
            tables: Arc::from(Vec::new()),
        }
    }
}
