//! Answers to statements addressed to pgtier (`SHOW pgtier.causal_lsn`, `SET pgtier.min_lsn`,
//! `SET pgtier.route`...), given without a server, like Postgres would answer a SHOW or SET.

use bytes::BytesMut;

use crate::cluster::Lsn;
use crate::protocol::messages::{
    command_complete, data_row, error_response, ready_for_query, row_description, Severity,
    TxStatus,
};
use crate::protocol::SqlState;
use crate::router::commands::{Command, CommandError, Var};
use crate::router::route::{ClientRouting, RouteMode};

/// Applies `cmd` to the client's routing state and writes the reply (ending in ReadyForQuery).
pub(crate) fn answer(
    cmd: Result<Command, CommandError>,
    routing: &mut ClientRouting,
    out: &mut BytesMut,
) {
    match cmd {
        Ok(Command::Show(var)) => {
            let value = match var {
                Var::CausalLsn => routing.causal.to_string(),
                Var::MinLsn => routing.min_lsn.to_string(),
                Var::Route => routing.mode.as_str().to_owned(),
            };
            row_description(out, &[var.name()]);
            data_row(out, &[&value]);
            command_complete(out, "SHOW");
        }
        Ok(Command::SetMinLsn(lsn)) => {
            routing.min_lsn = lsn;
            command_complete(out, "SET");
        }
        Ok(Command::SetRoute(mode)) => {
            routing.mode = mode;
            command_complete(out, "SET");
        }
        Ok(Command::Reset(var)) => {
            match var {
                Var::MinLsn => routing.min_lsn = Lsn::ZERO,
                Var::Route => routing.mode = RouteMode::Auto,
                Var::CausalLsn => {}
            }
            command_complete(out, "RESET");
        }
        Err(e) => error_response(out, Severity::Error, SqlState(e.code), &e.message),
    }
    ready_for_query(out, TxStatus::Idle);
}
