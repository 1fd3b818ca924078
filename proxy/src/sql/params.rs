//! The session parameters Postgres reports with ParameterStatus that pgtier keeps in line
//! between a client and whichever server serves it (names are case-insensitive).

/// Reported parameters that are synced from a client to whichever server serves it.
pub const TRACKED: &[&str] = &[
    "application_name",
    "client_encoding",
    "DateStyle",
    "IntervalStyle",
    "TimeZone",
    "standard_conforming_strings",
    "search_path",
];

/// The canonical name of a tracked parameter (names are case-insensitive).
pub fn tracked(name: &str) -> Option<&'static str> {
    TRACKED
        .iter()
        .copied()
        .find(|t| t.eq_ignore_ascii_case(name))
}
