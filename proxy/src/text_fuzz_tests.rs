//! A randomized "never panics" test of everything that reads client SQL text (fixed seed, runs
//! with the unit tests): short texts drawn from SQL fragments and hostile bytes (quotes of every
//! kind, escape and prefixed strings, unterminated comments, `$` tags, bytes that are not
//! UTF-8), cut at random points, go through the lexer, the literal normalizer, the
//! session-state and session-command scans, the LISTEN and pgtier-statement parsers, the
//! classifier (memo, cache and deep check) and the relay's entry points for a unit's text.
//! Passing means no panic and the cheap invariants below hold.

use std::ops::Range;

use crate::frontend::relay::fast::lane_unit;
use crate::frontend::relay::gate::{Gate, Moment};
use crate::frontend::relay::listen::LocalAnswers;
use crate::frontend::relay::units::{Analysed, UnitContext};
use crate::prepared::client::ClientStatements;
use crate::protocol::frame::test_frame as frame;
use crate::router::classify::{Classifier, FunctionTable, Reason};
use crate::router::commands;
use crate::router::route::ClientRouting;
use crate::sql::lexer::{Lexer, StringSyntax, Token};
use crate::sql::normalize::{normalize_literals, same_shape, Literal};
use crate::sql::{listen, params, session_commands, session_state, starts_with_select};
use crate::test_rng::Rng;

/// What texts are made of: SQL fragments, the lexer's hard cases and hostile bytes.
const FRAGMENTS: &[&[u8]] = &[
    // Quotes, prefixed and escape strings, dollar quotes, quoted identifiers.
    b"'",
    b"''",
    b"'a'",
    b"\"",
    b"\"\"",
    b"\"a\"",
    b"$$",
    b"$a$",
    b"$1",
    b"$",
    b"E'",
    b"e'",
    b"U&'",
    b"U&\"",
    b"B'",
    b"X'",
    b"N'",
    b"\\",
    b"\\'",
    b"\\\\",
    // Comments and separators.
    b"--",
    b"/*",
    b"*/",
    b"/*+",
    b"\r",
    b"\n",
    b"\t",
    b"\x0c",
    b" ",
    b" ",
    b" ",
    b";",
    b",",
    b"=",
    b"*",
    b"/",
    b"&",
    b"(",
    b")",
    b"::",
    b".",
    // Numbers.
    b"0",
    b"1",
    b"7",
    b"42",
    b"1.5",
    b"123456789012345678",
    b"1234567890123456789",
    b"e",
    b"E",
    b"-",
    b"+",
    b"_",
    b"x",
    b"t",
    // Keywords and the words the scans look for.
    b"SELECT",
    b"select ",
    b"SET",
    b"set ",
    b"RESET",
    b"LISTEN",
    b"UNLISTEN",
    b"PREPARE",
    b"DO",
    b"EXPLAIN",
    b"ANALYZE",
    b"VERBOSE",
    b"CREATE",
    b"CREATE TEMP",
    b"TEMP",
    b"TEMPORARY",
    b"LOCAL",
    b"SESSION",
    b"TO",
    b"DEFAULT",
    b"ALL",
    b"DISCARD",
    b"DEALLOCATE",
    b"DECLARE",
    b"WITH HOLD",
    b"pg_advisory_lock",
    b"pg_temp",
    b"set_config",
    b"BEGIN",
    b"COMMIT",
    b"WITH",
    b"INSERT",
    b"INTO",
    b"RETURNING",
    b"FOR UPDATE",
    b"FOR NO KEY",
    b"TABLE",
    b"COPY",
    b"TO STDOUT",
    b"FROM",
    b"SHOW",
    b"nextval",
    b"currval",
    b"pg_listening_channels()",
    b"pgtier.route",
    b"pgtier.min_lsn",
    b"pgtier:",
    b"pgtier:replica",
    b"pgtier:min_lsn=0/1",
    b"work_mem",
    b"a.b",
    // Bytes that are not ASCII, or not UTF-8.
    b"\x00",
    b"\x7f",
    b"\x80",
    b"\xc3",
    b"\xc3\xa9",
    b"\xff",
];

