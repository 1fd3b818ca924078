//! A small mutation fuzzer (fixed seed, runs with the unit tests): valid client and server
//! messages, mutated (bytes flipped, lengths rewritten, truncated, spliced), go through every
//! function that reads bytes from clients or servers. Passing means no panic.

use bytes::BytesMut;

use crate::backend::params::{ExtraParams, ParamChanges};
use crate::config::SessionStatePolicy;
use crate::prepared::client::{answer_parse_batch, ClientStatements};
use crate::prepared::server::ServerStatements;
use crate::protocol::frame::{peek_header, test_frame as msg};
use crate::protocol::{extended, messages, startup, validate};
use crate::router::classify::{Classifier, FunctionTable};
use crate::router::commands;
use crate::router::route::ClientRouting;
use crate::sql::lexer::StringSyntax;
use crate::sql::{session_commands, session_state};
use crate::test_rng::Rng;

use super::gate::{Gate, Moment};
use super::responses::{route_server, Expectations, ParamSync, Streaming};
use super::rewrite::{route_client, ClientSide, ServerSide};
use super::units::{self, UnitContext};

fn client_corpus() -> Vec<Vec<u8>> {
    let q = |sql: &str| msg(b'Q', format!("{sql}\0").as_bytes());
    vec![
        q("SELECT 1"),
        q("SET work_mem = '1MB'"),
        q("SET application_name = 'a'; RESET ALL"),
        q("DEALLOCATE s1"),
        q("DEALLOCATE ALL"),
        q("DISCARD ALL"),
        q("SHOW pgtier.causal_lsn"),
        q("SET pgtier.min_lsn = '0/16B3748'"),
        q("SET pgtier.route = 'replica'"),
        q("BEGIN READ ONLY"),
        q("/* pgtier:replica */ SELECT $a$x$a$, E'\\\\''', \"q\" FROM t FOR NO KEY UPDATE"),
        q("/* pgtier:min_lsn=0/1 */ WITH w AS (DELETE FROM t RETURNING *) SELECT * FROM w"),
        q("SELECT pg_advisory_lock(1); LISTEN x; CREATE TEMP TABLE t (a int)"),
        q("SELECT set_config('a.b', 'c', false)"),
        msg(b'P', b"s1\0SELECT $1\0\0\x01\0\0\0\x17"),
        msg(b'P', b"\0SET search_path = x\0\0\0"),
        msg(b'P', b"\0SELECT 1\0\0\0"),
        msg(b'B', b"\0s1\0\0\x01\0\x01\0\x01\0\0\0\x011\0\0"),
        msg(b'B', b"\0\0\0\0\0\0\0\0"),
        msg(b'D', b"Ss1\0"),
        msg(b'D', b"P\0"),
        msg(b'D', b"S\0"),
        msg(b'E', b"\0\0\0\0\0"),
        msg(b'C', b"Ss1\0"),
        msg(b'C', b"S\0"),
        msg(b'C', b"P\0"),
        msg(b'S', b""),
        msg(b'H', b""),
        // pg_advisory_lock(bigint) through the fastpath.
        msg(
            b'F',
            b"\0\0\x0b\xa6\0\0\0\x01\0\0\0\x08\0\0\0\0\0\0\0\x01\0\0",
        ),
        msg(b'd', b"1\t2\n"),
        msg(b'c', b""),
        msg(b'f', b"oops\0"),
        msg(b'X', b""),
    ]
}

