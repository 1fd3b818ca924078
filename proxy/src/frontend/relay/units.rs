//! Units of client work, the granularity of routing: one Query or FunctionCall message, or
//! extended-protocol messages up to Sync (or up to a Flush, after which the client waits for
//! replies before it goes on). Each unit is classified as a whole: any write sends it to the
//! primary, and so does a unit cut at a Flush (its rest, unseen, may write).

use std::ops::Range;

use crate::backend::params::{lookup, tracked};
use crate::prepared::client::ClientStatements;
use crate::protocol::extended;
use crate::protocol::frame::peek_header;
use crate::router::classify::{Class, Classifier};
use crate::router::route::UnitInfo;
use crate::router::rules::RuleSet;
use crate::sql::lexer::StringSyntax;
use crate::sql::session_state::pins_in;

use super::shape::{LaneShape, LaneText};

/// What classifying client units needs.
pub(crate) struct UnitContext<'a> {
    /// The database's classifier.
    pub classifier: &'a Classifier,
    /// The database's routing rules (None: it has none).
    pub rules: Option<&'a RuleSet>,
    /// The client's named statements (a Bind takes its statement's class).
    pub statements: &'a ClientStatements,
    /// Parameters the server reports (SETs of those do not pin).
    pub reported: &'a [(String, String)],
    /// How the client's `'...'` strings read (its `standard_conforming_strings`).
    pub strings: StringSyntax,
}

impl UnitContext<'_> {
    /// What one SQL text needs.
    pub fn sql_info(&self, sql: &[u8]) -> UnitInfo {
        let mut info = UnitInfo::default();
        self.add_sql(sql, &mut info);
        info
    }

    /// Adds what one SQL text needs to `info` (with the routing rules its text and tables
    /// match, when the database has rules).
    fn add_sql(&self, sql: &[u8], info: &mut UnitInfo) {
        let c = self.classifier.classify(sql);
        info.add_statement(self.rules, sql, &c);
        if self.strings == StringSyntax::BackslashEscapes && sql.contains(&b'\\') {
            // The classifier reads strings the standard way; with backslash escapes a write
            // can hide behind what looks like a string to it: the primary, to be sure.
            info.merge(&UnitInfo::write());
        }
        // The classification already looked for the words that may pin (with standard
        // strings; with backslash escapes a word may hide in what it read as a string).
        if !c.may_pin && self.strings == StringSyntax::Standard {
            return;
        }
        let reported = self.reported;
        let pinning = pins_in(sql, self.strings, |name| {
            std::str::from_utf8(name)
                .ok()
                .and_then(tracked)
                .is_some_and(|n| lookup(reported, n).is_some())
        });
        if pinning.is_some() {
            info.pins = true;
        }
    }
}

/// A scanned unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Unit {
    /// Bytes from the start of the buffer to the end of the unit; None if it is not all there.
    pub len: Option<usize>,
    /// What it needs (for an incomplete unit: what the messages seen so far need).
    pub info: UnitInfo,
    /// It ended at a Flush: its remaining messages up to Sync follow on the same server.
    pub flushed: bool,
}

/// Whether a message type belongs to the extended query protocol.
fn is_extended(tag: u8) -> bool {
    matches!(tag, b'P' | b'B' | b'D' | b'E' | b'C' | b'H' | b'S')
}

/// A unit larger than this that has not reached its Sync is routed without waiting for the
/// rest (to the primary, since it cannot be classified whole).
pub(crate) const UNDECIDED_LIMIT: usize = 1 << 20;

/// Whether the unit starting at `buf[0]` is all there (or too large to wait for).
pub(crate) fn complete(buf: &[u8], max: usize) -> bool {
    if buf.len() >= UNDECIDED_LIMIT {
        return true;
    }
    let mut pos = 0;
    loop {
        match peek_header(&buf[pos..], max) {
            Ok(Some(h)) if buf.len() - pos >= h.frame_len() => {
                if !is_extended(h.tag) || matches!(h.tag, b'S' | b'H') {
                    return true;
                }
                pos += h.frame_len();
            }
            Ok(_) => return false,
            Err(_) => return true,
        }
    }
}

