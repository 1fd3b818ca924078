//! Extended-protocol units of nothing but LISTEN-family statements and `SELECT
//! pg_listening_channels()` (unnamed, or named and kept per client), answered by pgtier like
//! the simple-query ones (see `listen`).

use bytes::BytesMut;

use crate::frontend::relay::listen::{channels_description, channels_rows};
use crate::protocol::extended::{split_cstr, target};
use crate::protocol::frame::peek_header;
use crate::protocol::messages::command_complete;
use crate::protocol::messages::{error_response, ready_for_query, Severity, TxStatus};
use crate::protocol::SqlState;
use crate::sql::listen::{listening_channels_query, ListenCommand};

use super::Session;

impl Session {
    /// Answers extended-protocol LISTEN-family units as Postgres would; after an error, the
    /// rest of the unit up to its Sync is skipped.
    pub(super) async fn answer_extended(&mut self, steps: Vec<Step>, out: &mut BytesMut) {
        let mut failed = false;
        let mut portal: Option<(Local, bool)> = None;
        for step in steps {
            if failed && step != Step::Sync {
                continue;
            }
            match step {
                Step::Parse(name, cmd) => {
                    if !name.is_empty() {
                        let kept = self.listen_statements.get_or_insert_with(Default::default);
                        kept.retain(|(n, _)| *n != name);
                        if kept.len() >= MAX_LISTEN_STATEMENTS {
                            error_response(
                                out,
                                Severity::Error,
                                SqlState::PROGRAM_LIMIT_EXCEEDED,
                                &format!("pgtier: more than {MAX_LISTEN_STATEMENTS} prepared LISTEN/UNLISTEN statements on one connection"),
                            );
                            failed = true;
                            continue;
                        }
                        kept.push((name, cmd));
                    }
                    out.extend_from_slice(b"1\0\0\0\x04");
                }
                // ParameterDescription (no parameters), then NoData or the one column (its
                // format is not known before Bind: text).
                Step::DescribeStatement(rows) => {
                    out.extend_from_slice(b"t\0\0\0\x06\0\0");
                    if rows {
                        channels_description(out, false);
                    } else {
                        out.extend_from_slice(b"n\0\0\0\x04");
                    }
                }
                Step::Bind(local, binary) => {
                    portal = Some((local, binary));
                    out.extend_from_slice(b"2\0\0\0\x04");
                }
                Step::DescribePortal => match &portal {
                    Some((Local::Channels, binary)) => channels_description(out, *binary),
                    _ => out.extend_from_slice(b"n\0\0\0\x04"),
                },
                Step::Execute => {
                    let cmd = match portal.clone() {
                        Some((Local::Cmd(cmd), _)) => cmd,
                        Some((Local::Channels, _)) => {
                            channels_rows(self.listening.as_deref(), out);
                            continue;
                        }
                        None => continue,
                    };
                    match self.apply_listen(&cmd).await {
                        Ok(()) => command_complete(out, cmd.tag()),
                        Err((code, message)) => {
                            error_response(out, Severity::Error, code, &message);
                            failed = true;
                        }
                    }
                }
                Step::Close(name) => {
                    if let Some(kept) = &mut self.listen_statements {
                        kept.retain(|(n, _)| *n != name);
                    }
                    out.extend_from_slice(b"3\0\0\0\x04");
                }
                Step::Flush => {}
                Step::Sync => {
                    failed = false;
                    portal = None;
                    ready_for_query(out, TxStatus::Idle);
                }
            }
        }
    }

    /// Forgets kept LISTEN statements whose names a Parse in `buf` (going to a server)
    /// reuses for another statement.
    pub(super) fn forget_listen_statements(&mut self, buf: &[u8]) {
        let Some(kept) = &mut self.listen_statements else {
            return;
        };
        let mut pos = 0;
        while let Ok(Some(h)) = peek_header(&buf[pos..], usize::MAX) {
            let end = pos + h.frame_len();
            if h.tag == b'P' {
                if let Some((name, _)) = buf.get(pos + 5..end).and_then(split_cstr) {
                    kept.retain(|(n, _)| &n[..] != name);
                }
            }
            pos = end;
            if pos >= buf.len() {
                break;
            }
        }
    }
}

/// A statement pgtier answers in an extended-protocol unit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Local {
    /// A LISTEN-family statement.
    Cmd(ListenCommand),
    /// `SELECT pg_listening_channels()`.
    Channels,
}

/// Statements pgtier answers that a client prepared under a name: (name, statement).
pub(super) type ListenStatements = Vec<(Box<[u8]>, Local)>;

/// Most LISTEN-family statements one client keeps prepared (asyncpg prepares each once).
const MAX_LISTEN_STATEMENTS: usize = 64;