fn server_corpus() -> Vec<Vec<u8>> {
    let mut error = BytesMut::new();
    messages::error_response(
        &mut error,
        messages::Severity::Error,
        crate::protocol::SqlState("42601"),
        "syntax",
    );
    let mut fatal = BytesMut::new();
    messages::error_response(
        &mut fatal,
        messages::Severity::Fatal,
        crate::protocol::SqlState("08P01"),
        "invalid message",
    );
    vec![
        msg(b'1', b""),
        msg(b'2', b""),
        msg(b'3', b""),
        msg(b'n', b""),
        msg(b's', b""),
        msg(b'I', b""),
        msg(b't', b"\0\x01\0\0\0\x17"),
        msg(
            b'T',
            b"\0\x01a\0\0\0\0\0\0\0\0\0\0\x17\0\x04\xff\xff\xff\xff\0\0",
        ),
        msg(b'D', b"\0\x01\0\0\0\x011"),
        msg(b'C', b"SELECT 1\0"),
        msg(b'C', b"DISCARD ALL\0"),
        msg(b'C', b"SET\0"),
        error.to_vec(),
        fatal.to_vec(),
        msg(b'N', b"SWARNING\0C01000\0Mnote\0\0"),
        msg(b'S', b"application_name\0x\0"),
        msg(b'S', b"standard_conforming_strings\0off\0"),
        msg(b'Z', b"I"),
        msg(b'Z', b"T"),
        msg(b'Z', b"E"),
        msg(b'G', b"\0\0\0"),
        msg(b'H', b"\0\0\0"),
        msg(b'd', b"row\n"),
        msg(b'c', b""),
        msg(b'A', b"\0\0\0\x01chan\0payload\0"),
        msg(b'K', b"\0\0\0\x01\0\0\0\x02"),
    ]
}

/// One to four corpus entries, then up to three mutations.
fn sample(rng: &mut Rng, corpus: &[Vec<u8>]) -> Vec<u8> {
    let mut b = Vec::new();
    for _ in 0..1 + rng.below(4) {
        b.extend_from_slice(&corpus[rng.below(corpus.len())]);
    }
    for _ in 0..rng.below(4) {
        mutate(rng, &mut b);
    }
    b
}

fn mutate(rng: &mut Rng, b: &mut Vec<u8>) {
    if b.is_empty() {
        b.push(rng.next() as u8);
        return;
    }
    let at = rng.below(b.len());
    match rng.below(6) {
        0 => b[at] ^= 1 << rng.below(8),
        1 => b[at] = [0, 0xff, 0x7f, b'S', b'E', b'Z'][rng.below(6)],
        2 => b.truncate(at),
        3 => b.insert(at, rng.next() as u8),
        4 => {
            // A length field anywhere: interesting values, or off by a little.
            let v: u32 = match rng.below(4) {
                0 => [0, 3, 4, 5, 0x7fff_ffff, 0xffff_ffff][rng.below(6)],
                1 => rng.next() as u32,
                _ => ((b.len() - at) as u32 + rng.below(9) as u32).wrapping_sub(4),
            };
            for (i, byte) in v.to_be_bytes().into_iter().enumerate() {
                if let Some(slot) = b.get_mut(at + i) {
                    *slot = byte;
                }
            }
        }
        _ => {
            let end = (at + rng.below(16)).min(b.len());
            let piece = b[at..end].to_vec();
            let to = rng.below(b.len());
            b.splice(to..to, piece);
        }
    }
}

/// Client-side state carried from batch to batch (reset when a batch is refused).
#[derive(Default)]
struct State {
    statements: ClientStatements,
    discard: bool,
    copy_left: usize,
    pinned: Option<&'static str>,
    registry: Option<ServerStatements>,
    expect: Expectations,
    unnamed_here: bool,
    streaming: Streaming,
    params: ParamChanges,
    server_params: ParamChanges,
}

