//! Tests of `rewrite`, by concern; here the fixture that routes client bytes and feeds replies.
use bytes::BytesMut;

use crate::backend::params::{ExtraParams, ParamChanges};
use crate::config::SessionStatePolicy;
use crate::frontend::relay::responses::Expectations;
use crate::prepared::client::ClientStatements;
use crate::prepared::server::ServerStatements;
use crate::protocol::frame::test_frame as msg;
use crate::sql::lexer::StringSyntax;

use super::{route_client, ClientScan, ClientSide, ServerSide, Violation};

mod framing;
mod session_state;
mod statements;

struct Fixture {
    statements: ClientStatements,
    discard: bool,
    copy_left: usize,
    pinned: Option<&'static str>,
    registry: ServerStatements,
    expect: Expectations,
    unnamed_here: bool,
    extras: ExtraParams,
    prepared_bytes: usize,
    params: ParamChanges,
}

impl Fixture {
    fn new() -> Fixture {
        Fixture {
            statements: ClientStatements::default(),
            discard: false,
            copy_left: 0,
            pinned: None,
            registry: ServerStatements::new(100),
            expect: Expectations::default(),
            unnamed_here: false,
            extras: ExtraParams::default(),
            prepared_bytes: usize::MAX,
            params: ParamChanges::default(),
        }
    }

    fn route(&mut self, buf: &[u8], out: &mut BytesMut) -> Result<ClientScan, Violation> {
        route_client(
            buf,
            1 << 20,
            &mut ClientSide {
                statements: &mut self.statements,
                discard: &mut self.discard,
                copy_left: &mut self.copy_left,
                pinned: &mut self.pinned,
                reported: &[],
                policy: SessionStatePolicy::Pin,
                strings: StringSyntax::Standard,
                extras: self.extras,
                in_transaction: false,
                prepared_bytes: self.prepared_bytes,
                params: &self.params,
                startup: self.params.has_startup(),
                unpinned: 0,
            },
            &mut ServerSide {
                registry: &mut self.registry,
                expect: &mut self.expect,
                unnamed_here: &mut self.unnamed_here,
            },
            out,
        )
    }
}

/// The (tag, body) of each message in `buf`.
fn frames(buf: &[u8]) -> Vec<(u8, &[u8])> {
    let mut v = Vec::new();
    let mut pos = 0;
    while pos < buf.len() {
        let len = u32::from_be_bytes(buf[pos + 1..pos + 5].try_into().unwrap()) as usize;
        v.push((buf[pos], &buf[pos + 5..pos + 1 + len]));
        pos += 1 + len;
    }
    v
}

fn tags(buf: &[u8]) -> String {
    frames(buf).iter().map(|(t, _)| *t as char).collect()
}

/// Feeds server replies to the fixture's expectations; returns what reaches the client.
fn reply(f: &mut Fixture, server: &[u8]) -> BytesMut {
    let mut out = BytesMut::new();
    let scan = super::super::responses::route_server(
        server,
        &mut Default::default(),
        &mut f.expect,
        &mut f.registry,
        &mut f.statements,
        &mut super::super::responses::ParamSync {
            defaults: &[],
            client: &mut Default::default(),
            server_login: &[],
            server: &mut Default::default(),
        },
        &mut out,
    )
    .unwrap();
    if !scan.copied {
        out.extend_from_slice(&server[..scan.consumed]);
    }
    out
}

fn error(code: &str) -> Vec<u8> {
    msg(b'E', format!("SERROR\0C{code}\0Mx\0\0").as_bytes())
}

/// Feeds server replies like `reply`, keeping the parameter changes: (client's, server's).
fn reply_params(f: &mut Fixture, server: &[u8]) -> (ParamChanges, ParamChanges) {
    let (mut client, mut srv) = (ParamChanges::default(), ParamChanges::default());
    let mut out = BytesMut::new();
    super::super::responses::route_server(
        server,
        &mut Default::default(),
        &mut f.expect,
        &mut f.registry,
        &mut f.statements,
        &mut super::super::responses::ParamSync {
            defaults: &[],
            client: &mut client,
            server_login: &[],
            server: &mut srv,
        },
        &mut out,
    )
    .unwrap();
    (client, srv)
}

/// P B [D] E S of one unnamed statement, the unit JDBC and psycopg send for a plain statement.
fn unit(sql: &str, describe: bool) -> Vec<u8> {
    let mut buf = msg(b'P', format!("\0{sql}\0\0\0").as_bytes());
    buf.extend(msg(b'B', b"\0\0\0\0\0\0\0\0"));
    if describe {
        buf.extend(msg(b'D', b"P\0"));
    }
    buf.extend(msg(b'E', b"\0\0\0\0\0"));
    buf.extend(msg(b'S', b""));
    buf
}

/// Bind of the unnamed statement, Execute, Sync: running it again without a Parse.
fn rebind() -> Vec<u8> {
    let mut buf = msg(b'B', b"\0\0\0\0\0\0\0\0");
    buf.extend(msg(b'E', b"\0\0\0\0\0"));
    buf.extend(msg(b'S', b""));
    buf
}

/// Server replies to `unit`: ParseComplete, BindComplete, then `tail`.
fn unit_replies(tail: &[Vec<u8>]) -> Vec<u8> {
    [vec![msg(b'1', b""), msg(b'2', b"")], tail.to_vec()]
        .concat()
        .concat()
}