/// A cheap look at the first message before [`extended_listen`] (which allocates): a Parse
/// whose query starts like LISTEN/UNLISTEN or reads `pg_listening_channels()`, or, when the client keeps LISTEN statements, a
/// Bind or Close.
pub(super) fn may_be_extended_listen(buf: &[u8], kept: bool) -> bool {
    match buf.first() {
        Some(b'P') => {
            let Some((query, _)) = buf
                .get(5..)
                .and_then(split_cstr)
                .and_then(|(_, rest)| split_cstr(rest))
            else {
                return false;
            };
            match query
                .iter()
                .find(|b| !b.is_ascii_whitespace())
                .map(|b| b | 0x20)
            {
                Some(b'l' | b'u') => true,
                // Its own cheap rejection of other SELECTs.
                Some(b's') => listening_channels_query(query),
                _ => false,
            }
        }
        Some(b'B' | b'C' | b'D') => kept,
        _ => false,
    }
}

/// One message of an extended-protocol unit made only of LISTEN-family statements.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Step {
    /// Parse of a named (kept) or unnamed statement.
    Parse(Box<[u8]>, Local),
    /// Describe of such a statement: no parameters; rows (`pg_listening_channels()`) or none.
    DescribeStatement(bool),
    /// Bind of such a statement to the unnamed portal (results in binary format or not).
    Bind(Local, bool),
    /// Describe of the portal.
    DescribePortal,
    /// Execute of the portal.
    Execute,
    /// Close of a kept statement.
    Close(Box<[u8]>),
    /// Sync.
    Sync,
    /// Flush: the unit goes on in the client's next request (asyncpg prepares with
    /// Parse, Describe, Flush).
    Flush,
}

/// The steps of `buf` if it is whole extended-protocol units (ending in Sync or Flush) of
/// nothing but LISTEN-family statements: prepared in it or kept in `kept`, bound to the
/// unnamed portal.
pub(super) fn extended_listen(buf: &[u8], kept: &[(Box<[u8]>, Local)]) -> Option<Vec<Step>> {
    let mut steps = Vec::new();
    let mut named: Vec<(&[u8], &Local)> = kept.iter().map(|(n, c)| (&n[..], c)).collect();
    let mut parsed: Vec<(&[u8], Local)> = Vec::new();
    let mut bound: Option<Local> = None;
    let mut pos = 0;
    while pos < buf.len() {
        let h = peek_header(&buf[pos..], usize::MAX).ok()??;
        let end = pos + h.frame_len();
        let body = buf.get(pos + 5..end)?;
        let find = |name: &[u8], parsed: &[(&[u8], Local)]| {
            parsed
                .iter()
                .rev()
                .find(|(n, _)| *n == name)
                .map(|(_, c)| c.clone())
                .or_else(|| {
                    named
                        .iter()
                        .find(|(n, _)| *n == name)
                        .map(|(_, c)| (*c).clone())
                })
        };
        let step = match h.tag {
            b'P' => {
                let p = crate::protocol::extended::parse(body)?;
                let (query, types) = split_cstr(p.rest)?;
                // No parameter types declared (a LISTEN takes none).
                if types.get(..2)? != [0, 0] {
                    return None;
                }
                let cmd = match crate::sql::listen::parse(query) {
                    Some(cmd) => Local::Cmd(cmd),
                    None if listening_channels_query(query) => Local::Channels,
                    None => return None,
                };
                parsed.push((p.name, cmd.clone()));
                Step::Parse(p.name.into(), cmd)
            }
            b'D' => match target(body)? {
                (b'S', name) => Step::DescribeStatement(find(name, &parsed)? == Local::Channels),
                (_, b"") if bound.is_some() => Step::DescribePortal,
                _ => return None,
            },
            b'B' => {
                let b = crate::protocol::extended::bind(body)?;
                if !b.portal.is_empty() {
                    return None;
                }
                let cmd = find(b.statement, &parsed)?;
                bound = Some(cmd.clone());
                Step::Bind(cmd, binary_results(b.rest)?)
            }
            b'E' => match split_cstr(body)? {
                (b"", _) if bound.is_some() => Step::Execute,
                _ => return None,
            },
            b'C' => match target(body)? {
                (b'S', name) if !name.is_empty() && find(name, &parsed).is_some() => {
                    named.retain(|(n, _)| *n != name);
                    parsed.retain(|(n, _)| *n != name);
                    Step::Close(name.into())
                }
                _ => return None,
            },
            b'S' => Step::Sync,
            b'H' => Step::Flush,
            _ => return None,
        };
        steps.push(step);
        pos = end;
    }
    // Only whole units, and at least one statement of ours in them.
    let ours = steps
        .iter()
        .any(|s| matches!(s, Step::Parse(..) | Step::Bind(..) | Step::Close(_)));
    (matches!(steps.last(), Some(Step::Sync | Step::Flush)) && ours).then_some(steps)
}

