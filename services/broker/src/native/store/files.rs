//! The store's directory: the lock file, the base (a compacted snapshot) and the logs after it, and recovery.
//!
//! - `LOCK`: held with an exclusive `flock` by the one open store; it contains the holder's process id.
//! - `base-<gen>.snap`: every live record as of the start of `log-<gen>.wal`, ending with an end record. It is
//!   written as `.tmp`, fsynced, then renamed, so a base that exists under its name is complete.
//! - `log-<gen>.wal`: the records appended since, in order. Only the newest log is appended to; an older one was
//!   fsynced before the next was created, so only the newest can end in a torn record.
//!
//! Recovery loads the newest base (none: empty), replays the logs from its generation on, stops at the first
//! torn record of the newest log and cuts it off there, and deletes what an interrupted compaction left.

use std::fs::{self, File, OpenOptions, TryLockError};
use std::io::{self, BufReader, ErrorKind, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use bytes::Bytes;

use super::StoreError;
use super::record::{self, Entry, FRAME_HEADER, MAX_RECORD_BYTES, State};

const LOG_MAGIC: &[u8; 8] = b"FRTLOG01";
const BASE_MAGIC: &[u8; 8] = b"FRTBAS01";
const LOCK_FILE: &str = "LOCK";
/// Buffer of the reader at recovery and chunk of the base writer.
const IO_CHUNK: usize = 1 << 20;

fn log_path(dir: &Path, generation: u64) -> PathBuf {
    dir.join(format!("log-{generation:020}.wal"))
}

fn base_path(dir: &Path, generation: u64) -> PathBuf {
    dir.join(format!("base-{generation:020}.snap"))
}

/// The files of the directory, by kind and generation.
#[derive(Default)]
struct Listing {
    bases: Vec<u64>,
    logs: Vec<u64>,
    temporary: Vec<PathBuf>,
}

fn list(dir: &Path) -> io::Result<Listing> {
    let mut listing = Listing::default();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.ends_with(".tmp") {
            listing.temporary.push(entry.path());
        } else if let Some(generation) = parse_generation(name, "base-", ".snap") {
            listing.bases.push(generation);
        } else if let Some(generation) = parse_generation(name, "log-", ".wal") {
            listing.logs.push(generation);
        }
    }
    listing.bases.sort_unstable();
    listing.logs.sort_unstable();
    Ok(listing)
}

fn parse_generation(name: &str, prefix: &str, suffix: &str) -> Option<u64> {
    name.strip_prefix(prefix)?.strip_suffix(suffix)?.parse().ok()
}

/// Makes a file's creation, rename or removal in `dir` durable.
pub(super) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

fn io_error(context: impl Into<String>) -> impl FnOnce(io::Error) -> StoreError {
    let context = context.into();
    move |source| StoreError::io(context, source)
}

/// How long opening waits for a lock that this process itself seems to hold (see [`lock`]), and how often it looks.
const OWN_LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(1);
const OWN_LOCK_POLL: std::time::Duration = std::time::Duration::from_millis(10);

/// Takes the directory's lock, or says who holds it.
fn lock(dir: &Path) -> Result<File, StoreError> {
    let path = dir.join(LOCK_FILE);
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(io_error(format!("opening {}", path.display())))?;
    let own_pid = std::process::id().to_string();
    let mut waited = std::time::Duration::ZERO;
    loop {
        match file.try_lock() {
            Ok(()) => break,
            Err(TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = file.seek(SeekFrom::Start(0));
                let _ = file.read_to_string(&mut holder);
                let holder = holder.trim().to_owned();
                // A store of this very process that was just closed can still look held: a child being spawned by
                // another thread shares the lock's descriptor between its fork and its exec. That clears within
                // milliseconds; another holder does not.
                if holder == own_pid && waited < OWN_LOCK_WAIT {
                    std::thread::sleep(OWN_LOCK_POLL);
                    waited += OWN_LOCK_POLL;
                    continue;
                }
                return Err(StoreError::InUse { dir: dir.to_owned(), holder });
            }
            Err(TryLockError::Error(e)) => return Err(StoreError::io(format!("locking {}", path.display()), e)),
        }
    }
    file.set_len(0)
        .and_then(|()| file.seek(SeekFrom::Start(0)).map(drop))
        .and_then(|()| file.write_all(own_pid.as_bytes()))
        .map_err(io_error(format!("writing {}", path.display())))?;
    Ok(file)
}

