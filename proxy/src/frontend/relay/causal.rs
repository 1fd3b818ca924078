//! The client's causal token (the primary's WAL insert position after its write transaction),
//! learned on the server connection that committed and reported as ParameterStatus
//! `pgtier.causal_lsn` *before* the ReadyForQuery that ends the transaction, so that a driver
//! reading up to ReadyForQuery and then asking for the parameter sees the new token.
//!
//! - Pipelined (autocommit writes, COMMIT): pgtier's probe query goes out right behind the
//!   client's unit in the same write, and the client's ReadyForQuery is held until the probe's
//!   reply, already in flight, arrives: no extra round trip. Only when the unit certainly leaves
//!   the server outside a transaction block: inside one the probe could take the transaction's
//!   snapshot, or make a later `SET TRANSACTION` fail.
//! - Otherwise (pipelining clients, COPY, a block whose end was not known in advance): the
//!   ReadyForQuery 'I' that ends a transaction after a write is held, and the probe sent then
//!   (one round trip, the uncommon case).
//!
//! A probe that fails (in an aborted block, or any error) leaves the write uncovered: the next
//! unit that ends a transaction probes again, and if the relay ends first the session reads the
//! position before the client's next replica read.

use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, BytesMut};
use tokio::time::Instant;

use crate::cluster::Lsn;
use crate::protocol::extended;
use crate::protocol::frame::peek_header;
use crate::protocol::messages::parameter_status;
use crate::router::scopes::ScopeToken;
use crate::sql::lexer::{Lexer, StringSyntax, Token};

use super::units::UnitContext;

/// pgtier's probe (schema-qualified: a client's search_path cannot shadow it).
const PROBE: &[u8] = b"SELECT pg_catalog.pg_current_wal_insert_lsn()\0";

/// Longest wait for the probe's reply once the client's ReadyForQuery is held.
pub(crate) const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// The token's state in one relay run.
#[derive(Debug, Default)]
pub(crate) struct Causal {
    /// Probe at all (on the primary, with units routed one by one).
    pub enabled: bool,
    /// Send the token to the client as ParameterStatus.
    report: bool,
    /// The client's token (the latest position learned).
    pub token: Lsn,
    /// Something that may write went to the server after the last probe sent.
    pub uncovered: bool,
    /// A probe succeeded in this run.
    pub learned: bool,
    /// The status byte of the client's ReadyForQuery held until the probe's reply.
    held: Option<u8>,
    /// When it was held.
    held_at: Option<Instant>,
    /// The probe's row (None until it arrives, or if it failed).
    value: Option<Lsn>,
    /// The probe's reply is complete: release the held ReadyForQuery.
    pub answered: bool,
    /// A probe entry was queued after the held ReadyForQuery: send its query now.
    pub send_now: bool,
    /// The client's causal scope, advanced with every position learned (before the
    /// ReadyForQuery that ends the write reaches the client).
    scope: Option<Arc<ScopeToken>>,
}

impl Causal {
    /// The state for a run: `enabled` on the primary when units are routed, `token` the client's.
    /// `scope`: the token shared with the client's causal scope, if any.
    pub fn new(enabled: bool, report: bool, token: Lsn, scope: Option<&Arc<ScopeToken>>) -> Causal {
        Causal {
            enabled,
            report,
            token,
            scope: scope.cloned(),
            ..Causal::default()
        }
    }

    /// At the client's ReadyForQuery (`status`): holds it if the probe is next in the queue
    /// (pipelined), or if it ends a transaction after a write no probe covers and nothing else
    /// is owed (then the caller queues a probe and the relay sends it: `send_now`).
    pub fn hold_ready(
        &mut self,
        status: u8,
        probe_next: bool,
        nothing_owed: impl FnOnce() -> bool,
    ) -> bool {
        if self.held.is_some() {
            return false;
        }
        if !probe_next {
            if !(self.enabled && self.uncovered && status == b'I' && nothing_owed()) {
                return false;
            }
            self.uncovered = false;
            self.send_now = true;
        }
        self.hold(status);
        true
    }