/// Whether a Bind (`rest`: after its portal and statement names) of a statement with no
/// parameters asks for its result column in binary. None: it binds parameters, or is cut.
fn binary_results(rest: &[u8]) -> Option<bool> {
    let u16_at = |at: usize| {
        rest.get(at..at + 2)
            .map(|b| u16::from_be_bytes([b[0], b[1]]) as usize)
    };
    let formats = u16_at(0)?;
    let at = 2 + 2 * formats;
    if u16_at(at)? != 0 {
        return None;
    }
    let results = u16_at(at + 2)?;
    Some(results > 0 && u16_at(at + 4)? == 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::frame::test_frame as msg;

    fn cat(frames: &[Vec<u8>]) -> Vec<u8> {
        frames.concat()
    }

    #[test]
    fn extended_listen_units_are_recognised_and_others_are_not() {
        let parse = |name: &str, sql: &str| msg(b'P', format!("{name}\0{sql}\0\0\0").as_bytes());
        let bind = |stmt: &str| msg(b'B', format!("\0{stmt}\0\0\0\0\0\0\0").as_bytes());
        let exec = msg(b'E', b"\0\0\0\0\0");
        let sync = msg(b'S', b"");
        // tokio-postgres / psycopg unnamed: Parse, Bind, Describe portal, Execute, Sync.
        let unnamed = cat(&[
            parse("", "LISTEN x"),
            bind(""),
            msg(b'D', b"P\0"),
            exec.clone(),
            sync.clone(),
        ]);
        let steps = extended_listen(&unnamed, &[]).unwrap();
        assert_eq!(steps.len(), 5);
        // asyncpg: Parse, Describe, Flush; then Bind, Execute, Sync of the kept name.
        let prepare = cat(&[
            parse("st1", "UNLISTEN *"),
            msg(b'D', b"Sst1\0"),
            msg(b'H', b""),
        ]);
        assert_eq!(
            extended_listen(&prepare, &[]).unwrap().last(),
            Some(&Step::Flush)
        );
        let run = cat(&[bind("st1"), exec.clone(), sync.clone()]);
        assert!(extended_listen(&run, &[]).is_none(), "st1 is not kept yet");
        let kept = vec![(
            Box::from(&b"st1"[..]),
            Local::Cmd(ListenCommand::UnlistenAll),
        )];
        assert_eq!(
            extended_listen(&run, &kept).unwrap()[0],
            Step::Bind(Local::Cmd(ListenCommand::UnlistenAll), false)
        );
        // Anything else in the unit, a parameter type, a named portal: the normal way.
        let mixed = cat(&[
            parse("", "LISTEN x"),
            bind(""),
            exec.clone(),
            msg(b'Q', b"SELECT 1\0"),
        ]);
        assert!(extended_listen(&mixed, &[]).is_none());
        let typed = cat(&[msg(b'P', b"\0LISTEN x\0\0\x01\0\0\0\x17"), sync.clone()]);
        assert!(extended_listen(&typed, &[]).is_none());
        let portal = cat(&[
            parse("", "LISTEN x"),
            msg(b'B', b"p\0\0\0\0\0\0\0\0"),
            sync.clone(),
        ]);
        assert!(extended_listen(&portal, &[]).is_none());
        let select = cat(&[parse("", "SELECT 1"), bind(""), exec, sync]);
        assert!(extended_listen(&select, &[]).is_none());
    }

    #[test]
    fn a_pg_listening_channels_unit_is_recognised_with_its_result_format() {
        // tokio-postgres: a named statement prepared (Parse, Describe, Sync), then bound with
        // binary results (one format code, 1), executed.
        let prepare = cat(&[
            msg(b'P', b"s0\0SELECT pg_listening_channels()\0\0\0"),
            msg(b'D', b"Ss0\0"),
            msg(b'S', b""),
        ]);
        let steps = extended_listen(&prepare, &[]).unwrap();
        assert_eq!(steps[1], Step::DescribeStatement(true));
        let kept = vec![(Box::from(&b"s0"[..]), Local::Channels)];
        let run = cat(&[
            msg(b'B', b"\0s0\0\0\0\0\0\0\x01\0\x01"),
            msg(b'E', b"\0\0\0\0\0"),
            msg(b'S', b""),
        ]);
        assert_eq!(
            extended_listen(&run, &kept).unwrap()[0],
            Step::Bind(Local::Channels, true)
        );
        assert!(may_be_extended_listen(&prepare, false));
        let select = msg(b'P', b"\0SELECT abalance FROM t WHERE aid = $1\0\0\0");
        assert!(!may_be_extended_listen(&select, false));
        // Text results (no codes, or 0); a Bind with parameters is not ours.
        assert_eq!(binary_results(b"\0\0\0\0\0\0"), Some(false));
        assert_eq!(binary_results(b"\0\0\0\0\0\x01\0\0"), Some(false));
        assert_eq!(binary_results(b"\0\0\0\x01\0\0\0\x01x\0\0"), None);
    }
}
