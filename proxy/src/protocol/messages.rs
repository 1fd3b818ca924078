//! Builders for the backend messages pgtier itself sends to clients. Everything else is relayed
//! byte for byte.

use bytes::{BufMut, BytesMut};

use super::SqlState;

/// Severity of an ErrorResponse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    /// The statement failed; the session goes on.
    Error,
    /// The session ends after this message.
    Fatal,
}

impl Severity {
    fn as_str(self) -> &'static str {
        match self {
            Severity::Error => "ERROR",
            Severity::Fatal => "FATAL",
        }
    }
}

/// Transaction status carried by ReadyForQuery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxStatus {
    /// 'I': not in a transaction.
    Idle,
    /// 'T': inside a transaction block.
    InTransaction,
    /// 'E': inside a failed transaction block.
    Failed,
}

impl TxStatus {
    /// Decodes the status byte; unknown bytes are treated as "in transaction" (never released).
    pub fn from_byte(b: u8) -> TxStatus {
        match b {
            b'I' => TxStatus::Idle,
            b'E' => TxStatus::Failed,
            _ => TxStatus::InTransaction,
        }
    }

    fn as_byte(self) -> u8 {
        match self {
            TxStatus::Idle => b'I',
            TxStatus::InTransaction => b'T',
            TxStatus::Failed => b'E',
        }
    }
}

/// Writes a frame: tag, length placeholder, body from `f`, then patches the length.
fn frame(buf: &mut BytesMut, tag: u8, f: impl FnOnce(&mut BytesMut)) {
    buf.put_u8(tag);
    let start = buf.len();
    buf.put_i32(0);
    f(buf);
    let len = (buf.len() - start) as i32;
    buf[start..start + 4].copy_from_slice(&len.to_be_bytes());
}

fn put_cstr(buf: &mut BytesMut, s: &str) {
    buf.put_slice(s.as_bytes());
    buf.put_u8(0);
}

/// ErrorResponse with severity, SQLSTATE and message.
pub fn error_response(buf: &mut BytesMut, severity: Severity, code: SqlState, message: &str) {
    frame(buf, b'E', |b| {
        b.put_u8(b'S');
        put_cstr(b, severity.as_str());
        b.put_u8(b'V');
        put_cstr(b, severity.as_str());
        b.put_u8(b'C');
        put_cstr(b, code.0);
        b.put_u8(b'M');
        put_cstr(b, message);
        b.put_u8(0);
    });
}

/// NoticeResponse (severity NOTICE) with SQLSTATE and message.
pub fn notice_response(buf: &mut BytesMut, code: SqlState, message: &str) {
    frame(buf, b'N', |b| {
        b.put_u8(b'S');
        put_cstr(b, "NOTICE");
        b.put_u8(b'V');
        put_cstr(b, "NOTICE");
        b.put_u8(b'C');
        put_cstr(b, code.0);
        b.put_u8(b'M');
        put_cstr(b, message);
        b.put_u8(0);
    });
}

/// RowDescription of text columns.
pub fn row_description(buf: &mut BytesMut, columns: &[&str]) {
    frame(buf, b'T', |b| {
        b.put_u16(columns.len() as u16);
        for c in columns {
            put_cstr(b, c);
            b.put_u32(0); // table oid
            b.put_i16(0); // column number
            b.put_u32(25); // text
            b.put_i16(-1); // variable length
            b.put_i32(-1); // no type modifier
            b.put_i16(0); // text format
        }
    });
}

/// DataRow of text values.
pub fn data_row(buf: &mut BytesMut, values: &[&str]) {
    frame(buf, b'D', |b| {
        b.put_u16(values.len() as u16);
        for v in values {
            b.put_i32(v.len() as i32);
            b.put_slice(v.as_bytes());
        }
    });
}

/// CommandComplete with a tag such as `SET` or `SHOW`.
pub fn command_complete(buf: &mut BytesMut, tag: &str) {
    frame(buf, b'C', |b| put_cstr(b, tag));
}

/// AuthenticationOk.
pub fn auth_ok(buf: &mut BytesMut) {
    frame(buf, b'R', |b| b.put_i32(0));
}

/// AuthenticationMD5Password with its salt.
pub fn auth_md5(buf: &mut BytesMut, salt: [u8; 4]) {
    frame(buf, b'R', |b| {
        b.put_i32(5);
        b.put_slice(&salt);
    });
}

/// AuthenticationSASL offering the given mechanisms.
pub fn auth_sasl(buf: &mut BytesMut, mechanisms: &[&str]) {
    frame(buf, b'R', |b| {
        b.put_i32(10);
        for m in mechanisms {
            put_cstr(b, m);
        }
        b.put_u8(0);
    });
}

/// AuthenticationSASLContinue.
pub fn auth_sasl_continue(buf: &mut BytesMut, data: &[u8]) {
    frame(buf, b'R', |b| {
        b.put_i32(11);
        b.put_slice(data);
    });
}

/// AuthenticationSASLFinal.
pub fn auth_sasl_final(buf: &mut BytesMut, data: &[u8]) {
    frame(buf, b'R', |b| {
        b.put_i32(12);
        b.put_slice(data);
    });
}

/// ParameterStatus.
pub fn parameter_status(buf: &mut BytesMut, name: &str, value: &str) {
    frame(buf, b'S', |b| {
        put_cstr(b, name);
        put_cstr(b, value);
    });
}