/// Scans the unit that starts at `buf[0]` (which must be a message boundary).
#[cfg(test)]
pub(crate) fn scan(buf: &[u8], max: usize, ctx: &UnitContext<'_>) -> Unit {
    UnitScan::default().resume(buf, max, ctx)
}

/// The one analysis of a transaction's first unit: made where the session routes it, then
/// read by the relay's gate and rewrite instead of scanning the unit again.
#[derive(Debug, Clone)]
pub(crate) struct Analysed {
    /// The string syntax it was scanned with.
    pub strings: StringSyntax,
    /// The scan (complete, or as far as the unit had arrived).
    pub scan: UnitScan,
}

impl Analysed {
    /// Scans the unit at the start of `buf`, keeping the scan.
    pub(crate) fn of(buf: &[u8], max: usize, ctx: &UnitContext<'_>) -> (Unit, Analysed) {
        let mut scan = UnitScan::default();
        let unit = scan.resume(buf, max, ctx);
        (
            unit,
            Analysed {
                strings: ctx.strings,
                scan,
            },
        )
    }
}

impl Analysed {
    /// What the unit runs if it is `buf` whole, has the fast lane's shape, and reads and pins
    /// nothing.
    pub(crate) fn plain_read<'a>(&self, buf: &'a [u8]) -> Option<LaneText<'a>> {
        let unit = self.scan.whole()?;
        let plain =
            unit.len == Some(buf.len()) && unit.info.class == Class::Read && !unit.info.pins;
        plain.then(|| self.scan.shape.text(buf)).flatten()
    }
}

/// A unit scanned as far as its bytes have arrived; scanning resumes there when more come
/// (a large unit arriving in pieces is looked at once, not once per piece).
#[derive(Debug, Default, Clone)]
pub(crate) struct UnitScan {
    /// End of the whole messages scanned so far.
    pos: usize,
    /// What the messages scanned so far need.
    info: UnitInfo,
    /// The unit is complete: it ends at `pos`.
    complete: bool,
    /// It ended at a Flush.
    flushed: bool,
    /// Statements parsed earlier in this unit.
    parsed: Parsed,
    /// The fast lane's shape, as far as the unit has it.
    shape: LaneShape,
}

/// The names of the statements parsed earlier in a unit: where each is in the unit. What they
/// need is already merged into the unit's (merging is idempotent), so a Bind of one adds
/// nothing; a Bind of any other statement is looked up. The first name is kept inline: most
/// units parse one statement (the unnamed one), and a Vec would cost an allocation per unit.
#[derive(Debug, Default, Clone)]
struct Parsed {
    first: Option<(u32, u32)>,
    more: Vec<Range<usize>>,
}

impl Parsed {
    /// Records a Parse of the name at `name` in `buf`.
    fn record(&mut self, name: Range<usize>) {
        if self.first.is_none() && self.more.is_empty() {
            if let (Ok(start), Ok(end)) = (u32::try_from(name.start), u32::try_from(name.end)) {
                self.first = Some((start, end));
                return;
            }
        }
        self.more.push(name);
    }

    /// Whether a statement named `name` was parsed earlier in the unit (in `buf`).
    fn has(&self, buf: &[u8], name: &[u8]) -> bool {
        let first = self.first.map(|(s, e)| s as usize..e as usize);
        first
            .iter()
            .chain(&self.more)
            .any(|n| buf[n.clone()] == *name)
    }
}

