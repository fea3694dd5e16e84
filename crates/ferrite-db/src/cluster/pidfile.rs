//! Reads `postmaster.pid`, the lock file through which a running server reports its pid and readiness.

use std::path::Path;

/// The parts of `postmaster.pid` we use (its layout is fixed by PostgreSQL's `pidfile.h`).
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct PidFile {
    pub(crate) pid: u32,
    pub(crate) port: Option<u16>,
    /// `starting`, `ready`, `stopping` or `standby` (line 8, since PostgreSQL 10).
    pub(crate) status: String,
}

impl PidFile {
    pub(crate) fn read(data: &Path) -> Option<PidFile> {
        let text = std::fs::read_to_string(data.join("postmaster.pid")).ok()?;
        PidFile::parse(&text)
    }

    fn parse(text: &str) -> Option<PidFile> {
        let lines: Vec<&str> = text.lines().collect();
        let pid = lines.first()?.trim().parse().ok()?;
        let port = lines.get(3).and_then(|line| line.trim().parse().ok());
        let status = lines.get(7).map(|line| line.trim().to_owned()).unwrap_or_default();
        Some(PidFile { pid, port, status })
    }

    pub(crate) fn is_ready(&self) -> bool {
        self.status == "ready"
    }

    pub(crate) fn is_stopping(&self) -> bool {
        self.status == "stopping"
    }
}

/// What the process named in a leftover `postmaster.pid` is now.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Holder {
    /// A live postgres serving this very data directory.
    Postgres,
    /// The pid is free, or reused by an unrelated process: the file is stale.
    Stale,
    /// We cannot tell (no /proc): leave the decision to postgres itself.
    Unknown,
}

/// Tells a live server from a stale lock left by a crash.
///
/// postgres itself treats any live pid in the file as a running server, so after a crash or reboot
/// a reused pid (as the postgres user, even one it may not signal) would keep it from starting for good.
/// A postmaster changes into its data directory before it writes the lock file,
/// so the process's working directory tells the cases apart, whatever spelling of the path either side used.
/// `data` must be canonical.
pub(crate) fn holder(pid: u32, data: &Path) -> Holder {
    if !Path::new("/proc/self").exists() {
        return Holder::Unknown;
    }
    match std::fs::read_link(format!("/proc/{pid}/cwd")) {
        Ok(cwd) if cwd == data => Holder::Postgres,
        Ok(_) => Holder::Stale,
        // Gone, or a zombie whose working directory is already released.
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Holder::Stale,
        // Typically another user's process that we may not inspect.
        Err(_) => Holder::Unknown,
    }
}

#[cfg(test)]
mod tests {
    use super::PidFile;

    #[test]
    fn a_ready_server_parses() {
        let text = "15832\n/tmp/pgm/d\n1795628554\n54329\n\n127.0.0.1\n 10010627        36\nready   \n";
        assert_eq!(PidFile::parse(text), Some(PidFile { pid: 15832, port: Some(54329), status: "ready".to_owned() }));
    }

    #[test]
    fn a_starting_server_is_not_ready() {
        let parsed = PidFile::parse("15832\n/tmp/pgm/d\n1795628554\n54329\n");
        assert!(parsed.is_some_and(|file| !file.is_ready()));
    }

    #[test]
    fn garbage_does_not_parse() {
        assert_eq!(PidFile::parse(""), None);
        assert_eq!(PidFile::parse("not a pid\n"), None);
    }
}
