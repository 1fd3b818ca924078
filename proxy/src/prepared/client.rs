//! A client's named prepared statements (protocol level). Each maps the client's name to a
//! pgtier-owned server-side name given to the statement's text (query and parameter types) by
//! the process-wide [`StatementNames`], so that clients preparing the same statement share it
//! on a server connection, no two texts ever share a name, and no client's name ever reaches a
//! server (where it could clash with another client's).
//!
//! Bounds: at most [`MAX_PER_CLIENT`] statements per client, and their bytes (name, query and
//! parameter types) within `max_prepared_statement_bytes_per_client` per client and
//! `max_prepared_statement_bytes_total` over all clients. A Parse past a bound fails with an
//! error (see [`PrepareError`]) and the client goes on.

use std::collections::HashMap;

use crate::keyed_hash::Keyed;
use std::sync::{Arc, OnceLock};

use bytes::{Bytes, BytesMut};
use thiserror::Error;

use crate::prepared::names::{StatementNames, Text};
use crate::protocol::extended;
use crate::protocol::frame::peek_header;
use crate::protocol::messages::{error_response, ready_for_query, Severity, TxStatus};
use crate::protocol::SqlState;
use crate::router::route::UnitInfo;
use crate::sql::session_state::pins;

/// Most named statements one client may hold.
pub const MAX_PER_CLIENT: usize = 10_000;

/// Why a client's Parse of a named statement was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PrepareError {
    /// The client holds [`MAX_PER_CLIENT`] statements.
    #[error("pgtier: too many prepared statements for one client (limit {MAX_PER_CLIENT})")]
    TooMany,
    /// The client's statements would exceed `max_prepared_statement_bytes_per_client`.
    #[error("pgtier: prepared statements of this client would take {needed} bytes, over max_prepared_statement_bytes_per_client ({limit}); DEALLOCATE some first")]
    ClientBytes {
        /// The client's bytes with this statement.
        needed: usize,
        /// The per-client bound.
        limit: usize,
    },
    /// All clients' statements would exceed `max_prepared_statement_bytes_total`.
    #[error("pgtier: prepared statements of all clients take max_prepared_statement_bytes_total ({limit} bytes); this one ({size} bytes) does not fit now")]
    TotalBytes {
        /// The statement's bytes.
        size: usize,
        /// The global bound.
        limit: usize,
    },
}

impl PrepareError {
    /// The SQLSTATE of the error: 54000 (program_limit_exceeded) for the client's own limits,
    /// which only the client can relieve; 53200 (out_of_memory) for the global bound, a
    /// shared resource other clients may free (a retry later may succeed).
    pub fn sqlstate(&self) -> SqlState {
        match self {
            PrepareError::TooMany | PrepareError::ClientBytes { .. } => {
                SqlState::PROGRAM_LIMIT_EXCEEDED
            }
            PrepareError::TotalBytes { .. } => SqlState::OUT_OF_MEMORY,
        }
    }
}

/// One statement as the client prepared it.
#[derive(Debug)]
pub struct Prepared {
    /// The name used on servers (`pgtier_<n>`, see [`StatementNames`]).
    pub server_name: Arc<str>,
    /// Query string and parameter types, as in the client's Parse (for re-preparing).
    pub rest: Bytes,
    /// The shared entry: while held, the text keeps its name in the table.
    text: Arc<Text>,
    /// What running it needs (class, hints), classified on first use.
    info: OnceLock<UnitInfo>,
    /// Whether a Bind of it may take the relay's fast lane, decided on first use.
    lane: OnceLock<bool>,
}

impl Prepared {
    /// A statement for this Parse body remainder (query + parameter types), named by the
    /// process's [`StatementNames`].
    pub fn new(rest: &[u8]) -> Prepared {
        Prepared::of(StatementNames::global().intern(rest))
    }

    fn of(text: Arc<Text>) -> Prepared {
        Prepared {
            server_name: text.name.clone(),
            rest: text.rest.clone(),
            text,
            info: OnceLock::new(),
            lane: OnceLock::new(),
        }
    }

    /// The same statement (same server name), to be classified again.
    fn unclassified(&self) -> Prepared {
        Prepared::of(self.text.clone())
    }

    /// The query text (empty if the Parse body has none).
    fn sql(&self) -> &[u8] {
        extended::split_cstr(&self.rest).map_or(&[][..], |(q, _)| q)
    }

    /// What running the statement needs, computed by `classify` (given the query text) once.
    pub fn info(&self, classify: impl FnOnce(&[u8]) -> UnitInfo) -> UnitInfo {
        *self.info.get_or_init(|| classify(self.sql()))
    }

