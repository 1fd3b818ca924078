//! The deep check: parse the whole text with sqlparser (Postgres dialect) and walk every
//! statement. A statement is read-only only if it is one of the known read-only kinds and,
//! for queries, has no locking clause, no writable CTE or other nested DML, no SELECT INTO
//! and calls no function that may write (see [`FunctionTable`]). EXPLAIN without ANALYZE is
//! read-only whatever it explains. Any parse failure is a write.
//!
//! Calls of functions `pg_proc` lists as VOLATILE (and that are not known writers) make a text
//! a write with [`Reason::VolatileFunction`] only when nothing else in it writes: the walk goes
//! on after such a call, and any other reason found wins.
//!
//! sqlparser limits its recursion (depth 50), so deeply nested input is a parse failure, not
//! a stack overflow. But it builds a chain of infix operators (`1+1+1...`, `a AND b AND
//! ...`, `x::int::int...`, `SELECT 1 UNION SELECT 1 ...`) in a loop that this limit does not
//! see, into a tree as deep as the chain is long, which the walk and the drop then recurse
//! through: a text with more than [`MAX_OPERATORS`] operators is not parsed (a write, too
//! deep to analyse), which bounds every tree's depth.

use std::ops::ControlFlow;
use std::panic::{catch_unwind, AssertUnwindSafe};

use sqlparser::ast::{
    visit_relations, Expr, ObjectName, ObjectNamePart, Query, Select, Statement, TableFactor,
    TransactionAccessMode, TransactionMode, Visit, Visitor,
};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::{Parser, ParserError};

use super::functions::{Call, FunctionTable};
use super::{Class, Reason};

/// The deep check's result for a whole text.
#[derive(Debug)]
pub(super) struct Deep {
    pub class: Class,
    pub reason: Reason,
    pub tables: Vec<String>,
}

impl Deep {
    fn write(reason: Reason, tables: Vec<String>) -> Deep {
        Deep {
            class: Class::Write,
            reason,
            tables,
        }
    }
}

/// Operators a text may have for the deep check to parse it (see the module doc). 1,000 keeps
/// a debug build's walk and drop well within a 2 MiB thread stack (tokio's workers'); a read
/// with more (a generated `a = 1 OR a = 2 OR ...` of 500 terms) goes to the primary.
pub(super) const MAX_OPERATORS: usize = 1_000;

/// Parses and checks `sql` (all its statements).
pub(super) fn check(sql: &str, funcs: &FunctionTable) -> Deep {
    if crate::sql::lexer::operators_over(sql.as_bytes(), MAX_OPERATORS) {
        return Deep::write(Reason::TooDeep, Vec::new());
    }
    let dialect = PostgreSqlDialect {};
    let parsed = catch_unwind(AssertUnwindSafe(|| Parser::parse_sql(&dialect, sql)));
    let statements = match parsed {
        Ok(Ok(s)) => s,
        Ok(Err(ParserError::RecursionLimitExceeded)) => {
            return Deep::write(Reason::TooDeep, Vec::new())
        }
        Ok(Err(_)) | Err(_) => return Deep::write(Reason::ParseError, Vec::new()),
    };
    let mut tables = Vec::new();
    // The first query-like statement names a read (`BEGIN READ ONLY; SELECT ...; COMMIT`
    // is a "read-only query"), else the first statement.
    let (mut first, mut main) = (None, None);
    let mut volatile = false;
    for st in &statements {
        match statement(st, funcs, &mut tables) {
            Err(Reason::VolatileFunction) => volatile = true,
            Err(reason) => return Deep::write(reason, dedup(tables)),
            Ok((reason, is_main)) => {
                first.get_or_insert(reason);
                if is_main {
                    main.get_or_insert(reason);
                }
            }
        }
    }
    if volatile {
        return Deep::write(Reason::VolatileFunction, dedup(tables));
    }
    Deep {
        class: Class::Read,
        reason: main.or(first).unwrap_or(Reason::Empty),
        tables: dedup(tables),
    }
}

fn dedup(mut tables: Vec<String>) -> Vec<String> {
    let mut seen = std::collections::HashSet::new();
    tables.retain(|t| seen.insert(t.clone()));
    tables
}

