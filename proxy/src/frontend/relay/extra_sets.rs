//! Following a client's SET/RESET of `track_extra_params` instead of pinning it: which
//! statements qualify (one statement, alone in its unit, outside a transaction block), in the
//! simple and the extended protocol. What a qualifying statement changes is applied once it
//! completes (`responses`).

use crate::backend::params::ExtraUpdate;
use crate::protocol::extended;
use crate::protocol::frame::peek_header;
use crate::sql::session_commands::first_word;
use crate::sql::session_commands::{param_command, session_command, ParamCommand, SessionCommand};

use super::responses::Expectations;
use super::rewrite::ClientSide;

/// A Query that is exactly one SET/RESET of extra parameters (or RESET ALL, DISCARD ALL) with
/// nothing of the client's before it (`unit_start`, nothing in flight) and outside a
/// transaction block: its effect is final once it completes, so pgtier can follow it instead
/// of pinning the client.
pub(super) fn extra_update(
    sql: &[u8],
    client: &ClientSide<'_>,
    expect: &Expectations,
    unit_start: bool,
) -> Option<ExtraUpdate> {
    // The client's unreported startup values are followed through RESET ALL and DISCARD ALL
    // like configured extras (a SET or RESET of one of them by name still pins: only
    // `track_extra_params` names are followed).
    if (client.extras.is_empty() && !client.startup.1)
        || client.in_transaction
        || client.pinned.is_some()
        || !unit_start
        || !expect.only_own()
    {
        return None;
    }
    let first = first_word(sql);
    if ![&b"set"[..], b"reset", b"discard"]
        .iter()
        .any(|v| first.eq_ignore_ascii_case(v))
    {
        return None;
    }
    if session_command(sql) == Some(SessionCommand::DiscardAll) {
        return Some(ExtraUpdate::DiscardAll);
    }
    let name = |n: &[u8]| client.extras.find(std::str::from_utf8(n).ok()?);
    match param_command(sql, client.strings)? {
        ParamCommand::Set(n, text) => Some(ExtraUpdate::Set(
            name(n)?,
            std::str::from_utf8(text).ok()?.into(),
        )),
        ParamCommand::Reset(n) => Some(ExtraUpdate::Reset(name(n)?)),
        ParamCommand::ResetAll => Some(ExtraUpdate::ResetAll),
    }
}

/// The extended-protocol form of [`extra_update`]: an unnamed Parse (body after the name `rest`)
/// of one SET/RESET of extra parameters, followed in the same unit by exactly one Bind of it,
/// an optional Describe of the portal, one Execute and Sync (`after`), which is what JDBC and
/// psycopg send for a plain statement. The SET is then the whole implicit transaction, final
/// once its Execute completes. DISCARD ALL is left to the pinning check.
pub(super) fn followed_set(
    rest: &[u8],
    after: &[u8],
    client: &ClientSide<'_>,
    expect: &Expectations,
) -> Option<ExtraUpdate> {
    if client.extras.is_empty() && !client.startup.1 {
        return None;
    }
    let (sql, _) = extended::split_cstr(rest)?;
    // Every Parse of such a client comes here: its first word rejects all but SET/RESET
    // before the lexer or the rest of the unit is looked at.
    let first = first_word(sql);
    if !(first.eq_ignore_ascii_case(b"set") || first.eq_ignore_ascii_case(b"reset")) {
        return None;
    }
    if session_command(sql).is_some() || !executes_once(after) {
        return None;
    }
    extra_update(sql, client, expect, true)
}

/// Whether `buf` starts with Bind (of the unnamed statement), an optional Describe of its
/// portal, Execute of that portal and Sync.
fn executes_once(buf: &[u8]) -> bool {
    let mut pos = 0;
    let mut next = || {
        let h = peek_header(&buf[pos..], usize::MAX).ok()??;
        let body = buf.get(pos + 5..pos + h.frame_len())?;
        pos += h.frame_len();
        Some((h.tag, body))
    };
    let Some((b'B', body)) = next() else {
        return false;
    };
    let Some(bind) = extended::bind(body).filter(|b| b.statement.is_empty()) else {
        return false;
    };
    let mut msg = next();
    if let Some((b'D', body)) = msg {
        if extended::target(body) != Some((b'P', bind.portal)) {
            return false;
        }
        msg = next();
    }
    let Some((b'E', body)) = msg else {
        return false;
    };
    extended::split_cstr(body).is_some_and(|(portal, _)| portal == bind.portal)
        && matches!(next(), Some((b'S', _)))
}
