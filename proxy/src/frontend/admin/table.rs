//! Result sets and errors of the admin console.

use bytes::BytesMut;

use crate::protocol::messages::{command_complete, data_row, row_description};
use crate::protocol::SqlState;

/// A command's error: SQLSTATE and message.
pub type Failure = (SqlState, String);

pub(super) fn unsupported(command: &str) -> Failure {
    (
        SqlState::FEATURE_NOT_SUPPORTED,
        format!(
            "pgtier admin console: \"{}\" is not supported (see SHOW HELP)",
            command.chars().take(60).collect::<String>()
        ),
    )
}

pub(super) fn split(s: &str) -> (&str, &str) {
    let s = s.trim_start();
    let end = s.find(char::is_whitespace).unwrap_or(s.len());
    (&s[..end], s[end..].trim_start())
}

/// A result set of text columns.
pub(super) fn table(
    columns: &[&str],
    rows: impl IntoIterator<Item = Vec<String>>,
    tag: &str,
) -> BytesMut {
    let mut out = BytesMut::new();
    row_description(&mut out, columns);
    for row in rows {
        let cells: Vec<&str> = row.iter().map(String::as_str).collect();
        data_row(&mut out, &cells);
    }
    command_complete(&mut out, tag);
    out
}
