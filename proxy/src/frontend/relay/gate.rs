//! The routing gate inside a relay. On a replica it lets through only units a replica may run;
//! a unit that needs the primary waits in the client buffer until the replica has answered
//! everything before it, and then (outside a transaction) the relay hands the server back and
//! the session routes the rest anew. On the primary it notes whether anything written went
//! through, which decides whether the client's causal token must move.

use crate::protocol::extended;
use crate::protocol::frame::peek_header;
use crate::router::classify::Class;
use crate::router::commands;
use crate::router::route::{ClientRouting, UnitInfo};
use crate::sql::lexer::StringSyntax;

use std::ops::Range;

use super::listen::LocalAnswers;
use super::units::{Analysed, UnitContext, UnitScan, UNDECIDED_LIMIT};

/// The gate's state for one relay run.
#[derive(Debug, Default)]
pub(crate) struct Gate {
    /// The server is a replica.
    pub on_replica: bool,
    /// Inside a unit already let through (up to its Sync).
    unit_open: bool,
    /// A unit that needs the primary waits at the front of the client buffer.
    pub held: bool,
    /// Something that may write went to this server (primary only; the causal probe takes it
    /// when it covers the write).
    pub wrote: bool,
    /// Something that may write went to this server in this run (kept: sequence state).
    pub wrote_in_run: bool,
    /// Whether to look for writes at all (on the primary).
    track_writes: bool,
    /// Whether to look for anything that may change sequence state (nextval, also implicit in
    /// an INSERT), when writes are not tracked anyway: the server must then be cleaned before
    /// another transaction uses it.
    track_sequences: bool,
    /// Client bytes consumed before the start of the relay's buffer (a stream position).
    base: u64,
    /// The unit at the front of the buffer, as far as it was scanned (on a replica): a unit
    /// held back or still arriving is not scanned again from its start.
    front: Option<Front>,
    /// Stream positions of whole units analysed (when routed, or here) that do not pin: the
    /// rewrite does not look for session state in their statements again.
    clean: Range<u64>,
    /// End of the run's first unit when its analysis found nothing that may write (on the
    /// primary its messages are not classified again).
    read_until: u64,
    /// Let the next statement pgtier would answer through to the server (it was held, then
    /// not recognised: never held twice).
    pub pass_once: bool,
}

/// A scanned unit at the front of the client buffer.
#[derive(Debug)]
struct Front {
    /// Its stream position.
    start: u64,
    /// The string syntax it was scanned with (a SET before it may change it).
    strings: StringSyntax,
    scan: UnitScan,
}

/// What the gate needs to know about the moment.
pub(crate) struct Moment<'a> {
    /// Classification context.
    pub ctx: UnitContext<'a>,
    /// The client's routing state.
    pub client: ClientRouting,
    /// The server is inside a transaction (a unit there stays with it).
    pub in_transaction: bool,
    /// Replies are still owed by the server.
    pub busy: bool,
    /// Extended-protocol messages went to the server since the last Sync (the buffer does not
    /// start at a unit boundary).
    pub unsynced: bool,
    /// LISTEN-family statements and `pg_listening_channels()` pgtier answers itself (held
    /// here until the server owes nothing, in a transaction block too).
    pub local: LocalAnswers,
}

impl Gate {
    /// A gate for a relay on a replica or on the primary; `track_sequences` notes writes too,
    /// skipping the classifier for texts that cannot touch a sequence.
    /// `analysed` is the first unit's analysis, made when the session routed it.
    pub fn new(
        on_replica: bool,
        track_writes: bool,
        track_sequences: bool,
        analysed: Option<Analysed>,
    ) -> Gate {
        let mut gate = Gate {
            on_replica,
            track_writes,
            track_sequences,
            ..Gate::default()
        };
        if let Some(a) = analysed {
            if let Some(unit) = a.scan.whole() {
                let len = unit.len.unwrap_or(0) as u64;
                if !unit.info.pins {
                    gate.clean = 0..len;
                }
                if unit.info.class == Class::Read {
                    gate.read_until = len;
                }
            }
            gate.front = Some(Front {
                start: 0,
                strings: a.strings,
                scan: a.scan,
            });
        }
        gate
    }

    /// How many bytes at the front of the buffer belong to units known not to pin.
    pub fn clean_ahead(&self) -> usize {
        if self.clean.start <= self.base {
            self.clean.end.saturating_sub(self.base) as usize
        } else {
            0
        }
    }