/// Ok((reason, is the statement query-like)) for a read; Err(reason) for a write.
fn statement(
    st: &Statement,
    funcs: &FunctionTable,
    tables: &mut Vec<String>,
) -> Result<(Reason, bool), Reason> {
    use sqlparser::ast::{CopySource, CopyTarget};
    let ok = |r| Ok((r, false));
    match st {
        Statement::Query(q) => query(q, funcs, tables).map(|()| (Reason::ReadOnly, true)),
        Statement::Explain {
            analyze,
            options,
            statement,
            ..
        } => {
            let analyzing = *analyze || options.iter().flatten().any(is_analyze_option);
            if !analyzing {
                let _ = visit_relations(statement.as_ref(), |n: &ObjectName| {
                    tables.push(object_name(n));
                    ControlFlow::<()>::Continue(())
                });
                return Ok((Reason::Explain, true));
            }
            match statement.as_ref() {
                Statement::Query(q) => query(q, funcs, tables)
                    .map(|()| (Reason::ReadOnly, true))
                    .map_err(|r| match r {
                        Reason::VolatileFunction => r,
                        _ => Reason::ExplainAnalyze,
                    }),
                _ => Err(Reason::ExplainAnalyze),
            }
        }
        Statement::Declare { stmts, .. } => {
            let mut volatile = false;
            for d in stmts {
                match &d.for_query {
                    Some(q) => match query(q, funcs, tables) {
                        Err(Reason::VolatileFunction) => volatile = true,
                        r => r?,
                    },
                    None => return Err(Reason::NotProvablyReadOnly),
                }
            }
            if volatile {
                return Err(Reason::VolatileFunction);
            }
            Ok((Reason::ReadOnly, true))
        }
        Statement::Copy {
            source, to, target, ..
        } => {
            if !*to {
                return Err(Reason::CopyFrom);
            }
            if !matches!(target, CopyTarget::Stdout) {
                return Err(Reason::CopyToServer);
            }
            match source {
                CopySource::Table { table_name, .. } => tables.push(object_name(table_name)),
                CopySource::Query(q) => query(q, funcs, tables)?,
            }
            Ok((Reason::CopyTo, true))
        }
        Statement::StartTransaction {
            modes, statements, ..
        } => {
            let ro = modes.iter().any(|m| {
                matches!(
                    m,
                    TransactionMode::AccessMode(TransactionAccessMode::ReadOnly)
                )
            });
            let rw = modes.iter().any(|m| {
                matches!(
                    m,
                    TransactionMode::AccessMode(TransactionAccessMode::ReadWrite)
                )
            });
            if ro && !rw && statements.is_empty() {
                ok(Reason::ReadOnlyTransaction)
            } else {
                Err(Reason::TransactionStart)
            }
        }
        Statement::Commit { .. }
        | Statement::Rollback { .. }
        | Statement::Savepoint { .. }
        | Statement::ReleaseSavepoint { .. } => ok(Reason::TransactionControl),
        Statement::Set(_)
        | Statement::Reset(_)
        | Statement::ShowVariable { .. }
        | Statement::ShowVariables { .. }
        | Statement::Deallocate { .. }
        | Statement::Discard { .. } => ok(Reason::SessionCommand),
        Statement::Fetch { .. } | Statement::Close { .. } => ok(Reason::CursorOperation),
        Statement::Insert(_)
        | Statement::Update(_)
        | Statement::Delete(_)
        | Statement::Merge(_)
        | Statement::Truncate(_) => Err(Reason::WriteStatement),
        _ => Err(Reason::NotProvablyReadOnly),
    }
}

/// `EXPLAIN (ANALYZE [true|on|1])`: any ANALYZE option not explicitly turned off.
fn is_analyze_option(o: &sqlparser::ast::UtilityOption) -> bool {
    let name = o.name.value.to_ascii_lowercase();
    if name != "analyze" && name != "analyse" {
        return false;
    }
    match &o.arg {
        None => true,
        Some(arg) => {
            let a = arg.to_string().to_ascii_lowercase();
            !matches!(a.trim_matches('\''), "false" | "off" | "0" | "no")
        }
    }
}