/// Literals put in place of the ones the normalizer found (same kind or not).
const LITERALS: &[&[u8]] = &[
    b"0",
    b"9",
    b"123456",
    b"123456789012345678",
    b"1234567890123456789",
    b"1.5",
    b"22.75",
    b"1e5",
    b"1.",
    b"''",
    b"'a'",
    b"'it''s'",
    b"'\\'",
    b"'\xc3\xa9'",
    b"'\xff'",
    b"'",
    b"E''",
    b"E'x'",
    b"E'\\n'",
    b"E'\\",
    b"$$",
    b"x",
    b"",
];

/// The longest text generated, before a fragment that crosses it.
const MAX_LEN: usize = 64;

/// A text of fragments, sometimes cut at a random point or with a byte overwritten.
fn text(rng: &mut Rng) -> Vec<u8> {
    let mut t = Vec::new();
    let target = rng.below(MAX_LEN + 1);
    while t.len() < target {
        t.extend_from_slice(rng.pick(FRAGMENTS));
    }
    match rng.below(8) {
        0 | 1 => {
            let at = rng.below(t.len() + 1);
            t.truncate(at);
        }
        2 if !t.is_empty() => {
            let at = rng.below(t.len());
            t[at] = [0, b'\'', b'"', b'\\', b'$', b'*', b'/', b'-', 0xff, 0x80][rng.below(10)];
        }
        _ => {}
    }
    t
}

const SYNTAXES: [StringSyntax; 2] = [StringSyntax::Standard, StringSyntax::BackslashEscapes];

/// Where `part` (a subslice of `whole`) is in it: panics if it is not one.
fn within(whole: &[u8], part: &[u8]) -> Range<usize> {
    let start = (part.as_ptr() as usize)
        .checked_sub(whole.as_ptr() as usize)
        .filter(|&s| s + part.len() <= whole.len())
        .unwrap_or_else(|| panic!("{:?}: not a slice of the text", show(whole)));
    start..start + part.len()
}

fn show(t: &[u8]) -> String {
    format!("b\"{}\"", t.escape_ascii())
}

/// The lexer: every lexeme within the text, in order, and non-empty; tokens are slices of it.
fn lexer(t: &[u8], start: usize) {
    for strings in SYNTAXES {
        let mut lx = Lexer::with_syntax(t, strings);
        let mut prev_end = 0;
        let mut count = 0;
        while let Some(l) = lx.lexeme() {
            assert!(
                prev_end <= l.start && l.start < l.end && l.end <= t.len(),
                "{}: {l:?} after {prev_end} ({strings:?})",
                show(t)
            );
            assert_eq!(lx.offset(), l.end, "{}", show(t));
            prev_end = l.end;
            count += 1;
        }
        assert!(count <= t.len(), "{}", show(t));
        let mut lx = Lexer::with_syntax(t, strings);
        while let Some(tok) = lx.next() {
            assert!(lx.offset() <= t.len(), "{}", show(t));
            if let Token::Word(w) = tok {
                let at = within(t, w);
                assert!(at.end <= lx.offset(), "{}", show(t));
            }
        }
    }
    // From any byte (meaningful at lexeme starts only, but never out of the text).
    let mut lx = Lexer::at(t, start);
    while let Some(l) = lx.lexeme() {
        assert!(start <= l.start && l.end <= t.len(), "{}: {l:?}", show(t));
    }
}

/// The normalizer's key and literals, when it normalizes `t`.
fn normalized(t: &[u8]) -> Option<(Vec<u8>, Vec<Literal>)> {
    let (mut out, mut literals) = (Vec::new(), Vec::new());
    normalize_literals(t, &mut out, &mut literals).then_some((out, literals))
}