    /// Notes a whole unit at stream positions `start..end` that does not pin.
    fn note_clean(&mut self, start: u64, end: u64) {
        if self.clean.end == start {
            self.clean.end = end;
        } else {
            self.clean = start..end;
        }
    }

    /// How many bytes of `buf` may go to the server now. `buf[skip..]` starts at a message
    /// boundary (the first `skip` bytes are the rest of a CopyData streaming through).
    pub fn admit(&mut self, buf: &[u8], skip: usize, max: usize, now: &Moment<'_>) -> usize {
        // A pgtier statement (`SHOW pgtier.causal_lsn` right after a write, while the causal
        // probe is still out) is answered by the session, not sent to the server (which would
        // refuse the SHOW, or take a SET of `pgtier.min_lsn` as a setting of its own).
        // Decided anew at each call (on the primary only a pgtier statement holds anything).
        self.held = false;
        let pgtier = !now.in_transaction;
        let local = if std::mem::take(&mut self.pass_once) {
            LocalAnswers::default()
        } else {
            now.local
        };
        let stop = if pgtier || local != LocalAnswers::default() {
            self.local_statement_at(buf, skip, max, now.unsynced, (pgtier, local))
        } else {
            None
        };
        let view = &buf[..stop.unwrap_or(buf.len())];
        let admitted = if self.on_replica {
            self.admit_on_replica(view, skip, max, now)
        } else {
            if self.track_writes || self.track_sequences {
                let from = skip.min(view.len());
                self.note_writes(&view[from..], from, max, now);
            }
            view.len()
        };
        if stop.is_some() && admitted == view.len() {
            self.held = true;
        }
        admitted
    }

    /// Where the first simple Query that pgtier answers starts (a pgtier statement when
    /// `pgtier`, or one of `local`), at a unit boundary past the run's first message (that
    /// one the session looked at).
    fn local_statement_at(
        &self,
        buf: &[u8],
        skip: usize,
        max: usize,
        unsynced: bool,
        (pgtier, local): (bool, LocalAnswers),
    ) -> Option<usize> {
        let mut pos = skip.min(buf.len());
        let mut boundary = !unsynced;
        while let Ok(Some(h)) = peek_header(&buf[pos..], max) {
            let end = pos + h.frame_len();
            if end > buf.len() {
                return None;
            }
            if h.tag == b'Q' && boundary && self.base + pos as u64 > 0 {
                let body = &buf[pos + 5..end];
                let sql = body.strip_suffix(&[0]).unwrap_or(body);
                if pgtier && commands::command(sql).is_some() || local.answers(sql) {
                    return Some(pos);
                }
            }
            boundary = matches!(h.tag, b'Q' | b'S');
            pos = end;
        }
        None
    }

    /// The relay consumed `n` bytes from the front of its buffer.
    pub fn consumed(&mut self, n: usize) {
        self.base += n as u64;
    }

    fn admit_on_replica(&mut self, buf: &[u8], skip: usize, max: usize, now: &Moment<'_>) -> usize {
        self.held = false;
        let first = skip.min(buf.len());
        let mut pos = first;
        while pos < buf.len() {
            let h = match peek_header(&buf[pos..], max) {
                Ok(Some(h)) if buf.len() - pos >= h.frame_len() => h,
                Ok(_) => return pos,
                // route_client reports the violation.
                Err(_) => return buf.len(),
            };
            let end = pos + h.frame_len();
            if self.unit_open || h.tag == b'X' {
                if h.tag == b'S' {
                    self.unit_open = false;
                }
                pos = end;
                continue;
            }
            let start = self.base + pos as u64;
            let mut front = match self.front.take() {
                Some(f) if f.start == start && f.strings == now.ctx.strings => f,
                _ => Front {
                    start,
                    strings: now.ctx.strings,
                    scan: UnitScan::default(),
                },
            };
            let unit = front.scan.resume(&buf[pos..], max, &now.ctx);
            // A unit that waits is kept scanned, unless messages admitted before it in this
            // call (not yet routed: a Parse or Close among them) may change what its Binds
            // mean; it is then at the front next time and scanned once more.
            let keep = pos == first;
            let (len, info) = match unit.len {
                Some(len) => (len, unit.info),
                None if buf.len() - pos > UNDECIDED_LIMIT => (buf.len() - pos, UnitInfo::write()),
                None => {
                    if keep {
                        self.front = Some(front);
                    }
                    return pos;
                }
            };
            let stays = now.in_transaction && !now.busy;
            if !info.replica_ok(&now.client) && !stays {
                // Held until the replica is done: then either a transaction holds the client
                // here (and the unit follows it), or the session routes it anew.
                self.held = true;
                if keep {
                    self.front = Some(front);
                }
                return pos;
            }
            // A unit cut at a Flush continues, on this server, up to its Sync.
            self.unit_open = unit.flushed;
            if !info.pins && unit.len.is_some() {
                self.note_clean(start, start + len as u64);
            }
            pos += len;
        }
        pos
    }