impl UnitScan {
    /// Scans on; `buf` starts at the unit's start and holds at least what the last call had.
    pub(crate) fn resume(&mut self, buf: &[u8], max: usize, ctx: &UnitContext<'_>) -> Unit {
        if self.complete {
            return self.done();
        }
        loop {
            let pos = self.pos;
            let h = match peek_header(&buf[pos..], max) {
                Ok(Some(h)) if buf.len() - pos >= h.frame_len() => h,
                Ok(_) => {
                    return Unit {
                        len: None,
                        info: self.info,
                        flushed: false,
                    }
                }
                Err(_) => {
                    return Unit {
                        len: None,
                        info: UnitInfo::write(),
                        flushed: false,
                    }
                }
            };
            let body = &buf[pos + 5..pos + h.frame_len()];
            self.pos = pos + h.frame_len();
            self.shape.feed(h.tag, body, pos + 5);
            match h.tag {
                b'Q' if pos == 0 => {
                    ctx.add_sql(body.strip_suffix(&[0]).unwrap_or(body), &mut self.info);
                    return self.finish(false);
                }
                b'P' => match extended::parse(body) {
                    Some(p) => {
                        let sql = extended::split_cstr(p.rest).map_or(&[][..], |(q, _)| q);
                        let one = ctx.sql_info(sql);
                        self.info.merge(&one);
                        // The name opens the body.
                        self.parsed.record(pos + 5..pos + 5 + p.name.len());
                    }
                    None => self.info.add_class(Class::Write),
                },
                b'B' => {
                    let one = extended::bind(body).map_or(UnitInfo::write(), |b| {
                        match self.parsed.has(buf, b.statement) {
                            // Its needs are merged already (at its Parse).
                            true => UnitInfo::default(),
                            // An unnamed statement parsed in another unit may be on another
                            // server.
                            false if b.statement.is_empty() => UnitInfo::write(),
                            false => ctx
                                .statements
                                .get(b.statement)
                                .map_or(UnitInfo::write(), |s| s.info(|sql| ctx.sql_info(sql))),
                        }
                    });
                    self.info.merge(&one);
                }
                b'S' => return self.finish(false),
                // A Flush that opens the unit (psycopg sends one after its pipeline's Sync)
                // cuts nothing: there is no extended work for the next messages to continue.
                b'H' if pos == 0 => return self.finish(false),
                b'H' => {
                    // What follows up to Sync runs on the same server and is only seen once
                    // it is there: a replica cannot be proven to suffice, so the primary.
                    self.info.merge(&UnitInfo::write());
                    return self.finish(true);
                }
                t if is_extended(t) => {}
                // FunctionCall, stray COPY messages, anything else: the primary.
                _ => {
                    self.info.add_class(Class::Write);
                    if pos == 0 {
                        return self.finish(false);
                    }
                }
            }
        }
    }

    /// The unit, once it was scanned whole.
    pub(crate) fn whole(&self) -> Option<Unit> {
        self.complete.then(|| self.done())
    }

    fn finish(&mut self, flushed: bool) -> Unit {
        self.complete = true;
        self.flushed = flushed;
        self.parsed = Parsed::default();
        self.done()
    }

    fn done(&self) -> Unit {
        Unit {
            len: Some(self.pos),
            info: self.info,
            flushed: self.flushed,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::frame::test_frame as frame;
    use crate::router::classify::FunctionTable;

    fn scan_bytes(buf: &[u8], statements: &ClientStatements) -> Unit {
        let classifier = Classifier::new(FunctionTable::builtin(), 100);
        scan(buf, 1 << 20, &standard(&classifier, statements))
    }

    /// A context with standard strings and no rules.
    fn standard<'a>(
        classifier: &'a Classifier,
        statements: &'a ClientStatements,
    ) -> UnitContext<'a> {
        UnitContext {
            classifier,
            rules: None,
            statements,
            strings: StringSyntax::Standard,
            reported: &[],
        }
    }

    fn parse(name: &str, sql: &str) -> Vec<u8> {
        frame(b'P', format!("{name}\0{sql}\0\0\0").as_bytes())
    }

    fn bind(stmt: &str) -> Vec<u8> {
        frame(b'B', format!("\0{stmt}\0\0\0\0\0\0\0").as_bytes())
    }