/// The log being appended to.
pub(super) struct ActiveLog {
    file: File,
    pub(super) generation: u64,
    /// Bytes written and not cut off: where the next record goes.
    pub(super) len: u64,
}

impl ActiveLog {
    /// Creates `log-<generation>.wal` with its header, durably.
    pub(super) fn create(dir: &Path, generation: u64) -> io::Result<ActiveLog> {
        let mut file = OpenOptions::new().write(true).create_new(true).open(log_path(dir, generation))?;
        file.write_all(LOG_MAGIC)?;
        file.sync_all()?;
        sync_dir(dir)?;
        Ok(ActiveLog { file, generation, len: LOG_MAGIC.len() as u64 })
    }

    /// Appends `bytes`. After a failed write the file is cut back to where it was, so that no torn record is
    /// followed by later ones; if even that fails the error is [`AppendError::Fatal`].
    pub(super) fn append(&mut self, bytes: &[u8]) -> Result<(), AppendError> {
        match self.file.write_all(bytes) {
            Ok(()) => {
                self.len += bytes.len() as u64;
                Ok(())
            }
            Err(e) => {
                let restored = self.file.set_len(self.len).and_then(|()| self.file.seek(SeekFrom::Start(self.len)));
                match restored {
                    Ok(_) => Err(AppendError::Undone(e)),
                    Err(_) => Err(AppendError::Fatal(e)),
                }
            }
        }
    }

    pub(super) fn sync(&self) -> io::Result<()> {
        self.file.sync_data()
    }
}

pub(super) enum AppendError {
    /// The write failed and was undone: the log is as before it.
    Undone(io::Error),
    /// The write failed and the log could not be cut back.
    Fatal(io::Error),
}

/// An opened directory: its lock, what it holds, and the log to append to.
pub(super) struct Opened {
    pub(super) lock: File,
    pub(super) state: State,
    pub(super) log: ActiveLog,
    /// Bytes recovery reads: the base and every log from its generation on (headers included).
    pub(super) disk_bytes: u64,
}

pub(super) fn open(dir: &Path) -> Result<Opened, StoreError> {
    fs::create_dir_all(dir).map_err(io_error(format!("creating {}", dir.display())))?;
    let lock = lock(dir)?;
    let listing = list(dir).map_err(io_error(format!("listing {}", dir.display())))?;
    for path in &listing.temporary {
        fs::remove_file(path).map_err(io_error(format!("removing {}", path.display())))?;
    }
    let (mut state, base_generation, mut disk_bytes) = match listing.bases.last() {
        Some(&generation) => {
            let (state, bytes) = read_base(&base_path(dir, generation))?;
            (state, generation, bytes)
        }
        None => (State::default(), 0, 0),
    };
    remove_older(dir, base_generation).map_err(io_error(format!("removing old files in {}", dir.display())))?;
    let logs: Vec<u64> = listing.logs.into_iter().filter(|g| *g >= base_generation).collect();
    let mut active = None;
    for (i, &generation) in logs.iter().enumerate() {
        let newest = i + 1 == logs.len();
        let path = log_path(dir, generation);
        let (valid, file_len) = replay_log(&path, &mut state, newest)?;
        disk_bytes += valid;
        if newest {
            active = Some(reopen_log(&path, generation, valid, file_len)?);
        }
    }
    let log = match active {
        Some(log) => log,
        None => {
            let log = ActiveLog::create(dir, base_generation)
                .map_err(io_error(format!("creating {}", log_path(dir, base_generation).display())))?;
            disk_bytes += log.len;
            log
        }
    };
    if state.orphan_queues() > 0 {
        tracing::warn!(
            queues = state.orphan_queues(),
            "the store holds queued messages of clients without a session record; they are kept, not recovered"
        );
    }
    Ok(Opened { lock, state, log, disk_bytes })
}

