//! Where a persistent cluster's files live when the directory the user named is out of the server account's reach.
//!
//! As root, PostgreSQL runs as the `postgres` system user, which cannot enter a private directory such as a clone
//! in `/root` (mode 0700). Rather than loosen the user's directories, the cluster then lives where system services
//! keep their data, `/var/lib/ferrite/postgres/<key>` (one per data directory, keyed by a stable hash of its
//! absolute path), and the named directory becomes a symbolic link to it: `cat .ferrite/postgres/password` and
//! everything else that reads the cluster's files through that name keep working, and the start-up banner names
//! the real place.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use super::account::ServerAccount;
use crate::DbError;

/// The parent of clusters moved out of reach-less directories; created 0755 (root), like other service data.
pub const SHARED_BASE: &str = "/var/lib/ferrite/postgres";

/// Names the file beside a moved cluster's data that says which directory it belongs to, for people browsing
/// `/var/lib/ferrite/postgres`.
const ORIGIN_FILE: &str = "origin";

/// Returns the directory to start the cluster in: `data_dir` itself, which may be (or now become) a symbolic link to
/// a directory under [`SHARED_BASE`] when the server account cannot reach `data_dir`.
pub(crate) fn place(account: &ServerAccount, data_dir: &Path) -> Result<PathBuf, DbError> {
    place_under(account, data_dir, Path::new(SHARED_BASE))
}

fn place_under(account: &ServerAccount, data_dir: &Path, base: &Path) -> Result<PathBuf, DbError> {
    // A link left by an earlier start: its target is the cluster (recreated if someone removed it).
    if fs::symlink_metadata(data_dir).is_ok_and(|meta| meta.file_type().is_symlink()) {
        let target = fs::read_link(data_dir)
            .map_err(|err| DbError::io(format!("cannot read the link {}", data_dir.display()), err))?;
        let target = data_dir.parent().map_or_else(|| target.clone(), |parent| parent.join(&target));
        create_dir(&target)?;
        return Ok(data_dir.to_path_buf());
    }
    create_dir(data_dir)?;
    let blocked = match account.check_reachable(data_dir) {
        Ok(()) => return Ok(data_dir.to_path_buf()),
        Err(err @ DbError::NotTraversable { .. }) => err,
        Err(err) => return Err(err),
    };
    // A cluster already there (its directory made private after it was created) is never moved behind the user's back.
    if !is_empty_dir(data_dir) {
        return Err(blocked);
    }
    let absolute =
        data_dir.canonicalize().map_err(|err| DbError::io(format!("cannot resolve {}", data_dir.display()), err))?;
    let target = base.join(key(&absolute));
    for dir in base.ancestors().collect::<Vec<_>>().into_iter().rev().skip(1) {
        if !dir.exists() {
            create_dir(dir)?;
            // Whatever root's umask, the server account must be able to pass through.
            fs::set_permissions(dir, fs::Permissions::from_mode(0o755))
                .map_err(|err| DbError::io(format!("cannot chmod {}", dir.display()), err))?;
        }
    }
    create_dir(&target)?;
    account.check_reachable(&target)?;
    // Written before the cluster takes the directory over (mode 0700, the server account's).
    let origin = format!("{}\n", absolute.display());
    if let Err(err) = fs::write(target.join(ORIGIN_FILE), origin) {
        tracing::debug!(cause = %err, "cannot note the cluster's origin");
    }
    fs::remove_dir(data_dir).map_err(|err| DbError::io(format!("cannot remove {}", data_dir.display()), err))?;
    std::os::unix::fs::symlink(&target, data_dir)
        .map_err(|err| DbError::io(format!("cannot link {} to {}", data_dir.display(), target.display()), err))?;
    tracing::info!(
        "the postgres system user cannot enter {} (private); keeping the cluster in {} instead, linked from {}",
        blocked_dir(&blocked).display(),
        target.display(),
        data_dir.display()
    );
    Ok(data_dir.to_path_buf())
}

fn blocked_dir(err: &DbError) -> &Path {
    match err {
        DbError::NotTraversable { blocker, .. } => blocker,
        _ => Path::new("?"),
    }
}

fn create_dir(dir: &Path) -> Result<(), DbError> {
    fs::create_dir_all(dir).map_err(|err| DbError::io(format!("cannot create {}", dir.display()), err))
}

fn is_empty_dir(dir: &Path) -> bool {
    fs::read_dir(dir).is_ok_and(|mut entries| entries.next().is_none())
}

/// A stable name for the cluster of `absolute`: a 64-bit FNV-1a hash of the path, in hex (the `origin` file beside it
/// says which directory it belongs to). FNV, written out here, because std's hasher may change between Rust releases
/// and the name must not.
fn key(absolute: &Path) -> String {
    let hash = absolute
        .as_os_str()
        .as_encoded_bytes()
        .iter()
        .fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| (hash ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3));
    format!("{hash:016x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_stable_and_distinct() {
        // Published FNV-1a 64 test vectors.
        assert_eq!(key(Path::new("")), "cbf29ce484222325");
        assert_eq!(key(Path::new("a")), "af63dc4c8601ec8c");
        assert_ne!(key(Path::new("/root/a/.ferrite/postgres")), key(Path::new("/root/b/.ferrite/postgres")));
    }
}