#[test]
fn mutated_client_and_server_bytes_never_panic() {
    // PGTIER_FUZZ_ROUNDS / PGTIER_FUZZ_SEED run it longer or elsewhere.
    let env = |k: &str| std::env::var(k).ok().and_then(|v| v.parse::<u64>().ok());
    let rounds = env("PGTIER_FUZZ_ROUNDS").unwrap_or(20_000);
    let mut rng = Rng(env("PGTIER_FUZZ_SEED").unwrap_or(0x9e37_79b9_7f4a_7c15) | 1);
    let (mut routed_ok, mut served_ok) = (0u64, 0u64);
    let (clients, servers) = (client_corpus(), server_corpus());
    let classifier = Classifier::new(FunctionTable::builtin(), 64);
    let secret = crate::protocol::auth::ScramSecret::from_password("pw");
    let defaults = [
        ("application_name".to_owned(), String::new()),
        ("standard_conforming_strings".to_owned(), "on".to_owned()),
    ];
    let max = 1 << 16;
    let mut st = State::default();
    for round in 0..rounds {
        let batch = sample(&mut rng, &clients);
        // Messages one by one.
        let mut pos = 0;
        while let Ok(Some(h)) = peek_header(&batch[pos..], usize::MAX) {
            let Some(body) = batch.get(pos + 5..pos + h.frame_len()) else {
                break;
            };
            let _ = validate::check(h.tag, body);
            let _ = (
                extended::parse(body),
                extended::bind(body),
                extended::target(body),
            );
            if round % 2 == 0 {
                let sql = body.strip_suffix(&[0]).unwrap_or(body);
                let _ = commands::command(sql);
                let _ = session_commands::session_command(sql);
                let _ = session_state::pins_in(sql, StringSyntax::BackslashEscapes, |_| true);
                let _ = session_commands::resets_all(sql, StringSyntax::Standard);
                let _ = classifier.classify(sql);
            }
            pos += h.frame_len();
        }
        let _ = startup::decode(&batch);
        if let Ok(x) = crate::protocol::auth::ScramExchange::start(&secret, &batch) {
            let _ = x.finish(&secret, &batch);
        }
        // Whole batches, as the session and the relay see them.
        let ctx = UnitContext {
            classifier: &classifier,
            rules: None,
            statements: &st.statements,
            reported: &defaults,
            strings: StringSyntax::Standard,
        };
        let _ = units::complete(&batch, max);
        let _ = units::scan(&batch, max, &ctx);
        let _ = super::observe::statement_text(&batch, &st.statements);
        let moment = Moment {
            ctx,
            client: ClientRouting::default(),
            in_transaction: round % 3 == 0,
            busy: round % 5 == 0,
            unsynced: round % 7 == 0,
            local: super::listen::LocalAnswers {
                listen: round % 2 == 0,
                channels: round % 4 == 0,
            },
        };
        for on_replica in [true, false] {
            let admitted = Gate::new(on_replica, true, true, None).admit(&batch, 0, max, &moment);
            assert!(admitted <= batch.len());
        }
        let _ = answer_parse_batch(&batch, &mut st.statements, 1 << 20);
        let registry = st.registry.get_or_insert_with(|| ServerStatements::new(4));
        let mut out = BytesMut::new();
        let routed = route_client(
            &batch,
            max,
            &mut ClientSide {
                statements: &mut st.statements,
                discard: &mut st.discard,
                copy_left: &mut st.copy_left,
                pinned: &mut st.pinned,
                reported: &defaults,
                policy: if round % 2 == 0 {
                    SessionStatePolicy::Pin
                } else {
                    SessionStatePolicy::Reject
                },
                strings: StringSyntax::Standard,
                extras: ExtraParams::intern(&["search_path".to_owned()]),
                in_transaction: round % 3 == 0,
                prepared_bytes: 1 << 20,
                startup: st.params.has_startup(),
                unpinned: 0,
                params: &st.params,
            },
            &mut ServerSide {
                registry,
                expect: &mut st.expect,
                unnamed_here: &mut st.unnamed_here,
            },
            &mut out,
        );
        if routed.is_err() {
            st = State::default();
            continue;
        }
        routed_ok += 1;
        // The server's answer, mutated too.
        let answer = sample(&mut rng, &servers);
        let _ = (
            messages::ends_session(&answer),
            messages::fatal_sqlstate(&answer),
        );
        let _ = messages::error_fields(&answer);
        let mut out = BytesMut::new();
        let registry = st.registry.get_or_insert_with(|| ServerStatements::new(4));
        let served = route_server(
            &answer,
            &mut st.streaming,
            &mut st.expect,
            registry,
            &mut st.statements,
            &mut ParamSync {
                defaults: &defaults,
                client: &mut st.params,
                server_login: &defaults,
                server: &mut st.server_params,
            },
            &mut out,
        );
        match served {
            Ok(scan) => {
                served_ok += 1;
                assert!(scan.consumed <= answer.len());
            }
            Err(_) => st = State::default(),
        }
        let _ = st.expect.drain_synthetic(&mut out);
    }
    // Most batches must get past the checks, or the deeper code is not exercised.
    println!("{rounds} rounds: {routed_ok} routed, {served_ok} answered");
    assert!(routed_ok > rounds / 4 && served_ok > rounds / 8);
}