    /// Whether a Bind of the statement may take the fast lane, decided by `fits` (given the
    /// query text) once.
    pub fn fits_lane(&self, fits: impl FnOnce(&[u8]) -> bool) -> bool {
        *self.lane.get_or_init(|| fits(self.sql()))
    }
}

/// Bytes a named statement counts against the bounds.
fn cost(name: &[u8], stmt: &Prepared) -> usize {
    name.len() + stmt.rest.len()
}

/// A client's statements as they were before DEALLOCATE ALL or DISCARD ALL (put back if the
/// server does not run it).
#[derive(Debug)]
pub struct Saved(HashMap<Box<[u8]>, Arc<Prepared>, Keyed>);

/// A client's statements by the client's names. Allocated on first use: a client that
/// prepares nothing carries one pointer.
#[derive(Debug, Default)]
pub struct ClientStatements(Option<Box<Statements>>);

#[derive(Debug, Default)]
struct Statements {
    /// Looked up at every Bind: a fast keyed hash (a client can only slow its own map).
    map: HashMap<Box<[u8]>, Arc<Prepared>, Keyed>,
    /// Bytes of the named statements (see [`cost`]), also counted in the global charge.
    bytes: usize,
    /// The client's unnamed statement (Parse body after the name), for a Bind that runs on
    /// another server connection than its Parse.
    unnamed: Option<Box<[u8]>>,
    /// The unnamed statement is a SET of an extra parameter that pgtier followed.
    unnamed_set: FollowedSet,
}

/// Whether the client's unnamed statement is a `track_extra_params` SET that pgtier followed
/// instead of pinning (only its own Bind may run it; any later one runs it unfollowed).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub enum FollowedSet {
    /// An ordinary statement.
    #[default]
    No,
    /// Followed; the Bind of the same unit has not come yet.
    BindPending,
    /// Followed and bound once: another Bind would run it again unseen.
    Bound,
}

impl Statements {
    /// Uncounts a statement that left the map.
    fn release(&mut self, name: &[u8], stmt: &Prepared) {
        let size = cost(name, stmt);
        self.bytes -= size;
        StatementNames::global().release(size);
    }
}

impl Drop for ClientStatements {
    fn drop(&mut self) {
        if let Some(s) = &self.0 {
            StatementNames::global().release(s.bytes);
        }
    }
}

impl ClientStatements {
    fn inner_mut(&mut self) -> &mut Statements {
        self.0.get_or_insert_with(Box::default)
    }

    /// The statement the client calls `name`.
    pub fn get(&self, name: &[u8]) -> Option<&Arc<Prepared>> {
        self.0.as_ref()?.map.get(name)
    }

    /// How many named statements the client has.
    pub fn len(&self) -> usize {
        self.0.as_ref().map_or(0, |s| s.map.len())
    }

    /// Whether the client has no named statements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether the client has a statement called `name`.
    pub fn contains(&self, name: &[u8]) -> bool {
        self.0.as_ref().is_some_and(|s| s.map.contains_key(name))
    }

    /// Bytes of the client's named statements.
    #[cfg(test)]
    pub fn bytes(&self) -> usize {
        self.0.as_ref().map_or(0, |s| s.bytes)
    }

    /// Adds a statement `name` for the Parse body remainder `rest` (the name must be free),
    /// unless that would pass the client's limits (`max_bytes` is its byte bound) or the
    /// global one.
    pub fn insert(
        &mut self,
        name: &[u8],
        rest: &[u8],
        max_bytes: usize,
    ) -> Result<Arc<Prepared>, PrepareError> {
        let s = self.inner_mut();
        if s.map.len() >= MAX_PER_CLIENT {
            return Err(PrepareError::TooMany);
        }
        let size = name.len() + rest.len();
        let needed = s.bytes + size;
        if needed > max_bytes {
            return Err(PrepareError::ClientBytes {
                needed,
                limit: max_bytes,
            });
        }
        let global = StatementNames::global();
        if !global.try_charge(size) {
            return Err(PrepareError::TotalBytes {
                size,
                limit: global.limit(),
            });
        }
        let stmt = Arc::new(Prepared::new(rest));
        s.bytes += size;
        if let Some(old) = s.map.insert(name.into(), stmt.clone()) {
            s.release(name, &old);
        }
        Ok(stmt)
    }

    /// Records the client's unnamed statement (None: a simple Query destroyed it).
    pub fn set_unnamed(&mut self, rest: Option<&[u8]>) {
        match rest {
            Some(rest) => {
                let inner = self.inner_mut();
                // Drivers parse the same unnamed text again and again: keep the copy then.
                if inner.unnamed.as_deref() != Some(rest) {
                    inner.unnamed = Some(Box::from(rest));
                }
                inner.unnamed_set = FollowedSet::No;
            }
            None => {
                if let Some(s) = self.0.as_mut() {
                    s.unnamed = None;
                    s.unnamed_set = FollowedSet::No;
                    if s.map.is_empty() {
                        self.0 = None;
                    }
                }
            }
        }
    }