    #[test]
    fn a_unit_scanned_in_pieces_is_scanned_as_a_whole() {
        let classifier = Classifier::new(FunctionTable::builtin(), 100);
        let none = ClientStatements::default();
        let ctx = standard(&classifier, &none);
        let unit = [
            parse("s1", "SELECT 1"),
            bind("s1"),
            frame(b'E', b"\0\0\0\0\0"),
            parse("s2", "DELETE FROM t"),
            parse("s1", "SELECT 2"),
            bind("s1"),
            frame(b'S', b""),
            // The next unit: not part of this one.
            frame(b'Q', b"SELECT 3\0"),
        ]
        .concat();
        let whole = scan_bytes(&unit, &none);
        assert_eq!(whole.info.class, Class::Write);
        assert!(whole.len.unwrap() < unit.len());
        let mut resumed = UnitScan::default();
        for end in (0..unit.len()).step_by(7).chain([unit.len()]) {
            let u = resumed.resume(&unit[..end], 1 << 20, &ctx);
            if end < whole.len.unwrap() {
                assert_eq!(u.len, None, "at {end}");
            } else {
                assert_eq!(u, whole, "at {end}");
            }
        }
    }

    #[test]
    fn backslash_strings_go_to_the_primary_when_they_escape() {
        // With standard_conforming_strings off, this is a string then a DELETE; read the
        // standard way it looks like two strings around nothing.
        let sql = b"SELECT 'a\\''; DELETE FROM t; -- '\0";
        let classifier = Classifier::new(FunctionTable::builtin(), 100);
        let none = ClientStatements::default();
        let ctx = |strings| UnitContext {
            classifier: &classifier,
            rules: None,
            statements: &none,
            strings,
            reported: &[],
        };
        let off = scan(
            &frame(b'Q', sql),
            1 << 20,
            &ctx(StringSyntax::BackslashEscapes),
        );
        assert_eq!(off.info.class, Class::Write);
        // A plain read with no backslash stays a read either way.
        let plain = frame(b'Q', b"SELECT 'a''b'\0");
        let r = scan(&plain, 1 << 20, &ctx(StringSyntax::BackslashEscapes));
        assert_eq!(r.info.class, Class::Read);
    }

    #[test]
    fn a_query_is_one_unit() {
        let mut buf = frame(b'Q', b"SELECT 1\0");
        let first = buf.len();
        buf.extend(frame(b'Q', b"INSERT INTO t VALUES (1)\0"));
        let u = scan_bytes(&buf, &ClientStatements::default());
        assert_eq!(u.len, Some(first));
        assert_eq!(u.info.class, Class::Read);
        let u = scan_bytes(&buf[first..], &ClientStatements::default());
        assert_eq!(u.info.class, Class::Write);
    }

    #[test]
    fn extended_units_end_at_sync_and_any_write_wins() {
        let mut buf = parse("", "SELECT 1");
        buf.extend(bind(""));
        buf.extend(frame(b'E', b"\0\0\0\0\0"));
        let partial = scan_bytes(&buf, &ClientStatements::default());
        assert_eq!(partial.len, None);
        buf.extend(parse("w", "UPDATE t SET a = 1"));
        buf.extend(bind("w"));
        buf.extend(frame(b'S', b""));
        let u = scan_bytes(&buf, &ClientStatements::default());
        assert_eq!(u.len, Some(buf.len()));
        assert_eq!(u.info.class, Class::Write);
    }

    #[test]
    fn bind_takes_the_class_of_its_statement() {
        let mut statements = ClientStatements::default();
        let rest = b"SELECT * FROM t\0\0\0";
        statements.insert(b"s1", rest, usize::MAX).unwrap();
        let mut buf = bind("s1");
        buf.extend(frame(b'S', b""));
        assert_eq!(scan_bytes(&buf, &statements).info.class, Class::Read);
        let mut buf = bind("unknown");
        buf.extend(frame(b'S', b""));
        assert_eq!(scan_bytes(&buf, &statements).info.class, Class::Write);
        // An unnamed statement from an earlier unit may live on another server.
        let mut buf = bind("");
        buf.extend(frame(b'S', b""));
        assert_eq!(scan_bytes(&buf, &statements).info.class, Class::Write);
    }