/// BackendKeyData.
pub fn backend_key_data(buf: &mut BytesMut, pid: i32, secret: i32) {
    frame(buf, b'K', |b| {
        b.put_i32(pid);
        b.put_i32(secret);
    });
}

/// ReadyForQuery.
pub fn ready_for_query(buf: &mut BytesMut, status: TxStatus) {
    frame(buf, b'Z', |b| b.put_u8(status.as_byte()));
}

/// NegotiateProtocolVersion: newest supported minor version and the options not recognized.
pub fn negotiate_protocol_version(buf: &mut BytesMut, minor: i32, unrecognized: &[&str]) {
    frame(buf, b'v', |b| {
        b.put_i32(minor);
        b.put_i32(unrecognized.len() as i32);
        for o in unrecognized {
            put_cstr(b, o);
        }
    });
}

/// Whether a batch of whole backend messages announces the end of the session: an
/// ErrorResponse of severity FATAL or PANIC, or the warning a server sends as it is shut down
/// immediately or crashes (NoticeResponse 57P01 / 57P02).
pub fn ends_session(batch: &[u8]) -> bool {
    let mut pos = 0;
    while batch.len() - pos >= 5 {
        let len = u32::from_be_bytes([
            batch[pos + 1],
            batch[pos + 2],
            batch[pos + 3],
            batch[pos + 4],
        ]) as usize;
        let end = (pos + 1 + len).min(batch.len());
        let body = batch.get(pos + 5..end).unwrap_or(&[]);
        match batch[pos] {
            b'E' if matches!(error_severity(body), Some("FATAL" | "PANIC")) => return true,
            b'N' if matches!(error_fields(body).0, Some("57P01" | "57P02")) => return true,
            _ => {}
        }
        if len < 4 {
            return false;
        }
        pos = end;
    }
    false
}

/// The SQLSTATE of the first ErrorResponse of severity FATAL or PANIC in a batch of whole
/// backend messages.
pub fn fatal_sqlstate(batch: &[u8]) -> Option<&str> {
    let mut rest = batch;
    while let Some(len) = rest.get(1..5) {
        let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
        let end = len.checked_add(1)?.min(rest.len());
        let body = rest.get(5..end).unwrap_or(&[]);
        if rest[0] == b'E' && matches!(error_severity(body), Some("FATAL" | "PANIC")) {
            return error_fields(body).0;
        }
        if len < 4 {
            return None;
        }
        rest = &rest[end..];
    }
    None
}

/// The severity of an ErrorResponse body (the non-localized `V` field, else `S`).
fn error_severity(body: &[u8]) -> Option<&str> {
    let mut severity = None;
    let mut rest = body;
    while let Some((&field, tail)) = rest.split_first() {
        if field == 0 {
            break;
        }
        let nul = super::find_nul(tail)?;
        let value = std::str::from_utf8(&tail[..nul]).ok();
        match field {
            b'V' => return value,
            b'S' => severity = value,
            _ => {}
        }
        rest = &tail[nul + 1..];
    }
    severity
}

/// Reads the SQLSTATE and message fields out of an ErrorResponse body (for logs).
pub fn error_fields(body: &[u8]) -> (Option<&str>, Option<&str>) {
    let (mut code, mut message) = (None, None);
    let mut rest = body;
    while let Some((&field, tail)) = rest.split_first() {
        if field == 0 {
            break;
        }
        let Some(nul) = super::find_nul(tail) else {
            break;
        };
        let value = std::str::from_utf8(&tail[..nul]).ok();
        match field {
            b'C' => code = value,
            b'M' => message = value,
            _ => {}
        }
        rest = &tail[nul + 1..];
    }
    (code, message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fatal_errors_are_spotted_in_a_batch() {
        let mut b = BytesMut::new();
        command_complete(&mut b, "SELECT 1");
        error_response(&mut b, Severity::Error, SqlState("42601"), "syntax");
        assert!(!ends_session(&b));
        let mut notice = BytesMut::new();
        error_response(
            &mut notice,
            Severity::Error,
            SqlState("57P01"),
            "immediate shutdown",
        );
        notice[0] = b'N';
        assert!(ends_session(&notice));
        error_response(
            &mut b,
            Severity::Fatal,
            SqlState("57P01"),
            "terminating connection due to immediate shutdown command",
        );
        assert!(ends_session(&b));
        assert!(!ends_session(b"E\0\0"));
        assert_eq!(fatal_sqlstate(&b), Some("57P01"));
        assert_eq!(fatal_sqlstate(&notice), None);
        assert_eq!(fatal_sqlstate(b"E\0\0\0\x02"), None);
        assert_eq!(fatal_sqlstate(b"E\xff\xff\xff\xffS"), None);
    }

    #[test]
    fn error_response_round_trips_fields() {
        let mut buf = BytesMut::new();
        error_response(&mut buf, Severity::Fatal, SqlState("28P01"), "bad");
        assert_eq!(buf[0], b'E');
        let len = i32::from_be_bytes(buf[1..5].try_into().unwrap()) as usize;
        assert_eq!(len + 1, buf.len());
        assert_eq!(error_fields(&buf[5..]), (Some("28P01"), Some("bad")));
    }

    #[test]
    fn ready_for_query_is_six_bytes() {
        let mut buf = BytesMut::new();
        ready_for_query(&mut buf, TxStatus::Idle);
        assert_eq!(&buf[..], b"Z\0\0\0\x05I");
    }
}
