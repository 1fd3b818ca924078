//! `auth_file`: PgBouncer's userlist.txt. Each line `"user" "secret"` (a plain-text password, an
//! md5 hash or a SCRAM verifier); `""` inside a field is a literal quote; the rest of a line
//! after the second field is ignored, and so are lines that do not start with `"` (comments).

use std::path::Path;

/// One entry: a user name and its secret.
#[derive(Clone, PartialEq, Eq)]
pub struct AuthFileEntry {
    /// The user name.
    pub user: String,
    /// Its password, md5 hash or SCRAM verifier.
    pub secret: String,
}

impl std::fmt::Debug for AuthFileEntry {
    // Never the secret.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthFileEntry")
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

/// A line that could not be read (1-based line number, what is wrong; never the secret).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthFileProblem {
    /// 1-based line.
    pub line: usize,
    /// What is wrong.
    pub message: String,
}

/// Reads an auth file; Err: the file cannot be read.
pub fn read(path: &Path) -> std::io::Result<(Vec<AuthFileEntry>, Vec<AuthFileProblem>)> {
    Ok(parse(&std::fs::read_to_string(path)?))
}

/// Parses the text of an auth file.
pub fn parse(text: &str) -> (Vec<AuthFileEntry>, Vec<AuthFileProblem>) {
    let mut entries = Vec::new();
    let mut problems = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line_no = i + 1;
        let rest = line.trim_start();
        if !rest.starts_with('"') {
            continue;
        }
        let fields = quoted(rest).and_then(|(user, rest)| {
            let (secret, _) = quoted(rest.trim_start())?;
            Some((user, secret))
        });
        match fields {
            Some((user, _)) if user.is_empty() => problems.push(AuthFileProblem {
                line: line_no,
                message: "empty user name".into(),
            }),
            Some((user, secret)) => entries.push(AuthFileEntry { user, secret }),
            None => problems.push(AuthFileProblem {
                line: line_no,
                message: "expected \"user\" \"secret\" (two double-quoted fields)".into(),
            }),
        }
    }
    (entries, problems)
}

/// A double-quoted field at the start of `s` and what follows it.
fn quoted(s: &str) -> Option<(String, &str)> {
    let mut chars = s.strip_prefix('"')?.char_indices();
    let mut out = String::new();
    let body = &s[1..];
    while let Some((i, c)) = chars.next() {
        if c == '"' {
            if body[i + 1..].starts_with('"') {
                out.push('"');
                chars.next();
            } else {
                return Some((out, &body[i + 1..]));
            }
        } else {
            out.push(c);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pgbouncer_userlist_lines_parse() {
        let (entries, problems) = parse(
            "; comment\n\"alice\" \"pw with \"\"quotes\"\"\"\n  \"bob\"   \"md5abc\" extra ignored\n\n\"carol\" \"SCRAM-SHA-256$4096:x$y:z\"\n\"broken\n\"\" \"x\"\n",
        );
        let users: Vec<(&str, &str)> = entries
            .iter()
            .map(|e| (e.user.as_str(), e.secret.as_str()))
            .collect();
        assert_eq!(
            users,
            [
                ("alice", "pw with \"quotes\""),
                ("bob", "md5abc"),
                ("carol", "SCRAM-SHA-256$4096:x$y:z"),
            ]
        );
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert_eq!(problems[0].line, 6);
        assert_eq!(problems[1].message, "empty user name");
    }

    #[test]
    fn debug_output_never_shows_the_secret() {
        let (entries, _) = parse("\"u\" \"hunter2\"\n");
        assert!(!format!("{entries:?}").contains("hunter2"));
    }
}

#[cfg(test)]
mod config_tests {
    use crate::config::{load_file, ClientAuth};

    #[test]
    fn users_come_from_the_auth_file_relative_to_the_config() {
        let dir = std::env::temp_dir().join(format!("pgtier-authfile-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("userlist.txt"),
            "\"filed\" \"plain-pw\"\n\"hashed\" \"md5aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\"\n\"toml\" \"from-file\"\n",
        )
        .unwrap();
        let config = dir.join("pgtier.toml");
        std::fs::write(
            &config,
            "auth_file = \"userlist.txt\"\nauth_type = \"md5\"\nadmin_users = [\"filed\"]\n\
             [users.toml]\nserver_password = \"s\"\n[users.mon]\npassword = \"m\"\n\
             [databases.app]\nprimary = \"127.0.0.1:5432\"\nmonitor_user = \"mon\"\n",
        )
        .unwrap();
        let s = load_file(&config).unwrap();
        assert!(matches!(s.users["filed"].auth, ClientAuth::Md5(_)));
        assert_eq!(
            s.users["filed"].server_password.as_deref(),
            Some("plain-pw")
        );
        assert!(matches!(s.users["hashed"].auth, ClientAuth::Md5(_)));
        assert_eq!(s.users["hashed"].server_password, None);
        // A [users] entry without a password takes the file's (its own `auth`: SCRAM).
        assert!(matches!(s.users["toml"].auth, ClientAuth::Scram(_)));
        std::fs::write(dir.join("userlist.txt"), "\"bad line\n").unwrap();
        let e = load_file(&config).unwrap_err().to_string();
        assert!(e.contains("userlist.txt line 1: expected"), "{e}");
        std::fs::remove_file(dir.join("userlist.txt")).unwrap();
        let e = load_file(&config).unwrap_err().to_string();
        assert!(e.contains("auth_file") && e.contains("No such file"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
