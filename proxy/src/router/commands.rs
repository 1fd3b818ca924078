//! Statements addressed to pgtier itself rather than Postgres: `SHOW pgtier.causal_lsn`,
//! `SET pgtier.min_lsn = '…'`, `SET pgtier.route = 'primary' | 'replica' | 'auto'`, and
//! `SHOW`/`RESET` of those. pgtier answers them; they never reach a server.

use super::route::RouteMode;
use crate::cluster::Lsn;
use crate::sql::session_commands::first_word;

/// A pgtier session variable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Var {
    /// `pgtier.causal_lsn` (read-only): the client's own causal token.
    CausalLsn,
    /// `pgtier.min_lsn`: a token reads must respect.
    MinLsn,
    /// `pgtier.route`: routing override.
    Route,
}

impl Var {
    /// The name as clients write it.
    pub fn name(self) -> &'static str {
        match self {
            Var::CausalLsn => "pgtier.causal_lsn",
            Var::MinLsn => "pgtier.min_lsn",
            Var::Route => "pgtier.route",
        }
    }
}

/// A statement pgtier answers itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `SHOW pgtier.x`.
    Show(Var),
    /// `SET pgtier.min_lsn = '…'`.
    SetMinLsn(Lsn),
    /// `SET pgtier.route = '…'`.
    SetRoute(RouteMode),
    /// `RESET pgtier.x`.
    Reset(Var),
}

/// A pgtier statement that cannot be applied: (SQLSTATE class 22/42 message).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandError {
    /// SQLSTATE.
    pub code: &'static str,
    /// Message for the client.
    pub message: String,
}

/// Recognises a simple-protocol query that is exactly one pgtier statement.
pub fn command(sql: &[u8]) -> Option<Result<Command, CommandError>> {
    let first = first_word(sql);
    if ![&b"show"[..], b"set", b"reset"]
        .iter()
        .any(|v| first.eq_ignore_ascii_case(v))
    {
        return None;
    }
    let text = std::str::from_utf8(sql).ok()?;
    let text = skip_comments(text).trim_end();
    let text = text.strip_suffix(';').unwrap_or(text).trim_end();
    let (verb, rest) = split_word(text);
    // Runs on every simple Query: decide without allocating.
    let verb = ["show", "set", "reset"]
        .into_iter()
        .find(|v| verb.eq_ignore_ascii_case(v))?;
    let (mut name, mut rest) = split_name(rest);
    if verb == "set" && name.eq_ignore_ascii_case("session") {
        (name, rest) = split_name(rest);
    }
    name.get(..7)
        .filter(|p| p.eq_ignore_ascii_case("pgtier."))?;
    let var_name = name[7..].to_ascii_lowercase();
    let var = match var_name.as_str() {
        "causal_lsn" => Var::CausalLsn,
        "min_lsn" => Var::MinLsn,
        "route" => Var::Route,
        _ => {
            return Some(Err(CommandError {
                code: "42704",
                message: format!(
                    "unrecognized configuration parameter \"{name}\" (pgtier knows pgtier.causal_lsn, pgtier.min_lsn, pgtier.route)"
                ),
            }))
        }
    };
    match verb {
        "show" if rest.is_empty() => Some(Ok(Command::Show(var))),
        "reset" if rest.is_empty() => Some(Ok(Command::Reset(var))),
        "set" => Some(set(var, rest)),
        _ => Some(Err(syntax(text))),
    }
}