/// The normalizer and the shape check: literals in order within the text, a text has its own
/// shape, and texts of the same shape (`t` with other literals, another text, a prefix) have
/// the same key.
fn normalizer(rng: &mut Rng, t: &[u8], prev: &(Vec<u8>, Vec<Literal>)) -> (Vec<u8>, Vec<Literal>) {
    let same_key = |a: &[u8], b: &[u8]| {
        let (ka, kb) = (normalized(a).map(|k| k.0), normalized(b).map(|k| k.0));
        assert!(
            ka == kb,
            "same shape, other keys: {} / {}",
            show(a),
            show(b)
        );
    };
    let (prev_text, prev_literals) = prev;
    if same_shape(prev_text, prev_literals, t) {
        same_key(prev_text, t);
    }
    let Some((_, literals)) = normalized(t) else {
        return (t.to_vec(), Vec::new());
    };
    let mut end = 0;
    for l in &literals {
        assert!(
            end <= l.start && l.start < l.end && l.end <= t.len(),
            "{}: {literals:?}",
            show(t)
        );
        end = l.end;
    }
    assert!(same_shape(t, &literals, t), "{}: {literals:?}", show(t));
    let cut = &t[..rng.below(t.len() + 1)];
    if same_shape(t, &literals, cut) {
        same_key(t, cut);
    }
    if !literals.is_empty() {
        // The same text with other literals.
        let mut other = Vec::new();
        let mut from = 0;
        for l in &literals {
            other.extend_from_slice(&t[from..l.start]);
            other.extend_from_slice(rng.pick(LITERALS));
            from = l.end;
        }
        other.extend_from_slice(&t[from..]);
        if same_shape(t, &literals, &other) {
            same_key(t, &other);
        }
    }
    (t.to_vec(), literals)
}

/// The session-state, session-command, LISTEN and pgtier-statement scans.
fn scans(t: &[u8]) {
    let lossy = String::from_utf8_lossy(t);
    let _ = StringSyntax::from_setting(Some(&lossy));
    let _ = params::tracked(&lossy);
    let _ = starts_with_select(t);
    let _ = starts_with_select(t.trim_ascii_start());
    let may_pin = session_state::may_pin(t);
    let _ = session_state::pins(t, |_| false);
    for strings in SYNTAXES {
        for reported in [false, true] {
            if let Some(reason) = session_state::pins_in(t, strings, |_| reported) {
                assert!(may_pin && !reason.is_empty(), "{}", show(t));
            }
        }
        let _ = session_state::pins_in(t, strings, |name| {
            std::str::from_utf8(name)
                .ok()
                .and_then(params::tracked)
                .is_some()
        });
        if let Some(c) = session_commands::param_command(t, strings) {
            match c {
                session_commands::ParamCommand::Set(name, stmt) => {
                    within(t, name);
                    within(t, stmt);
                }
                session_commands::ParamCommand::Reset(name) => {
                    within(t, name);
                }
                session_commands::ParamCommand::ResetAll => {}
            }
        }
        let _ = session_commands::resets_all(t, strings);
        if let Some(session_commands::Resets::Names(names)) = session_commands::resets(t, strings) {
            for name in names {
                within(t, name);
            }
        }
    }
    let first = session_commands::first_word(t);
    if !first.is_empty() {
        within(t, first);
    }
    if let Some(session_commands::SessionCommand::Deallocate(name)) =
        session_commands::session_command(t)
    {
        within(t, name);
    }
    let _ = listen::listen_query(t);
    let _ = listen::listening_channels_query(t);
    let _ = listen::parse(t);
    let _ = commands::command(t);
}

/// The classifier, with its memo and cache and (`compare`) without.
fn classified(t: &[u8], cached: &Classifier, uncached: &Classifier, compare: bool) {
    let c = cached.classify(t);
    // The prefilter a classification keeps may say yes wrongly, never no wrongly (with the
    // standard strings it reads).
    if session_state::pins(t, |_| false).is_some() {
        assert!(c.may_pin, "{}", show(t));
    }
    if compare {
        // What the memo and the cache remember (from a text of the same key) never makes a
        // read of a text classified fresh as a write. (One exception, left alone: a text
        // whose only bytes that are not UTF-8 are in a comment, which its key drops, gets
        // the verdict of its key's text; fresh, it is an InvalidUtf8 write.)
        let fresh = uncached.classify(t);
        assert!(
            c.class == fresh.class || fresh.reason == Reason::InvalidUtf8,
            "{}: {:?} {:?}, fresh {:?} {:?}",
            show(t),
            c.class,
            c.reason,
            fresh.class,
            fresh.reason
        );
    }
}

