//! SQLSTATE codes pgtier itself raises.

use std::fmt;

/// A five-character SQLSTATE error code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SqlState(pub &'static str);

impl SqlState {
    /// 08P01: the peer broke the wire protocol.
    pub const PROTOCOL_VIOLATION: SqlState = SqlState("08P01");
    /// 08006: the server connection failed.
    pub const CONNECTION_FAILURE: SqlState = SqlState("08006");
    /// 08001: pgtier could not establish a server connection.
    pub const CANNOT_CONNECT: SqlState = SqlState("08001");
    /// 0A000: feature not supported (e.g. protocol major version).
    pub const FEATURE_NOT_SUPPORTED: SqlState = SqlState("0A000");
    /// 28P01: wrong password.
    pub const INVALID_PASSWORD: SqlState = SqlState("28P01");
    /// 28000: authorization rejected.
    pub const INVALID_AUTHORIZATION: SqlState = SqlState("28000");
    /// 42601: syntax error (admin console).
    pub const SYNTAX_ERROR: SqlState = SqlState("42601");
    /// 42704: no such object (admin console: unknown node).
    pub const UNDEFINED_OBJECT: SqlState = SqlState("42704");
    /// F0000: config file error (admin RELOAD rejected the file).
    pub const CONFIG_FILE_ERROR: SqlState = SqlState("F0000");
    /// 3D000: unknown database.
    pub const INVALID_CATALOG_NAME: SqlState = SqlState("3D000");
    /// 53300: too many connections (clients or pool exhausted).
    pub const TOO_MANY_CONNECTIONS: SqlState = SqlState("53300");
    /// 53200: pgtier's memory for a kind of state is used up (all clients' prepared statements).
    pub const OUT_OF_MEMORY: SqlState = SqlState("53200");
    /// 54000: a message exceeded `max_message_size`, or a client its prepared-statement limits.
    pub const PROGRAM_LIMIT_EXCEEDED: SqlState = SqlState("54000");
    /// 42P05: a prepared statement of that name already exists.
    pub const DUPLICATE_PREPARED_STATEMENT: SqlState = SqlState("42P05");
    /// 22023: a session parameter value the server rejects.
    pub const INVALID_PARAMETER_VALUE: SqlState = SqlState("22023");
    /// 26000: no such prepared statement.
    pub const INVALID_SQL_STATEMENT_NAME: SqlState = SqlState("26000");
    /// 57P01: pgtier is shutting down.
    pub const ADMIN_SHUTDOWN: SqlState = SqlState("57P01");
    /// 57P03: pgtier is shutting down and takes no new clients.
    pub const CANNOT_CONNECT_NOW: SqlState = SqlState("57P03");
    /// 57P05: `client_idle_timeout` expired.
    pub const IDLE_SESSION_TIMEOUT: SqlState = SqlState("57P05");
    /// 25P03: `idle_transaction_timeout` expired.
    pub const IDLE_IN_TRANSACTION_TIMEOUT: SqlState = SqlState("25P03");
    /// 25P04: `transaction_timeout` expired (Postgres 17 uses it for its own).
    pub const TRANSACTION_TIMEOUT: SqlState = SqlState("25P04");
    /// 57P03 as well: no primary is known for a write (after `primary_wait_timeout`).
    pub const NO_PRIMARY: SqlState = SqlState("57P03");
    /// XX000: internal error (a bug in pgtier ended the client's task).
    pub const INTERNAL_ERROR: SqlState = SqlState("XX000");
    /// 57014: canceled (login timeout).
    pub const QUERY_CANCELED: SqlState = SqlState("57014");
    /// 55P02: a parameter that cannot be changed in a running session (e.g. log_connections).
    pub const CANT_CHANGE_RUNTIME_PARAM: SqlState = SqlState("55P02");
    /// 42501: a parameter the server's user may not set.
    pub const INSUFFICIENT_PRIVILEGE: SqlState = SqlState("42501");
    /// 25P02: a statement in a transaction block that an error aborted.
    pub const IN_FAILED_SQL_TRANSACTION: SqlState = SqlState("25P02");

    /// Why a server refused a client's session parameter (`code` from its error), as one of
    /// these; other codes read as 22023.
    pub fn of_parameter_error(code: &str) -> SqlState {
        [
            SqlState::CANT_CHANGE_RUNTIME_PARAM,
            SqlState::INSUFFICIENT_PRIVILEGE,
            SqlState::UNDEFINED_OBJECT,
        ]
        .into_iter()
        .find(|s| s.0 == code)
        .unwrap_or(SqlState::INVALID_PARAMETER_VALUE)
    }
}

impl fmt::Display for SqlState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}
