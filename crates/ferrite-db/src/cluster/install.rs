//! Finds the PostgreSQL server binaries installed on this machine.

use std::path::{Path, PathBuf};

use crate::DbError;

/// Where distributions put versioned server binaries: Debian/Ubuntu, then the PGDG RPMs.
/// Each entry is a directory of version directories and the path from one of those to its `bin`.
const VERSIONED_ROOTS: &[(&str, &str, &str)] = &[("/usr/lib/postgresql", "", "bin"), ("/usr", "pgsql-", "bin")];

/// A directory holding `initdb` and `postgres` of one PostgreSQL version.
#[derive(Debug, Clone)]
pub(crate) struct Installation {
    bin: PathBuf,
}

impl Installation {
    /// Finds the binaries to run a cluster with.
    ///
    /// `existing_major` is the `PG_VERSION` of a data directory that already exists:
    /// a cluster can only be run by its own major version, so a matching versioned directory wins.
    /// Otherwise PATH wins (the user put it there on purpose), then the highest installed version.
    pub(crate) fn find(existing_major: Option<&str>) -> Result<Installation, DbError> {
        let versioned = versioned_installations();
        if let Some(major) = existing_major
            && let Some((_, bin)) = versioned.iter().find(|(version, _)| version.major() == major)
        {
            return Ok(Installation { bin: bin.clone() });
        }
        if let Some(bin) = on_path() {
            return Ok(Installation { bin });
        }
        versioned
            .into_iter()
            .max_by(|(a, _), (b, _)| a.cmp(b))
            .map(|(_, bin)| Installation { bin })
            .ok_or(DbError::BinariesNotFound)
    }

    pub(crate) fn initdb(&self) -> PathBuf {
        self.bin.join("initdb")
    }

    pub(crate) fn postgres(&self) -> PathBuf {
        self.bin.join("postgres")
    }
}

/// A version directory name such as `15` or `9.6`, compared numerically so that 10 sorts above 9.6.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Version(Vec<u32>);

impl Version {
    fn parse(text: &str) -> Option<Version> {
        let parts: Option<Vec<u32>> = text.split('.').map(|part| part.parse().ok()).collect();
        parts.filter(|parts| !parts.is_empty()).map(Version)
    }

    /// The major version as `PG_VERSION` spells it: `15`, or `9.6` before PostgreSQL 10.
    fn major(&self) -> String {
        match self.0.as_slice() {
            [major, minor, ..] if *major < 10 => format!("{major}.{minor}"),
            [major, ..] => major.to_string(),
            [] => String::new(),
        }
    }
}

fn has_server(bin: &Path) -> bool {
    bin.join("initdb").is_file() && bin.join("postgres").is_file()
}

/// The first PATH directory with both binaries; a lone `postgres` elsewhere is not enough to run a cluster.
fn on_path() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).find(|dir| has_server(dir))
}

fn versioned_installations() -> Vec<(Version, PathBuf)> {
    let mut found = Vec::new();
    for (root, prefix, bin) in VERSIONED_ROOTS {
        let Ok(entries) = std::fs::read_dir(root) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(version) = name.to_str().and_then(|name| name.strip_prefix(prefix)).and_then(Version::parse)
            else {
                continue;
            };
            let dir = entry.path().join(bin);
            if has_server(&dir) {
                found.push((version, dir));
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::Version;

    fn check(text: &str, expected_major: Option<&str>) {
        assert_eq!(Version::parse(text).map(|version| version.major()).as_deref(), expected_major, "{text}");
    }

    #[test]
    fn version_directories_parse() {
        check("15", Some("15"));
        check("9.6", Some("9.6"));
        check("16.2", Some("16"));
        check("common", None);
        check("", None);
    }

    #[test]
    fn versions_sort_numerically() {
        let parse = |text| Version::parse(text).expect("the literals are valid versions");
        assert!(parse("10") > parse("9.6"));
        assert!(parse("16") > parse("15"));
    }
}