/// Opens the newest log for appending after its last whole record, cutting off a torn tail.
fn reopen_log(path: &Path, generation: u64, valid: u64, file_len: u64) -> Result<ActiveLog, StoreError> {
    let mut file =
        OpenOptions::new().write(true).open(path).map_err(io_error(format!("opening {}", path.display())))?;
    let cut = |e| StoreError::io(format!("cutting the torn end off {}", path.display()), e);
    if valid < file_len {
        tracing::warn!(
            file = %path.display(),
            kept = valid,
            dropped = file_len - valid,
            "the store's log ends in a torn record (the process stopped while writing it): cut off"
        );
        file.set_len(valid).map_err(cut)?;
    }
    let mut len = valid;
    if valid == 0 {
        // Even the header was torn: start the file again.
        file.write_all(LOG_MAGIC).map_err(cut)?;
        len = LOG_MAGIC.len() as u64;
    } else {
        file.seek(SeekFrom::Start(valid)).map_err(cut)?;
    }
    file.sync_all().map_err(cut)?;
    Ok(ActiveLog { file, generation, len })
}

/// Removes bases and logs older than `generation`: what a compaction that completed left behind.
pub(super) fn remove_older(dir: &Path, generation: u64) -> io::Result<()> {
    let listing = list(dir)?;
    let old_bases = listing.bases.iter().filter(|g| **g < generation).map(|g| base_path(dir, *g));
    let old_logs = listing.logs.iter().filter(|g| **g < generation).map(|g| log_path(dir, *g));
    let mut removed = false;
    for path in old_bases.chain(old_logs) {
        fs::remove_file(path)?;
        removed = true;
    }
    if removed {
        sync_dir(dir)?;
    }
    Ok(())
}