    /// Holds the client's ReadyForQuery (its status byte) until the probe's reply.
    fn hold(&mut self, status: u8) {
        self.held = Some(status);
        self.held_at = Some(Instant::now());
        self.value = None;
    }

    /// When the wait for the probe's reply gives up.
    pub fn deadline(&self) -> Option<Instant> {
        self.held_at.map(|t| t + PROBE_TIMEOUT)
    }

    /// A message of the probe's reply (`body` complete for DataRow and ErrorResponse).
    pub fn on_reply(&mut self, tag: u8, body: &[u8]) {
        match tag {
            b'D' => self.value = lsn_in_row(body),
            b'E' => self.value = None,
            b'Z' => self.answered = true,
            _ => {}
        }
    }

    /// After the probe's reply: the token (as ParameterStatus, if reported), then the held
    /// ReadyForQuery; returns whether one was held (it counts as the client's reply).
    pub fn release(&mut self, out: &mut BytesMut) -> bool {
        self.answered = false;
        match self.value.take() {
            Some(lsn) => {
                self.token = self.token.max(lsn);
                self.learned = true;
                if let Some(scope) = &self.scope {
                    scope.advance(lsn);
                }
                if self.report && self.held.is_some() {
                    parameter_status(out, "pgtier.causal_lsn", &self.token.to_string());
                }
            }
            // Failed (an aborted block: 25P02): the writes are not covered yet.
            None => self.uncovered = true,
        }
        self.release_held(out)
    }

    /// Writes the held ReadyForQuery without a token (the probe is lost); returns whether one
    /// was held.
    pub fn release_held(&mut self, out: &mut BytesMut) -> bool {
        self.held_at = None;
        let Some(status) = self.held.take() else {
            return false;
        };
        out.put_u8(b'Z');
        out.put_u32(5);
        out.put_u8(status);
        true
    }

    /// Gives up on the probe in flight: the held ReadyForQuery goes out without a token.
    pub fn lose(&mut self, out: &mut BytesMut) -> bool {
        self.uncovered = true;
        self.release_held(out)
    }
}

/// Writes the probe query.
pub(crate) fn write_probe(out: &mut BytesMut) {
    out.put_u8(b'Q');
    out.put_u32(PROBE.len() as u32 + 4);
    out.put_slice(PROBE);
}

/// The LSN in a one-column DataRow.
fn lsn_in_row(body: &[u8]) -> Option<Lsn> {
    let len = i32::from_be_bytes(body.get(2..6)?.try_into().ok()?);
    let text = body.get(6..6 + usize::try_from(len).ok()?)?;
    std::str::from_utf8(text).ok()?.parse().ok()
}

/// Whether the server certainly leaves any transaction block once it has run the whole
/// messages in `buf` (the client's, as routed), starting inside one or not. An error can
/// only leave it in an aborted block (where the probe fails harmlessly), never in an open one.
/// Unsure (COPY, named portals, statements it does not know, CHAIN): false.
pub(crate) fn ends_idle(buf: &[u8], mut in_block: bool, ctx: &UnitContext<'_>) -> bool {
    // Statements parsed in `buf` (name, text and parameter types), and the SQL bound to the
    // last portal.
    let mut parsed: Vec<(&[u8], &[u8])> = Vec::new();
    let mut portal: Option<(&[u8], &[u8])> = None;
    let mut pos = 0;
    while pos < buf.len() {
        let h = match peek_header(&buf[pos..], usize::MAX) {
            Ok(Some(h)) if buf.len() - pos >= h.frame_len() => h,
            _ => return false,
        };
        let end = pos + h.frame_len();
        let body = &buf[pos + 5..end];
        let after = match h.tag {
            b'Q' => run_sql(
                body.strip_suffix(&[0]).unwrap_or(body),
                in_block,
                ctx.strings,
            ),
            b'P' => {
                let Some(p) = extended::parse(body) else {
                    return false;
                };
                parsed.retain(|(n, _)| *n != p.name);
                parsed.push((p.name, p.rest));
                Some(in_block)
            }
            b'B' => {
                let Some(b) = extended::bind(body) else {
                    return false;
                };
                let sql = match parsed.iter().rev().find(|(n, _)| *n == b.statement) {
                    Some((_, sql)) => Some(*sql),
                    None if b.statement.is_empty() => ctx.statements.unnamed(),
                    None => ctx.statements.get(b.statement).map(|s| &s.rest[..]),
                };
                let Some((sql, _)) = sql.and_then(extended::split_cstr) else {
                    return false;
                };
                portal = Some((b.portal, sql));
                Some(in_block)
            }
            b'E' => match (extended::split_cstr(body), portal) {
                (Some((name, _)), Some((p, sql))) if name == p => {
                    run_sql(sql, in_block, ctx.strings)
                }
                _ => None,
            },
            b'S' | b'H' | b'D' | b'C' | b'F' => Some(in_block),
            // COPY data, anything else: unsure.
            _ => None,
        };
        match after {
            Some(b) => in_block = b,
            None => return false,
        }
        pos = end;
    }
    !in_block
}