fn set(var: Var, rest: &str) -> Result<Command, CommandError> {
    let value = rest
        .strip_prefix('=')
        .or_else(|| {
            let (w, r) = split_word(rest);
            w.eq_ignore_ascii_case("to").then_some(r)
        })
        .map(str::trim)
        .ok_or_else(|| syntax(rest))?;
    let value = unquote(value).ok_or_else(|| syntax(value))?;
    let bad = |message: String| CommandError {
        code: "22023",
        message,
    };
    match var {
        Var::CausalLsn => Err(CommandError {
            code: "55P02",
            message: "parameter \"pgtier.causal_lsn\" cannot be changed (it is pgtier's record of this session's last write; use pgtier.min_lsn)".into(),
        }),
        Var::MinLsn => value
            .parse::<Lsn>()
            .map(Command::SetMinLsn)
            .map_err(|e| bad(format!("invalid value for parameter \"pgtier.min_lsn\": {e}"))),
        Var::Route => match value.to_ascii_lowercase().as_str() {
            "primary" => Ok(Command::SetRoute(RouteMode::Primary)),
            "replica" => Ok(Command::SetRoute(RouteMode::Replica)),
            "auto" | "default" => Ok(Command::SetRoute(RouteMode::Auto)),
            _ => Err(bad(format!(
                "invalid value for parameter \"pgtier.route\": \"{value}\" (expected primary, replica or auto)"
            ))),
        },
    }
}

fn syntax(near: &str) -> CommandError {
    CommandError {
        code: "42601",
        message: format!(
            "syntax error in pgtier statement near \"{}\"",
            near.chars().take(40).collect::<String>()
        ),
    }
}

/// `'x'` (doubled quotes inside), or a bare word.
fn unquote(v: &str) -> Option<String> {
    if let Some(inner) = v.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')) {
        if inner.replace("''", "").contains('\'') {
            return None;
        }
        return Some(inner.replace("''", "'"));
    }
    (!v.is_empty() && !v.contains(char::is_whitespace)).then(|| v.to_owned())
}

fn skip_comments(mut s: &str) -> &str {
    loop {
        s = s.trim_start();
        if let Some(rest) = s.strip_prefix("--") {
            s = rest.find('\n').map_or("", |i| &rest[i + 1..]);
        } else if let Some(rest) = s.strip_prefix("/*") {
            s = rest.find("*/").map_or("", |i| &rest[i + 2..]);
        } else {
            return s;
        }
    }
}

fn split_word(s: &str) -> (&str, &str) {
    let s = s.trim_start();
    let end = s
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(s.len());
    (&s[..end], s[end..].trim_start())
}

/// A possibly dotted name (`pgtier.route`).
fn split_name(s: &str) -> (&str, &str) {
    let s = s.trim_start();
    let end = s
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '.'))
        .unwrap_or(s.len());
    (&s[..end], s[end..].trim_start())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(sql: &str) -> Command {
        command(sql.as_bytes()).unwrap().unwrap()
    }

    fn err(sql: &str) -> &'static str {
        command(sql.as_bytes()).unwrap().unwrap_err().code
    }

    #[test]
    fn recognises_pgtier_statements() {
        assert_eq!(ok("SHOW pgtier.causal_lsn"), Command::Show(Var::CausalLsn));
        assert_eq!(ok("  show PGTIER.ROUTE ; "), Command::Show(Var::Route));
        assert_eq!(
            ok("SET pgtier.min_lsn = '16/B374D848'"),
            Command::SetMinLsn(Lsn(0x16_B374_D848))
        );
        assert_eq!(
            ok("/* app */ set session pgtier.route to replica;"),
            Command::SetRoute(RouteMode::Replica)
        );
        assert_eq!(ok("RESET pgtier.min_lsn"), Command::Reset(Var::MinLsn));
    }

    #[test]
    fn rejects_bad_values_with_sqlstates() {
        assert_eq!(err("SET pgtier.min_lsn = 'nope'"), "22023");
        assert_eq!(err("SET pgtier.route = 'sideways'"), "22023");
        assert_eq!(err("SET pgtier.causal_lsn = '0/1'"), "55P02");
        assert_eq!(err("SHOW pgtier.nothing"), "42704");
        assert_eq!(err("SET pgtier.route"), "42601");
    }

    #[test]
    fn leaves_other_statements_alone() {
        for sql in [
            "SHOW TimeZone",
            "SET search_path = app",
            "SELECT 'SHOW pgtier.route'",
        ] {
            assert!(command(sql.as_bytes()).is_none(), "{sql}");
        }
    }
}