/// What reading one frame gave.
enum Frame {
    Body(Bytes),
    /// The file ends exactly here.
    End,
    /// A partial, oversized or mismatched frame: the write that made it never completed.
    Torn(&'static str),
}

fn read_frame(reader: &mut impl Read) -> io::Result<Frame> {
    let mut header = [0; FRAME_HEADER];
    let got = read_full(reader, &mut header)?;
    if got == 0 {
        return Ok(Frame::End);
    }
    if got < FRAME_HEADER {
        return Ok(Frame::Torn("partial frame header"));
    }
    let (len, crc) = record::frame_header(header);
    if len == 0 || len > MAX_RECORD_BYTES {
        return Ok(Frame::Torn("impossible frame length"));
    }
    let mut body = vec![0; len];
    if read_full(reader, &mut body)? < len {
        return Ok(Frame::Torn("partial frame body"));
    }
    if crc32fast::hash(&body) != crc {
        return Ok(Frame::Torn("checksum mismatch"));
    }
    Ok(Frame::Body(Bytes::from(body)))
}

/// Reads until `buf` is full or the input ends; returns how much it read.
fn read_full(reader: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

fn read_magic(reader: &mut impl Read, path: &Path) -> Result<Option<[u8; 8]>, StoreError> {
    let mut magic = [0; 8];
    let got = read_full(reader, &mut magic).map_err(io_error(format!("reading {}", path.display())))?;
    Ok((got == magic.len()).then_some(magic))
}

/// Replays a log into `state`. Returns the length of its whole records (from the file's start) and the file's
/// length. A torn record ends the newest log; in an older one it is corruption.
fn replay_log(path: &Path, state: &mut State, newest: bool) -> Result<(u64, u64), StoreError> {
    let file = File::open(path).map_err(io_error(format!("opening {}", path.display())))?;
    let file_len = file.metadata().map_err(io_error(format!("reading {}", path.display())))?.len();
    let mut reader = BufReader::with_capacity(IO_CHUNK, file);
    let corrupt = |offset: u64, reason: String| StoreError::Corrupt { file: path.to_owned(), offset, reason };
    match read_magic(&mut reader, path)? {
        Some(magic) if &magic == LOG_MAGIC => {}
        Some(magic) if !(newest && magic == [0; 8]) => return Err(corrupt(0, "not a store log".into())),
        _ if newest => return Ok((0, file_len)),
        _ => return Err(corrupt(0, "the log's header is torn, yet a later log follows".into())),
    }
    let mut offset = LOG_MAGIC.len() as u64;
    loop {
        let frame = read_frame(&mut reader).map_err(io_error(format!("reading {}", path.display())))?;
        match frame {
            Frame::End => return Ok((offset, file_len)),
            Frame::Torn(reason) if newest => {
                tracing::debug!(file = %path.display(), offset, reason, "torn record at the end of the log");
                return Ok((offset, file_len));
            }
            Frame::Torn(reason) => {
                return Err(corrupt(offset, format!("{reason}, yet a later log follows")));
            }
            Frame::Body(body) => {
                let len = (FRAME_HEADER + body.len()) as u64;
                match record::decode(body) {
                    Ok(Entry::Op(op)) => state.apply(op),
                    Ok(Entry::End) => return Err(corrupt(offset, "an end record in a log".into())),
                    Err(reason) => return Err(corrupt(offset, reason)),
                }
                offset += len;
            }
        }
    }
}

/// Reads a complete base: every record must be whole, up to the end record.
fn read_base(path: &Path) -> Result<(State, u64), StoreError> {
    let file = File::open(path).map_err(io_error(format!("opening {}", path.display())))?;
    let mut reader = BufReader::with_capacity(IO_CHUNK, file);
    let corrupt = |offset: u64, reason: String| StoreError::Corrupt { file: path.to_owned(), offset, reason };
    if read_magic(&mut reader, path)?.as_ref() != Some(BASE_MAGIC) {
        return Err(corrupt(0, "not a store base".into()));
    }
    let mut state = State::default();
    let mut offset = BASE_MAGIC.len() as u64;
    loop {
        match read_frame(&mut reader).map_err(io_error(format!("reading {}", path.display())))? {
            Frame::Body(body) => {
                let len = (FRAME_HEADER + body.len()) as u64;
                match record::decode(body) {
                    Ok(Entry::Op(op)) => state.apply(op),
                    Ok(Entry::End) => {
                        offset += len;
                        if !matches!(read_frame(&mut reader), Ok(Frame::End)) {
                            return Err(corrupt(offset, "data after the end record".into()));
                        }
                        return Ok((state, offset));
                    }
                    Err(reason) => return Err(corrupt(offset, reason)),
                }
                offset += len;
            }
            Frame::End => return Err(corrupt(offset, "the base has no end record".into())),
            Frame::Torn(reason) => return Err(corrupt(offset, reason.into())),
        }
    }
}

/// Writes `state` as `base-<generation>.snap` (through a `.tmp` file, fsynced, renamed), then removes the bases
/// and logs it replaces. Returns the base's size.
pub(super) fn write_base(dir: &Path, generation: u64, state: &State) -> io::Result<u64> {
    let path = base_path(dir, generation);
    let tmp = path.with_extension("snap.tmp");
    let written = (|| {
        let mut file = File::create(&tmp)?;
        file.write_all(BASE_MAGIC)?;
        let mut len = BASE_MAGIC.len() as u64;
        state.encode_all(IO_CHUNK, |chunk| {
            len += chunk.len() as u64;
            file.write_all(chunk)
        })?;
        file.sync_all()?;
        Ok(len)
    })();
    let len = match written {
        Ok(len) => len,
        Err(e) => {
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
    };
    fs::rename(&tmp, &path)?;
    sync_dir(dir)?;
    remove_older(dir, generation)?;
    Ok(len)
}