/// Checks one query (with everything nested in it); collects its tables.
fn query(q: &Query, funcs: &FunctionTable, tables: &mut Vec<String>) -> Result<(), Reason> {
    let mut c = Checker {
        funcs,
        tables: Vec::new(),
        ctes: Vec::new(),
        skip_relation: false,
        volatile: false,
    };
    let flow = q.visit(&mut c);
    let ctes = c.ctes;
    tables.extend(
        c.tables
            .into_iter()
            .filter(|t| !ctes.iter().any(|n| n == t)),
    );
    match flow {
        ControlFlow::Continue(()) if c.volatile => Err(Reason::VolatileFunction),
        ControlFlow::Continue(()) => Ok(()),
        ControlFlow::Break(r) => Err(r),
    }
}

struct Checker<'a> {
    funcs: &'a FunctionTable,
    tables: Vec<String>,
    /// CTE names (not tables).
    ctes: Vec<String>,
    /// The next relation is the name of a table function (`FROM f(1)`), not a table.
    skip_relation: bool,
    /// A function `pg_proc` lists as VOLATILE (not a known writer) was called.
    volatile: bool,
}

impl Checker<'_> {
    fn call(&mut self, name: &ObjectName) -> ControlFlow<Reason> {
        let mut parts = Vec::with_capacity(name.0.len());
        for p in &name.0 {
            match p {
                ObjectNamePart::Identifier(id) if id.quote_style.is_some() => {
                    parts.push(id.value.clone())
                }
                ObjectNamePart::Identifier(id) => parts.push(id.value.to_lowercase()),
                _ => return ControlFlow::Break(Reason::WriteFunction),
            }
        }
        let Some(fname) = parts.pop() else {
            return ControlFlow::Break(Reason::WriteFunction);
        };
        let schema = parts.pop();
        match self.funcs.call(schema.as_deref(), &fname) {
            Call::Read => ControlFlow::Continue(()),
            Call::Write => ControlFlow::Break(Reason::WriteFunction),
            Call::Volatile => {
                // Not a write by itself: anything else that writes wins.
                self.volatile = true;
                ControlFlow::Continue(())
            }
        }
    }
}

impl Visitor for Checker<'_> {
    type Break = Reason;

    fn pre_visit_query(&mut self, q: &Query) -> ControlFlow<Reason> {
        if !q.locks.is_empty() {
            return ControlFlow::Break(Reason::LockingClause);
        }
        if let Some(with) = &q.with {
            for cte in &with.cte_tables {
                self.ctes.push(cte.alias.name.value.to_lowercase());
            }
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_select(&mut self, s: &Select) -> ControlFlow<Reason> {
        if s.into.is_some() {
            return ControlFlow::Break(Reason::SelectInto);
        }
        ControlFlow::Continue(())
    }

    /// Any statement inside a query is DML: `WITH x AS (INSERT ...)`, at any depth.
    fn pre_visit_statement(&mut self, _s: &Statement) -> ControlFlow<Reason> {
        ControlFlow::Break(Reason::WritableCte)
    }

    fn pre_visit_table_factor(&mut self, tf: &TableFactor) -> ControlFlow<Reason> {
        match tf {
            TableFactor::Table {
                name,
                args: Some(_),
                ..
            } => {
                self.skip_relation = true;
                self.call(name)
            }
            TableFactor::Function { name, .. } => self.call(name),
            _ => ControlFlow::Continue(()),
        }
    }

    fn pre_visit_relation(&mut self, name: &ObjectName) -> ControlFlow<Reason> {
        if std::mem::take(&mut self.skip_relation) {
            return ControlFlow::Continue(());
        }
        self.tables.push(object_name(name));
        ControlFlow::Continue(())
    }

    fn pre_visit_expr(&mut self, e: &Expr) -> ControlFlow<Reason> {
        match e {
            Expr::Function(f) => self.call(&f.name),
            _ => ControlFlow::Continue(()),
        }
    }
}

/// `Schema."Table"` -> `schema.table` (lower-cased, unquoted).
fn object_name(n: &ObjectName) -> String {
    let mut out = String::new();
    for (i, p) in n.0.iter().enumerate() {
        if i > 0 {
            out.push('.');
        }
        match p {
            ObjectNamePart::Identifier(id) => out.push_str(&id.value.to_lowercase()),
            other => out.push_str(&other.to_string().to_lowercase()),
        }
    }
    out
}