    /// The client's unnamed statement, if it has one.
    pub fn unnamed(&self) -> Option<&[u8]> {
        self.0.as_ref()?.unnamed.as_deref()
    }

    /// Whether the unnamed statement is a SET pgtier followed (see [`FollowedSet`]).
    pub fn unnamed_set(&self) -> FollowedSet {
        self.0.as_ref().map_or(FollowedSet::No, |s| s.unnamed_set)
    }

    /// Records what [`ClientStatements::unnamed_set`] says (after `set_unnamed`).
    pub fn mark_unnamed_set(&mut self, state: FollowedSet) {
        if let Some(s) = self.0.as_mut() {
            s.unnamed_set = state;
        }
    }

    /// Removes a statement (Close); returns it.
    pub fn remove(&mut self, name: &[u8]) -> Option<Arc<Prepared>> {
        let s = self.0.as_mut()?;
        let stmt = s.map.remove(name)?;
        s.release(name, &stmt);
        Some(stmt)
    }

    /// Removes `name` if it is still `stmt` (its Parse failed or was skipped).
    pub fn remove_if(&mut self, name: &[u8], stmt: &Arc<Prepared>) {
        if let Some(s) = self.0.as_mut() {
            if s.map.get(name).is_some_and(|p| Arc::ptr_eq(p, stmt)) {
                s.map.remove(name);
                s.release(name, stmt);
            }
        }
    }

    /// Puts back a statement whose Close was skipped (unless the name was taken since). The
    /// client still has it as far as Postgres' rules go, so the byte bounds do not refuse it.
    pub fn put_back(&mut self, name: &[u8], stmt: Arc<Prepared>) {
        let s = self.inner_mut();
        if !s.map.contains_key(name) && s.map.len() < MAX_PER_CLIENT {
            let size = cost(name, &stmt);
            StatementNames::global().force_charge(size);
            s.bytes += size;
            s.map.insert(name.into(), stmt);
        }
    }

    /// Forgets every named statement (DEALLOCATE ALL, DISCARD ALL), returning them.
    pub fn take_all(&mut self) -> Saved {
        match self.0.take() {
            Some(s) => {
                StatementNames::global().release(s.bytes);
                Saved(s.map)
            }
            None => Saved(HashMap::default()),
        }
    }

    /// Forgets what each statement was classified as (a reload changed the classifier: e.g.
    /// `write_functions`): each is classified again at its next use. Only between
    /// transactions, when no reply that may undo a change is pending.
    pub fn reclassify(&mut self) {
        if let Some(s) = self.0.as_mut() {
            for stmt in s.map.values_mut() {
                *stmt = Arc::new(stmt.unclassified());
            }
        }
    }

    /// Puts back statements taken by [`ClientStatements::take_all`] (names taken since win).
    pub fn restore(&mut self, saved: Saved) {
        for (name, stmt) in saved.0 {
            self.put_back(&name, stmt);
        }
    }
}