/// The relay's entry points for a unit's text: the unit scan, the fast lane's checks and the
/// gate, for the text as a simple Query, as an unnamed Parse/Bind/Describe/Execute/Sync, and
/// as a named statement bound later.
fn relayed(t: &[u8], classifier: &Classifier) {
    let mut statements = ClientStatements::default();
    let mut rest = t.to_vec();
    rest.extend_from_slice(b"\0\0\0");
    let _ = statements.insert(b"s", &rest, usize::MAX);
    let max = 1 << 20;
    let mut query = t.to_vec();
    query.push(0);
    let query = frame(b'Q', &query);
    let mut parse = b"\0".to_vec();
    parse.extend_from_slice(&rest);
    let after_bind = [
        frame(b'D', b"P\0"),
        frame(b'E', b"\0\0\0\0\0"),
        frame(b'S', b""),
    ]
    .concat();
    let bind = |statement: &[u8]| {
        let mut body = vec![0];
        body.extend_from_slice(statement);
        body.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0]);
        frame(b'B', &body)
    };
    let extended = [frame(b'P', &parse), bind(b""), after_bind.clone()].concat();
    let bind_named = [bind(b"s"), after_bind].concat();
    for strings in SYNTAXES {
        let ctx = || UnitContext {
            classifier,
            rules: None,
            statements: &statements,
            reported: &[],
            strings,
        };
        let _ = ctx().sql_info(t);
        for unit in [&query, &extended, &bind_named] {
            let (scanned, analysed) = Analysed::of(unit, max, &ctx());
            assert!(scanned.len.is_none_or(|n| n <= unit.len()), "{}", show(t));
            let _ = analysed.plain_read(unit);
            let _ = lane_unit(unit, Some(&analysed), &statements);
            let _ = lane_unit(unit, None, &statements);
            let moment = Moment {
                ctx: ctx(),
                client: ClientRouting::default(),
                in_transaction: false,
                busy: false,
                unsynced: false,
                local: LocalAnswers {
                    listen: true,
                    channels: true,
                },
            };
            // On a replica; on the primary tracking writes, or sequences only (the plain
            // SELECT check).
            for (on_replica, track_writes) in [(true, true), (false, true), (false, false)] {
                let mut gate = Gate::new(on_replica, track_writes, true, Some(analysed.clone()));
                let admitted = gate.admit(unit, 0, max, &moment);
                assert!(admitted <= unit.len(), "{}", show(t));
                let doubled = [&unit[..], &unit[..]].concat();
                let mut gate = Gate::new(on_replica, track_writes, true, None);
                let admitted = gate.admit(&doubled, 0, max, &moment);
                assert!(admitted <= doubled.len(), "{}", show(t));
            }
        }
    }
}

#[test]
fn random_sql_texts_never_panic_the_text_analysis() {
    // PGTIER_SQL_FUZZ_ROUNDS / PGTIER_SQL_FUZZ_SEED run it longer or elsewhere.
    let env = |k: &str| std::env::var(k).ok().and_then(|v| v.parse::<u64>().ok());
    let rounds = env("PGTIER_SQL_FUZZ_ROUNDS").unwrap_or(200_000);
    let mut rng = Rng(env("PGTIER_SQL_FUZZ_SEED").unwrap_or(0x853c_49e6_748f_ea9b) | 1);
    let cached = Classifier::new(FunctionTable::builtin(), 256);
    let uncached = Classifier::new(FunctionTable::builtin(), 0);
    let mut prev = (Vec::new(), Vec::new());
    let mut normalized_texts = 0u64;
    for round in 0..rounds {
        let t = text(&mut rng);
        let start = rng.below(t.len() + 1);
        lexer(&t, start);
        prev = normalizer(&mut rng, &t, &prev);
        normalized_texts += u64::from(!prev.1.is_empty());
        scans(&t);
        classified(&t, &cached, &uncached, round % 16 == 0);
        // The relay's entry points classify each text a dozen times (the memo answers most).
        if round % 8 == 0 {
            relayed(&t, &cached);
        }
    }
    println!("{rounds} texts, {normalized_texts} normalized with literals");
    assert!(normalized_texts > rounds / 20, "{normalized_texts}");
}