/// Whether the server is in a transaction block after running `sql` (one or more statements)
/// from `in_block`; None if unsure.
fn run_sql(sql: &[u8], mut in_block: bool, strings: StringSyntax) -> Option<bool> {
    let mut words: [&[u8]; 2] = [b"", b""];
    let (mut n, mut first_token, mut to, mut chain, mut prepared) = (0, true, false, false, false);
    let mut lexer = Lexer::with_syntax(sql, strings);
    loop {
        match lexer.next() {
            Some(Token::Word(w)) => {
                let is = |k: &[u8]| w.eq_ignore_ascii_case(k);
                if is(b"ATOMIC") {
                    // `BEGIN ATOMIC ... END` bodies: their `;` and END are not statements.
                    return None;
                }
                // The statement's first token, if a word, and the word after it.
                if first_token || n == 1 {
                    words[n] = w;
                    n += 1;
                }
                to |= is(b"TO");
                chain |= is(b"CHAIN");
                prepared |= is(b"PREPARED");
                first_token = false;
            }
            Some(Token::Other) => first_token = false,
            end => {
                if n > 0 {
                    let is = |i: usize, k: &[u8]| words[i].eq_ignore_ascii_case(k);
                    if is(0, b"BEGIN") || is(0, b"START") {
                        in_block = true;
                    } else if is(0, b"COMMIT")
                        || is(0, b"END")
                        || is(0, b"ROLLBACK")
                        || is(0, b"ABORT")
                    {
                        if chain || prepared {
                            return None; // a new block, or two-phase commit
                        }
                        // ROLLBACK TO SAVEPOINT stays in the block.
                        if !(to && is(0, b"ROLLBACK")) {
                            in_block = false;
                        }
                    } else if is(0, b"COPY") || is(0, b"PREPARE") && is(1, b"TRANSACTION") {
                        return None;
                    }
                }
                if end.is_none() {
                    return Some(in_block);
                }
                (n, first_token, to, chain, prepared) = (0, true, false, false, false);
                words = [b"", b""];
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::prepared::client::ClientStatements;
    use crate::protocol::frame::test_frame as frame;
    use crate::router::classify::{Classifier, FunctionTable};

    fn ends(buf: &[u8], in_block: bool) -> bool {
        let classifier = Classifier::new(FunctionTable::builtin(), 10);
        let statements = ClientStatements::default();
        let ctx = UnitContext {
            classifier: &classifier,
            rules: None,
            statements: &statements,
            reported: &[],
            strings: StringSyntax::Standard,
        };
        ends_idle(buf, in_block, &ctx)
    }

    fn q(sql: &str) -> Vec<u8> {
        frame(b'Q', format!("{sql}\0").as_bytes())
    }

    fn extended(sql: &str) -> Vec<u8> {
        let mut b = frame(b'P', format!("\0{sql}\0\0\0").as_bytes());
        b.extend(frame(b'B', b"\0\0\0\0\0\0\0\0"));
        b.extend(frame(b'E', b"\0\0\0\0\0"));
        b.extend(frame(b'S', b""));
        b
    }

    #[test]
    fn autocommit_and_commit_end_idle() {
        assert!(ends(&q("INSERT INTO t VALUES (1)"), false));
        assert!(ends(
            &q("INSERT INTO t VALUES (1); UPDATE t SET a = 2"),
            false
        ));
        assert!(ends(&q("BEGIN; INSERT INTO t VALUES (1); COMMIT"), false));
        assert!(ends(&q("COMMIT"), true));
        assert!(ends(&q("end work"), true));
        assert!(ends(&q("ROLLBACK"), true));
        assert!(ends(&extended("INSERT INTO t VALUES ($1)"), false));
        assert!(ends(&extended("COMMIT"), true));
        let mut two = q("INSERT INTO t VALUES (1)");
        two.extend(q("SELECT 1"));
        assert!(ends(&two, false));
    }

    #[test]
    fn blocks_left_open_or_unsure_do_not() {
        assert!(!ends(&q("BEGIN"), false));
        assert!(!ends(&q("INSERT INTO t VALUES (1)"), true));
        assert!(!ends(&q("INSERT INTO t VALUES (1); BEGIN"), false));
        assert!(!ends(
            &q("start transaction isolation level serializable"),
            false
        ));
        assert!(!ends(&q("COMMIT AND CHAIN"), true));
        assert!(!ends(&q("ROLLBACK TO SAVEPOINT a"), true));
        assert!(!ends(&q("COMMIT PREPARED 'x'"), false));
        assert!(!ends(&q("PREPARE TRANSACTION 'x'"), true));
        assert!(!ends(&q("COPY t FROM STDIN"), false));
        assert!(!ends(
            &q("CREATE FUNCTION f() RETURNS int BEGIN ATOMIC SELECT 1; END"),
            true
        ));
        assert!(!ends(&extended("BEGIN"), false));
        // Parsed but not executed: the block stays open.
        let mut prepared = frame(b'P', b"c\0COMMIT\0\0\0");
        prepared.extend(frame(b'S', b""));
        assert!(!ends(&prepared, true));
        // A comment or a string is not a statement.
        assert!(ends(
            &q("INSERT INTO t VALUES ('; BEGIN') /* ; BEGIN */"),
            false
        ));
        assert!(!ends(&frame(b'd', b"1\n"), false));
    }

    #[test]
    fn a_lost_probe_releases_the_held_ready_for_query_without_a_token() {
        let mut c = Causal::new(true, true, Lsn(7), None);
        c.uncovered = true;
        assert!(c.hold_ready(b'I', false, || true));
        assert!(c.send_now && !c.uncovered && c.deadline().is_some());
        // One hold at a time.
        assert!(!c.hold_ready(b'I', true, || true));
        let mut out = BytesMut::new();
        assert!(c.lose(&mut out));
        assert_eq!(&out[..], b"Z\0\0\0\x05I");
        assert!(c.uncovered && c.deadline().is_none() && c.token == Lsn(7));
        assert!(!c.lose(&mut BytesMut::new()));
        // Nothing to hold for: a read, or a transaction still open.
        let mut c = Causal::new(true, true, Lsn(7), None);
        assert!(!c.hold_ready(b'I', false, || true));
        c.uncovered = true;
        assert!(!c.hold_ready(b'T', false, || true));
        assert!(!c.hold_ready(b'I', false, || false));
    }

    #[test]
    fn the_probe_row_is_read() {
        let mut row = vec![0, 1];
        row.extend(9i32.to_be_bytes());
        row.extend(b"0/3000148");
        assert_eq!(lsn_in_row(&row), Some("0/3000148".parse().unwrap()));
        assert_eq!(lsn_in_row(&[0, 1, 255, 255, 255, 255]), None);
    }
}