    /// On the primary: notes whether any message may write (`buf` starts `offset` bytes into
    /// the relay's buffer).
    fn note_writes(&mut self, buf: &[u8], offset: usize, max: usize, now: &Moment<'_>) {
        if self.wrote {
            return;
        }
        // The run's first unit was analysed when it was routed: a read needs no second look.
        let mut pos = (self.read_until.saturating_sub(self.base) as usize).saturating_sub(offset);
        while let Ok(Some(h)) = peek_header(&buf[pos.min(buf.len())..], max) {
            if buf.len() - pos < h.frame_len() {
                return;
            }
            let body = &buf[pos + 5..pos + h.frame_len()];
            let writes = match h.tag {
                b'Q' => {
                    let sql = body.strip_suffix(&[0]).unwrap_or(body);
                    self.may_write(sql, now)
                }
                b'P' => extended::parse(body)
                    .and_then(|p| extended::split_cstr(p.rest))
                    .is_none_or(|(sql, _)| self.may_write(sql, now)),
                // An unnamed statement's Parse was looked at when it went through.
                b'B' => extended::bind(body).is_none_or(|b| {
                    !b.statement.is_empty()
                        && now.ctx.statements.get(b.statement).is_none_or(|s| {
                            s.info(|sql| now.ctx.sql_info(sql)).class == Class::Write
                        })
                }),
                b'F' => true,
                _ => false,
            };
            if writes {
                self.wrote = true;
                self.wrote_in_run = true;
                return;
            }
            pos += h.frame_len();
        }
    }

    /// Whether `sql` may write. Only sequence state is tracked when routing does not need the
    /// class: a plain SELECT with no call syntax is then let through without the classifier
    /// (so pooling without replicas pays no parse per distinct text).
    fn may_write(&self, sql: &[u8], now: &Moment<'_>) -> bool {
        if !self.track_writes && plain_select(sql) {
            return false;
        }
        now.ctx.classifier.classify(sql).class == Class::Write
    }
}

