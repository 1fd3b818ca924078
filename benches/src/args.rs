//! Command-line options of the bench binaries: `--name value` pairs, each with a default.
// Shared by the bench binaries, each using part of it.
#![allow(dead_code)]

use std::str::FromStr;

use anyhow::{bail, Context, Result};

/// The `--name value` pairs given.
pub struct Args {
    given: Vec<(String, String)>,
}

impl Args {
    /// Reads the process arguments; `names` are the options accepted. `-h`/`--help` prints
    /// `usage` and exits.
    pub fn parse(usage: &str, names: &[&str]) -> Result<Args> {
        let mut given = Vec::new();
        let mut args = std::env::args().skip(1);
        while let Some(a) = args.next() {
            if a == "-h" || a == "--help" {
                println!("{usage}");
                std::process::exit(0);
            }
            let Some(name) = a.strip_prefix("--").filter(|n| names.contains(n)) else {
                bail!("unknown argument {a}\n{usage}");
            };
            let value = args
                .next()
                .with_context(|| format!("--{name}: missing value"))?;
            given.push((name.to_owned(), value));
        }
        Ok(Args { given })
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.given
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// `--name N`, else `default`.
    pub fn number<T: FromStr>(&self, name: &str, default: T) -> Result<T> {
        match self.get(name) {
            None => Ok(default),
            Some(v) => v
                .parse()
                .ok()
                .with_context(|| format!("--{name}: not a number: {v}")),
        }
    }

    /// `--name a,b,...` (each one of `known`), else `default`.
    pub fn list(&self, name: &str, default: &[&str], known: &[&str]) -> Result<Vec<String>> {
        let Some(v) = self.get(name) else {
            return Ok(default.iter().map(|s| s.to_string()).collect());
        };
        let items: Vec<String> = v.split(',').map(str::to_owned).collect();
        match items.iter().find(|x| !known.contains(&x.as_str())) {
            Some(x) => bail!("--{name}: unknown value {x} (known: {})", known.join(",")),
            None => Ok(items),
        }
    }

    /// `--name value` (one of `known`), else `default`.
    pub fn one_of(&self, name: &str, default: &str, known: &[&str]) -> Result<String> {
        let v = self.get(name).unwrap_or(default);
        if !known.contains(&v) {
            bail!("--{name}: unknown value {v} (known: {})", known.join(","));
        }
        Ok(v.to_owned())
    }
}