    #[test]
    fn a_unit_cut_at_a_flush_needs_the_primary_but_a_lone_flush_is_nothing() {
        let none = ClientStatements::default();
        // Parse/Describe/Flush (asyncpg), or rows fetched mid-pipeline (psycopg): the rest,
        // up to Sync, follows on the same server unseen.
        let mut buf = parse("", "SELECT 1");
        buf.extend(frame(b'D', b"S\0"));
        buf.extend(frame(b'H', b""));
        let u = scan_bytes(&buf, &none);
        assert_eq!((u.len, u.flushed), (Some(buf.len()), true));
        assert_eq!(u.info.class, Class::Write);
        // psycopg's Flush after a pipeline's Sync: no extended work for anything to continue.
        let mut buf = frame(b'H', b"");
        let lone = buf.len();
        buf.extend(parse("w", "INSERT INTO t VALUES (1)"));
        let u = scan_bytes(&buf, &none);
        assert_eq!((u.len, u.flushed), (Some(lone), false));
        assert_eq!(u.info.class, Class::Read);
    }

    #[test]
    fn the_analysis_gives_the_fast_lane_its_statement_when_the_unit_is_a_plain_read() {
        let classifier = Classifier::new(FunctionTable::builtin(), 100);
        let mut statements = ClientStatements::default();
        statements
            .insert(b"r", b"SELECT a FROM t WHERE id = $1\0\0\0", usize::MAX)
            .unwrap();
        statements
            .insert(b"w", b"DELETE FROM t\0\0\0", usize::MAX)
            .unwrap();
        let ctx = standard(&classifier, &statements);
        let plain = |buf: &[u8]| {
            let (_, a) = Analysed::of(buf, 1 << 20, &ctx);
            a.plain_read(buf).map(|t| match t {
                LaneText::Sql(sql) => (false, sql.to_vec()),
                LaneText::Named(name) => (true, name.to_vec()),
            })
        };
        let sql = |s: &str| Some((false, s.as_bytes().to_vec()));
        let q = frame(b'Q', b"SELECT a FROM t\0");
        assert_eq!(plain(&q), sql("SELECT a FROM t"));
        let tail = [frame(b'E', b"\0\0\0\0\0"), frame(b'S', b"")].concat();
        let ext = [
            parse("", "SELECT a FROM t WHERE id = $1"),
            bind(""),
            frame(b'D', b"P\0"),
            tail.clone(),
        ]
        .concat();
        assert_eq!(plain(&ext), sql("SELECT a FROM t WHERE id = $1"));
        // A Bind of a named statement the client prepared earlier, a read.
        let named = [bind("r"), tail.clone()].concat();
        assert_eq!(plain(&named), Some((true, b"r".to_vec())));
        // A write, a pinning statement, a named write, a named statement parsed in the unit,
        // more than the unit: not the lane's.
        assert_eq!(plain(&frame(b'Q', b"DELETE FROM t\0")), None);
        assert_eq!(plain(&frame(b'Q', b"SET work_mem = '1GB'\0")), None);
        assert_eq!(plain(&[bind("w"), tail.clone()].concat()), None);
        let parsed = [parse("s1", "SELECT 1"), bind("s1"), tail.clone()].concat();
        assert_eq!(plain(&parsed), None);
        let mut two = q.clone();
        two.extend(&q);
        let (_, a) = Analysed::of(&two, 1 << 20, &ctx);
        assert_eq!(a.plain_read(&two), None);
        // A Bind of the statement parsed in the same unit adds nothing to it.
        assert_eq!(scan_bytes(&ext, &statements).info.class, Class::Read);
    }

    #[test]
    fn pinning_statements_are_flagged() {
        let buf = frame(b'Q', b"SET work_mem = '1GB'\0");
        assert!(scan_bytes(&buf, &ClientStatements::default()).info.pins);
    }
}
