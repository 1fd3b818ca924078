//! The shape of a unit the fast lane takes, followed message by message: a simple Query alone;
//! an unnamed Parse, a Bind of it to the unnamed portal, a Describe of that portal (or none),
//! an Execute and a Sync; or the same without the Parse, binding a named statement the client
//! prepared earlier. Each message is well formed. The unit scan feeds it the messages it
//! walks anyway (one walk per unit); without a scan (the primary only), [`unit_sql`] walks.

use crate::protocol::frame::peek_header;
use crate::protocol::{extended, validate};

/// Where a unit stands in the lane's shape.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct LaneShape {
    step: Step,
    /// Where the statement's text is in the unit, or its name for a named statement (start,
    /// end: kept small, the scan that holds this is moved with each unit's analysis).
    sql: (u32, u32),
    /// The unit binds a named statement (`sql` is its name).
    named: bool,
}

/// What a unit of the lane's shape runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LaneText<'a> {
    /// This text (a Query's, or the unit's unnamed Parse's).
    Sql(&'a [u8]),
    /// The client's named statement of this name.
    Named(&'a [u8]),
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Step {
    #[default]
    Start,
    Parsed,
    Bound,
    Described,
    Executed,
    /// The shape is complete (a Query, or up to the Sync).
    Whole,
    /// Not the shape.
    Other,
}

impl LaneShape {
    /// Takes the next message of the unit: its type and body, which starts at `at` in the
    /// unit. Anything after a complete shape, or malformed, breaks it.
    pub(crate) fn feed(&mut self, tag: u8, body: &[u8], at: usize) {
        if self.step == Step::Other {
            return;
        }
        self.step = self.next(tag, body, at).unwrap_or(Step::Other);
    }

    fn next(&mut self, tag: u8, body: &[u8], at: usize) -> Option<Step> {
        validate::check(tag, body).ok()?;
        Some(match (self.step, tag) {
            (Step::Start, b'Q') => {
                // Validated: the body ends with its NUL.
                self.sql = span(at, body.len() - 1)?;
                Step::Whole
            }
            (Step::Start, b'P') => {
                let p = extended::parse(body)?;
                if !p.name.is_empty() {
                    return None;
                }
                let (sql, _) = extended::split_cstr(p.rest)?;
                // The empty name's NUL, then the text.
                self.sql = span(at + 1, sql.len())?;
                Step::Parsed
            }
            (Step::Parsed, b'B') => {
                let b = extended::bind(body)?;
                if !b.portal.is_empty() || !b.statement.is_empty() {
                    return None;
                }
                Step::Bound
            }
            (Step::Start, b'B') => {
                let b = extended::bind(body)?;
                if !b.portal.is_empty() || b.statement.is_empty() {
                    return None;
                }
                // The empty portal's NUL, then the name.
                self.sql = span(at + 1, b.statement.len())?;
                self.named = true;
                Step::Bound
            }
            (Step::Bound, b'D') if extended::target(body) == Some((b'P', &b""[..])) => {
                Step::Described
            }
            (Step::Bound | Step::Described, b'E') if body.first() == Some(&0) => Step::Executed,
            (Step::Executed, b'S') => Step::Whole,
            _ => return None,
        })
    }

    /// What the unit runs, when the shape is complete (`buf` holds the unit).
    pub(crate) fn text<'a>(&self, buf: &'a [u8]) -> Option<LaneText<'a>> {
        let (start, end) = self.sql;
        if self.step != Step::Whole {
            return None;
        }
        let text = buf.get(start as usize..end as usize)?;
        Some(match self.named {
            true => LaneText::Named(text),
            false => LaneText::Sql(text),
        })
    }
}

/// `len` bytes from `at`, if both ends fit in a u32 (a larger unit is not the lane's).
fn span(at: usize, len: usize) -> Option<(u32, u32)> {
    Some((u32::try_from(at).ok()?, u32::try_from(at + len).ok()?))
}

/// What `buf` runs if it is exactly one unit of the lane's shape (walked here: for a unit
/// nobody scanned).
pub(crate) fn unit_text(buf: &[u8]) -> Option<LaneText<'_>> {
    let mut shape = LaneShape::default();
    let mut pos = 0;
    while pos < buf.len() {
        let h = peek_header(&buf[pos..], usize::MAX).ok()??;
        let end = pos + h.frame_len();
        shape.feed(h.tag, buf.get(pos + 5..end)?, pos + 5);
        pos = end;
    }
    shape.text(buf)
}

#[cfg(test)]
mod tests {
    use super::{unit_text, LaneText};
    use crate::protocol::frame::test_frame as frame;

    fn unit_sql(buf: &[u8]) -> Option<&[u8]> {
        match unit_text(buf)? {
            LaneText::Sql(sql) => Some(sql),
            LaneText::Named(_) => None,
        }
    }

    #[test]
    fn the_statement_of_a_query_or_an_unnamed_extended_unit() {
        let q = frame(b'Q', b"SELECT 1\0");
        assert_eq!(unit_sql(&q), Some(&b"SELECT 1"[..]));
        let mut p = b"\0SELECT $1\0".to_vec();
        p.extend(0i16.to_be_bytes());
        let mut unit = frame(b'P', &p);
        unit.extend(frame(b'B', b"\0\0\0\0\0\0\0\0"));
        unit.extend(frame(b'E', b"\0\0\0\0\0"));
        unit.extend(frame(b'S', b""));
        assert_eq!(unit_sql(&unit), Some(&b"SELECT $1"[..]));
        // Two Queries, a unit without its Sync.
        let mut two = q.clone();
        two.extend(&q);
        assert_eq!(unit_sql(&two), None);
        assert_eq!(unit_sql(&unit[..unit.len() - 5]), None);
    }

    #[test]
    fn the_name_of_a_bound_named_statement() {
        let bind = |portal: &str, statement: &str| {
            let mut b = format!("{portal}\0{statement}\0").into_bytes();
            b.extend([0, 0, 0, 0, 0, 0]);
            frame(b'B', &b)
        };
        let tail = [
            frame(b'D', b"P\0"),
            frame(b'E', b"\0\0\0\0\0"),
            frame(b'S', b""),
        ]
        .concat();
        let unit = [bind("", "P0_1"), tail.clone()].concat();
        assert_eq!(unit_text(&unit), Some(LaneText::Named(b"P0_1")));
        // Without the Describe too; a named portal, the unnamed statement (no Parse in the
        // unit: it may be on another server), no Sync: not the shape.
        let short = [bind("", "s"), tail[7..].to_vec()].concat();
        assert_eq!(unit_text(&short), Some(LaneText::Named(b"s")));
        for other in [
            [bind("p", "P0_1"), tail.clone()].concat(),
            [bind("", ""), tail.clone()].concat(),
            unit[..unit.len() - 5].to_vec(),
        ] {
            assert_eq!(unit_text(&other), None);
        }
    }
}