/// Answers a batch of named Parse messages ending in Sync without a server: the statements are
/// recorded for the client and prepared on a server at their first Bind or Describe. A client
/// that prepares synchronously (libpq's PQprepare, pgbench -M prepared) then never waits for a
/// server connection just to prepare, which would deadlock a pool that is busy with the same
/// client program's open transactions. An invalid statement is reported at its first use.
/// Returns the replies, or None when the batch needs a server.
pub(crate) fn answer_parse_batch(
    buf: &[u8],
    statements: &mut ClientStatements,
    max_bytes: usize,
) -> Option<BytesMut> {
    let mut pos = 0;
    let mut names: Vec<(&[u8], &[u8])> = Vec::new();
    loop {
        let h = peek_header(&buf[pos..], usize::MAX).ok()??;
        let end = pos + h.frame_len();
        if end > buf.len() {
            return None;
        }
        match h.tag {
            // An unnamed statement (its name is the empty string) is never answered here:
            // rejected before anything else is read.
            b'P' if buf.get(pos + 5) == Some(&0) => return None,
            b'P' => {
                // A malformed Parse goes the normal way, which refuses it (08P01).
                crate::protocol::validate::check(b'P', &buf[pos + 5..end]).ok()?;
                let p = extended::parse(&buf[pos + 5..end])?;
                // A statement that may leave session state goes the normal way, where it pins
                // (or is rejected); here it would run unclassified at its first Bind. So does
                // one with a backslash: only the normal way reads its strings with the client's
                // standard_conforming_strings.
                if p.name.is_empty() || p.rest.contains(&b'\\') || pins(p.rest, |_| false).is_some()
                {
                    return None;
                }
                names.push((p.name, p.rest));
            }
            b'S' if end == buf.len() && !names.is_empty() => break,
            _ => return None,
        }
        pos = end;
    }
    let mut out = BytesMut::with_capacity(16 + 6 * names.len());
    for (name, rest) in names {
        if statements.contains(name) {
            let msg = format!(
                "prepared statement \"{}\" already exists",
                String::from_utf8_lossy(name)
            );
            error_response(
                &mut out,
                Severity::Error,
                SqlState::DUPLICATE_PREPARED_STATEMENT,
                &msg,
            );
            break;
        }
        if let Err(e) = statements.insert(name, rest, max_bytes) {
            error_response(&mut out, Severity::Error, e.sqlstate(), &e.to_string());
            break;
        }
        out.extend_from_slice(b"1\0\0\0\x04");
    }
    ready_for_query(&mut out, TxStatus::Idle);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::protocol::frame::test_frame as msg;

    #[test]
    fn parse_only_batches_are_answered_without_a_server() {
        let mut st = ClientStatements::default();
        let mut buf = msg(b'P', b"s1\0select 1\0\0\0");
        buf.extend(msg(b'S', b""));
        let out = answer_parse_batch(&buf, &mut st, usize::MAX).unwrap();
        assert_eq!(&out[..], b"1\0\0\0\x04Z\0\0\0\x05I");
        assert!(st.contains(b"s1"));
        let out = answer_parse_batch(&buf, &mut st, usize::MAX).unwrap();
        assert!(String::from_utf8_lossy(&out).contains("42P05"));
        // Unnamed statements, other messages or a missing Sync need a server.
        let mut unnamed = msg(b'P', b"\0select 1\0\0\0");
        unnamed.extend(msg(b'S', b""));
        assert!(answer_parse_batch(&unnamed, &mut st, usize::MAX).is_none());
        assert!(
            answer_parse_batch(&msg(b'P', b"s2\0select 1\0\0\0"), &mut st, usize::MAX).is_none()
        );
        let mut with_describe = msg(b'P', b"s3\0select 1\0\0\0");
        with_describe.extend(msg(b'D', b"Ss3\0"));
        with_describe.extend(msg(b'S', b""));
        assert!(answer_parse_batch(&with_describe, &mut st, usize::MAX).is_none());
        let mut backslash = msg(b'P', b"s4\0select 'a\\'\0\0\0");
        backslash.extend(msg(b'S', b""));
        assert!(answer_parse_batch(&backslash, &mut st, usize::MAX).is_none());
    }

    #[test]
    fn byte_bound_per_client() {
        let mut st = ClientStatements::default();
        let text = b"select 1\0\0\0";
        let a = st.insert(b"a", text, 30).unwrap();
        assert_eq!(st.bytes(), 1 + text.len());
        let long = b"select 'xxxxxxxxxxxxxxxx'\0\0\0";
        let e = st.insert(b"b", long, 30).unwrap_err();
        assert!(
            matches!(e, PrepareError::ClientBytes { limit: 30, .. }),
            "{e:?}"
        );
        assert_eq!(e.sqlstate(), SqlState::PROGRAM_LIMIT_EXCEEDED);
        assert!(!st.contains(b"b"));
        // Closing frees its room; a reclassified statement keeps its server name.
        st.reclassify();
        assert_eq!(st.get(b"a").unwrap().server_name, a.server_name);
        assert!(st.remove(b"a").is_some());
        assert_eq!(st.bytes(), 0);
        st.insert(b"b", long, 30).unwrap();
        // Taken (DEALLOCATE ALL) and put back, it counts again.
        let saved = st.take_all();
        assert_eq!(st.bytes(), 0);
        st.restore(saved);
        assert_eq!(st.bytes(), 1 + long.len());
    }

    #[test]
    fn parse_only_batch_over_the_byte_bound_fails_and_syncs() {
        let mut st = ClientStatements::default();
        let mut buf = msg(b'P', b"s1\0select 1\0\0\0");
        buf.extend(msg(b'P', b"s2\0select 'a long one'\0\0\0"));
        buf.extend(msg(b'P', b"s3\0select 3\0\0\0"));
        buf.extend(msg(b'S', b""));
        let out = answer_parse_batch(&buf, &mut st, 20).unwrap();
        let text = String::from_utf8_lossy(&out);
        assert!(out.starts_with(b"1\0\0\0\x04E"), "{text}");
        assert!(text.contains("54000") && text.contains("max_prepared_statement_bytes_per_client"));
        assert!(out.ends_with(b"Z\0\0\0\x05I"));
        assert!(st.contains(b"s1") && !st.contains(b"s2") && !st.contains(b"s3"));
    }

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
