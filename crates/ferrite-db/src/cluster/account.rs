//! The operating-system account PostgreSQL runs as: ourselves, or the `postgres` system user when we are root.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;

use crate::DbError;

/// The system user that PostgreSQL packages create, and that we hand the cluster to when running as root.
const SERVER_USER: &str = "postgres";

/// Who runs `initdb` and `postgres`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ServerAccount {
    uid: u32,
    gid: u32,
    /// True when we are root and must drop to `uid`/`gid` for every server process,
    /// because `initdb` and `postgres` refuse to run as root.
    switch: bool,
}

impl ServerAccount {
    pub(crate) fn current() -> Result<ServerAccount, DbError> {
        let uid = effective_uid()?;
        if uid != 0 {
            let gid = fs::metadata("/proc/self").map(|meta| meta.gid()).unwrap_or(0);
            return Ok(ServerAccount { uid, gid, switch: false });
        }
        let (uid, gid) = lookup_user(SERVER_USER).ok_or(DbError::NoServerUser)?;
        Ok(ServerAccount { uid, gid, switch: true })
    }

    /// Makes `command` run as this account.
    pub(crate) fn apply(&self, command: &mut Command) {
        if self.switch {
            // std also clears root's supplementary groups when it changes the uid,
            // so the server gets exactly the postgres user's primary group.
            command.uid(self.uid).gid(self.gid);
        }
    }

    /// Gives `path` to this account with mode `mode`.
    pub(crate) fn hand_over(&self, path: &Path, mode: u32) -> Result<(), DbError> {
        if self.switch {
            std::os::unix::fs::chown(path, Some(self.uid), Some(self.gid))
                .map_err(|err| DbError::io(format!("cannot chown {}", path.display()), err))?;
        }
        fs::set_permissions(path, fs::Permissions::from_mode(mode))
            .map_err(|err| DbError::io(format!("cannot chmod {}", path.display()), err))
    }

    /// Replaces the file at `path` with a new one of this account holding `contents`.
    ///
    /// As root we write into a directory that the server account controls, so whatever is at `path`
    /// (possibly a symbolic link planted there) is removed rather than written through,
    /// and the new file is created exclusively and handed over by its handle, never by its name.
    pub(crate) fn write_file(&self, path: &Path, contents: &[u8], mode: u32) -> Result<(), DbError> {
        let failed = |err| DbError::io(format!("cannot write {}", path.display()), err);
        match fs::remove_file(path) {
            Err(err) if err.kind() != std::io::ErrorKind::NotFound => return Err(failed(err)),
            _ => {}
        }
        let mut file = fs::OpenOptions::new().write(true).create_new(true).mode(mode).open(path).map_err(failed)?;
        if self.switch {
            std::os::unix::fs::fchown(&file, Some(self.uid), Some(self.gid)).map_err(failed)?;
        }
        file.write_all(contents).map_err(failed)
    }

    /// Fails when this account cannot search every directory above `data_dir`.
    ///
    /// Only needed when we switch users: PostgreSQL then runs as someone else,
    /// and a data directory under `/root` (mode 0700) would fail later with an obscure "permission denied".
    /// Mode bits are what decide for the common case; ACLs are rare enough on such paths to leave to the server's own error.
    pub(crate) fn check_reachable(&self, data_dir: &Path) -> Result<(), DbError> {
        if !self.switch {
            return Ok(());
        }
        let canonical = data_dir
            .canonicalize()
            .map_err(|err| DbError::io(format!("cannot resolve {}", data_dir.display()), err))?;
        for ancestor in canonical.ancestors().skip(1) {
            let meta = fs::metadata(ancestor)
                .map_err(|err| DbError::io(format!("cannot stat {}", ancestor.display()), err))?;
            let mode = meta.mode();
            let search_bit = if meta.uid() == self.uid {
                0o100
            } else if meta.gid() == self.gid {
                0o010
            } else {
                0o001
            };
            if mode & search_bit == 0 {
                return Err(DbError::NotTraversable {
                    data_dir: data_dir.to_path_buf(),
                    blocker: ancestor.to_path_buf(),
                    mode: mode & 0o7777,
                });
            }
        }
        Ok(())
    }
}

/// Our effective uid, without `unsafe` libc calls: Linux shows it as the owner of /proc/self.
fn effective_uid() -> Result<u32, DbError> {
    if let Ok(meta) = fs::metadata("/proc/self") {
        return Ok(meta.uid());
    }
    let output =
        Command::new("id").arg("-u").output().map_err(|err| DbError::io("cannot run `id -u` to learn our uid", err))?;
    String::from_utf8_lossy(&output.stdout)
        .trim()
        .parse()
        .map_err(|_| DbError::io("cannot learn our uid", std::io::Error::other("`id -u` printed no number")))
}

/// Looks `name` up in /etc/passwd, then through `getent` for accounts from NSS (LDAP and the like).
fn lookup_user(name: &str) -> Option<(u32, u32)> {
    let from_file = fs::read_to_string("/etc/passwd").ok().and_then(|passwd| find_in_passwd(&passwd, name));
    from_file.or_else(|| {
        let output = Command::new("getent").args(["passwd", name]).output().ok()?;
        find_in_passwd(&String::from_utf8_lossy(&output.stdout), name)
    })
}

fn find_in_passwd(passwd: &str, name: &str) -> Option<(u32, u32)> {
    passwd.lines().find_map(|line| {
        let mut fields = line.split(':');
        if fields.next()? != name {
            return None;
        }
        let _password = fields.next()?;
        let uid = fields.next()?.parse().ok()?;
        let gid = fields.next()?.parse().ok()?;
        Some((uid, gid))
    })
}

#[cfg(test)]
mod tests {
    use super::find_in_passwd;

    #[test]
    fn passwd_lines_parse() {
        let passwd = "root:x:0:0:root:/root:/bin/bash\n\
                      postgresql:x:7:7::/:/bin/false\n\
                      postgres:x:101:104:PostgreSQL administrator,,,:/var/lib/postgresql:/bin/bash\n";
        assert_eq!(find_in_passwd(passwd, "postgres"), Some((101, 104)));
        assert_eq!(find_in_passwd(passwd, "nobody"), None);
        assert_eq!(find_in_passwd("postgres:x:oops:1::/:", "postgres"), None);
    }
}