/// A single SELECT with no parenthesis (no function call, no subquery), no `;` but a last one,
/// and no INTO:
/// it cannot call nextval() itself (a view or operator that does is not seen). Conservative:
/// a `(` or `into` inside a string or comment only sends the text to the classifier.
pub(super) fn plain_select(sql: &[u8]) -> bool {
    // pgbench and psql send a statement's trailing `;`.
    let text = sql.trim_ascii();
    let text = text.strip_suffix(b";").unwrap_or(text);
    let Some(head) = text.get(..7) else {
        return false;
    };
    if !head[..6].eq_ignore_ascii_case(b"select") || !head[6].is_ascii_whitespace() {
        return false;
    }
    // memchr scans: a byte loop with a 4-byte case-insensitive window per position cost more
    // than the rest of a primary-only transaction's client side.
    if memchr::memchr2(b'(', b';', text).is_some() {
        return false;
    }
    !memchr::memchr2_iter(b'i', b'I', text).any(|i| {
        text.get(i + 1..i + 4)
            .is_some_and(|w| w.eq_ignore_ascii_case(b"nto"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::prepared::client::ClientStatements;
    use crate::protocol::frame::test_frame as frame;
    use crate::router::classify::{Classifier, FunctionTable};

    fn query(sql: &str) -> Vec<u8> {
        frame(b'Q', format!("{sql}\0").as_bytes())
    }

    #[test]
    fn a_pgtier_statement_is_held_outside_a_transaction_and_only_then() {
        let classifier = Classifier::new(FunctionTable::builtin(), 100);
        let statements = ClientStatements::default();
        let moment = |in_transaction| Moment {
            ctx: UnitContext {
                classifier: &classifier,
                rules: None,
                statements: &statements,
                reported: &[],
                strings: StringSyntax::Standard,
            },
            client: ClientRouting::default(),
            in_transaction,
            busy: false,
            unsynced: false,
            local: LocalAnswers::default(),
        };
        let begin = query("BEGIN");
        let show = query("SHOW pgtier.causal_lsn");
        let buf = [begin.clone(), show.clone()].concat();
        // On a replica the statement after a read is held the same way.
        let read = query("SELECT 1");
        let mut gate = Gate::new(true, true, true, None);
        let after_read = [read.clone(), show.clone()].concat();
        assert_eq!(
            gate.admit(&after_read, 0, 1 << 20, &moment(false)),
            read.len()
        );
        assert!(gate.held);
        {
            let on_replica = false;
            let mut gate = Gate::new(on_replica, true, true, None);
            // The run's first message is the session's to answer, never held here.
            assert_eq!(gate.admit(&show, 0, 1 << 20, &moment(false)), show.len());
            assert!(!gate.held);
            let mut gate = Gate::new(on_replica, true, true, None);
            assert_eq!(gate.admit(&buf, 0, 1 << 20, &moment(false)), begin.len());
            assert!(gate.held);
            gate.consumed(begin.len());
            // BEGIN opened a block: the SHOW goes to the server, and nothing stays held (a
            // held flag left over kept the relay looping: found by the fuzzer).
            assert_eq!(gate.admit(&show, 0, 1 << 20, &moment(true)), show.len());
            assert!(!gate.held);
        }
    }

    #[test]
    fn the_routed_analysis_tells_the_rewrite_which_units_do_not_pin() {
        let classifier = Classifier::new(FunctionTable::builtin(), 100);
        let statements = ClientStatements::default();
        let ctx = || UnitContext {
            classifier: &classifier,
            rules: None,
            statements: &statements,
            reported: &[],
            strings: StringSyntax::Standard,
        };
        let moment = || Moment {
            ctx: ctx(),
            client: ClientRouting::default(),
            in_transaction: false,
            busy: false,
            unsynced: false,
            local: LocalAnswers::default(),
        };
        let read = query("SELECT a FROM t WHERE b = 1");
        let pins = query("SELECT * FROM pg_temp.t");
        // Routed (one analysis), then a replica run: the first unit is not scanned again, and
        // the units the gate scans itself extend what is known not to pin.
        let buf = [read.clone(), read.clone(), pins.clone()].concat();
        let (_, analysed) = Analysed::of(&buf, 1 << 20, &ctx());
        let mut gate = Gate::new(true, true, true, Some(analysed));
        assert_eq!(gate.clean_ahead(), read.len());
        // The pinning unit needs the primary: held back, and not clean.
        assert_eq!(gate.admit(&buf, 0, 1 << 20, &moment()), 2 * read.len());
        assert!(gate.held);
        assert_eq!(gate.clean_ahead(), 2 * read.len());
        gate.consumed(2 * read.len());
        assert_eq!(gate.clean_ahead(), 0);

        // On the primary a first unit that pins is not clean, and one that may write is
        // classified again by the write tracking.
        let (_, analysed) = Analysed::of(&pins, 1 << 20, &ctx());
        assert_eq!(
            Gate::new(false, true, true, Some(analysed)).clean_ahead(),
            0
        );
        let write = query("UPDATE t SET a = 1");
        let (_, analysed) = Analysed::of(&write, 1 << 20, &ctx());
        let mut gate = Gate::new(false, true, true, Some(analysed));
        gate.admit(&write, 0, 1 << 20, &moment());
        assert!(gate.wrote);
        let (_, analysed) = Analysed::of(&read, 1 << 20, &ctx());
        let mut gate = Gate::new(false, true, true, Some(analysed));
        gate.admit(&read, 0, 1 << 20, &moment());
        assert!(!gate.wrote);
    }

    #[test]
    fn plain_selects_cannot_call_functions() {
        assert!(plain_select(
            b"SELECT abalance FROM pgbench_accounts WHERE aid = 12"
        ));
        assert!(plain_select(b"  select a, b from t where c = $1 -- note"));
        assert!(plain_select(b"SELECT a FROM t WHERE b = 'i'"));
        assert!(plain_select(b"SELECT int4 FROM t WHERE b = 'int'"));
        assert!(plain_select(
            b"SELECT abalance FROM pgbench_accounts WHERE aid = 7;\n"
        ));
        for sql in [
            &b"SELECT nextval('s')"[..],
            b"SELECT 1; INSERT INTO t VALUES (1)",
            b"SELECT a INTO t2 FROM t",
            b"select a iNtO t2 from t",
            b"SELECT * FROM t WHERE a IN (1, 2)",
            b"INSERT INTO t SELECT 1",
            b"SELECTED",
            b"SELECT",
            b"WITH x AS (SELECT 1) SELECT * FROM x",
        ] {
            assert!(!plain_select(sql), "{}", String::from_utf8_lossy(sql));
        }
    }
}
