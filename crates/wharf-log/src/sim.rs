//! [`SimStorage`]: an in-memory [`Storage`] for tests that remembers, per
//! file, what the last completed `sync_data` made durable. It can inject
//! short writes, fsync failures and ENOSPC (also at the n-th write or
//! sync), count reads, and simulate a crash that drops unsynced bytes at a
//! chosen cut.
//!
//! Simplification (documented in FORMAT.md): directory operations
//! (create, remove, rename) are durable at once.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::storage::{Storage, StorageFile};

/// Counters of the I/O a [`SimStorage`] has served.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SimStats {
    /// `read_at` calls.
    pub reads: u64,
    /// Bytes returned by `read_at`.
    pub bytes_read: u64,
    /// `write_at` calls.
    pub writes: u64,
    /// Bytes accepted by `write_at`.
    pub bytes_written: u64,
    /// Successful `sync_data` calls.
    pub syncs: u64,
}

#[derive(Debug, Default)]
struct Faults {
    fail_syncs: u32,
    write_budget: Option<u64>,
    max_write_chunk: Option<usize>,
    /// (successful `write_at` calls still allowed, errno of the next one).
    nth_write: Option<(u64, i32)>,
    /// (successful `sync_data` calls still allowed, errno of the next one).
    nth_sync: Option<(u64, i32)>,
}

/// Counts one call down; `Some(errno)` when this call must fail.
fn countdown(fault: &mut Option<(u64, i32)>) -> Option<i32> {
    match fault {
        Some((0, errno)) => {
            let errno = *errno;
            *fault = None;
            Some(errno)
        }
        Some((n, _)) => {
            *n -= 1;
            None
        }
        None => None,
    }
}

/// A file's bytes. `data[..synced_len]` is durable unless `shadow` holds
/// the durable contents (set when a durable byte is overwritten or cut
/// before the next sync), which keeps syncs O(1) for append-only use.
#[derive(Debug, Default)]
struct FileData {
    data: Vec<u8>,
    synced_len: usize,
    shadow: Option<Vec<u8>>,
}

impl FileData {
    fn durable_prefix(&self) -> usize {
        match &self.shadow {
            None => self.synced_len.min(self.data.len()),
            Some(d) => self
                .data
                .iter()
                .zip(d.iter())
                .take_while(|(a, b)| a == b)
                .count(),
        }
    }

    fn before_change(&mut self, pos: usize) {
        if self.shadow.is_none() && pos < self.synced_len {
            self.shadow = Some(self.data[..self.synced_len].to_vec());
        }
    }
}

#[derive(Debug, Default)]
struct SimState {
    generation: u64,
    paths: BTreeMap<PathBuf, usize>,
    files: HashMap<usize, FileData>,
    next_id: usize,
    dirs: BTreeSet<PathBuf>,
    faults: Faults,
    stats: SimStats,
}

/// In-memory storage with fault injection and crash simulation.
///
/// Clones share the same state. After [`SimStorage::crash`], this value and
/// every file handle opened through it fail all operations (the "process"
/// died); use the returned value to reopen.
///
/// ```
/// use std::sync::Arc;
/// use wharf_log::{Durability, Log, LogConfig, LogError, Record, SimStorage};
///
/// let config = |s: &SimStorage| {
///     LogConfig::builder()
///         .storage(Arc::new(s.clone()))
///         .durability(Durability::Always)
///         .build()
/// };
/// let sim = SimStorage::new();
/// let log = Log::open("/log", config(&sim)?)?;
/// log.append(&[Record::new(0, "acknowledged")])?;
///
/// // The next fdatasync fails: the append errors, the log cuts it and
/// // goes on.
/// sim.fail_next_syncs(1);
/// assert!(log.append(&[Record::new(1, "lost")]).is_err());
/// log.append(&[Record::new(2, "after")])?;
/// // The disk fills: a typed error, nothing stored, and no fail-stop.
/// sim.fail_writes_after(0);
/// let err = log.append(&[Record::new(3, "full")]).unwrap_err();
/// assert!(err.is_storage_full());
/// sim.clear_faults();
///
/// // Power cut: bytes not covered by a completed sync are dropped.
/// let after = sim.crash(|_path, _unsynced_len| 0);
/// drop(log);
/// let log = Log::open("/log", config(&after)?)?;
/// assert_eq!(log.end_offset(), 2);
/// # Ok::<(), LogError>(())
/// ```
#[derive(Debug, Clone, Default)]
pub struct SimStorage {
    shared: Arc<Mutex<SimState>>,
    generation: u64,
}

fn crashed() -> io::Error {
    io::Error::other("simulated process has crashed")
}

fn lock(m: &Mutex<SimState>) -> MutexGuard<'_, SimState> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl SimStorage {
    /// An empty file system.
    pub fn new() -> Self {
        SimStorage::default()
    }

    fn state(&self) -> io::Result<MutexGuard<'_, SimState>> {
        let st = lock(&self.shared);
        if st.generation != self.generation {
            return Err(crashed());
        }
        Ok(st)
    }

    /// Simulates a crash: for every file, keeps what the last sync made
    /// durable plus the first `keep(path, unsynced_len)` of the bytes
    /// written since (clamped), and drops the rest. Returns the storage
    /// as seen by the next process.
    pub fn crash(&self, mut keep: impl FnMut(&Path, u64) -> u64) -> SimStorage {
        let mut st = lock(&self.shared);
        st.generation += 1;
        let generation = st.generation;
        let live: BTreeMap<PathBuf, usize> = st.paths.clone();
        for (path, id) in &live {
            if let Some(f) = st.files.get_mut(id) {
                let p = f.durable_prefix();
                let unsynced = (f.data.len() - p) as u64;
                let k = keep(path, unsynced).min(unsynced) as usize;
                f.data.truncate(p + k);
                f.synced_len = f.data.len();
                f.shadow = None;
            }
        }
        let ids: BTreeSet<usize> = live.values().copied().collect();
        st.files.retain(|id, _| ids.contains(id));
        SimStorage {
            shared: Arc::clone(&self.shared),
            generation,
        }
    }

    /// Makes the next `n` `sync_data` calls fail with EIO.
    pub fn fail_next_syncs(&self, n: u32) {
        lock(&self.shared).faults.fail_syncs = n;
    }

    /// After `bytes` more bytes are written, writes fail with ENOSPC (the
    /// write that crosses the limit is partial).
    pub fn fail_writes_after(&self, bytes: u64) {
        lock(&self.shared).faults.write_budget = Some(bytes);
    }

    /// Lets `n` more `write_at` calls succeed, then fails the next one
    /// (writing nothing) with the OS error `errno` (e.g. 28, ENOSPC).
    pub fn fail_write_after_calls(&self, n: u64, errno: i32) {
        lock(&self.shared).faults.nth_write = Some((n, errno));
    }

    /// Lets `n` more `sync_data` calls succeed, then fails the next one
    /// with the OS error `errno` (e.g. 5, EIO; 28, ENOSPC).
    pub fn fail_sync_after_calls(&self, n: u64, errno: i32) {
        lock(&self.shared).faults.nth_sync = Some((n, errno));
    }

    /// Makes every `write_at` accept at most `max` bytes (short writes).
    pub fn set_short_writes(&self, max: Option<usize>) {
        lock(&self.shared).faults.max_write_chunk = max.map(|m| m.max(1));
    }

    /// Removes all injected faults.
    pub fn clear_faults(&self) {
        lock(&self.shared).faults = Faults::default();
    }

    /// I/O counters since creation or the last [`SimStorage::reset_stats`].
    pub fn stats(&self) -> SimStats {
        lock(&self.shared).stats
    }

    /// Zeroes the I/O counters.
    pub fn reset_stats(&self) {
        lock(&self.shared).stats = SimStats::default();
    }

    /// Names of the files in `dir`, sorted.
    pub fn file_names(&self, dir: &Path) -> Vec<String> {
        let st = lock(&self.shared);
        st.paths
            .keys()
            .filter(|p| p.parent() == Some(dir))
            .filter_map(|p| p.file_name().and_then(|n| n.to_str()).map(str::to_owned))
            .collect()
    }

    /// Current contents of a file (including unsynced bytes).
    pub fn contents(&self, path: &Path) -> Option<Vec<u8>> {
        let st = lock(&self.shared);
        let id = st.paths.get(path)?;
        st.files.get(id).map(|f| f.data.clone())
    }

    /// Overwrites the whole file, durably (test corruption helper).
    pub fn set_contents(&self, path: &Path, bytes: &[u8]) {
        let mut st = lock(&self.shared);
        let id = match st.paths.get(path) {
            Some(id) => *id,
            None => {
                let id = st.next_id;
                st.next_id += 1;
                st.paths.insert(path.to_path_buf(), id);
                id
            }
        };
        st.files.insert(
            id,
            FileData {
                data: bytes.to_vec(),
                synced_len: bytes.len(),
                shadow: None,
            },
        );
    }
}

impl Storage for SimStorage {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        self.state()?.dirs.insert(dir.to_path_buf());
        Ok(())
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let st = self.state()?;
        if !st.dirs.contains(dir) {
            return Err(io::ErrorKind::NotFound.into());
        }
        drop(st);
        Ok(self.file_names(dir))
    }

    fn open(&self, path: &Path, create: bool) -> io::Result<Arc<dyn StorageFile>> {
        let mut st = self.state()?;
        let id = match st.paths.get(path) {
            Some(id) => *id,
            None if create => {
                let id = st.next_id;
                st.next_id += 1;
                st.paths.insert(path.to_path_buf(), id);
                st.files.insert(id, FileData::default());
                id
            }
            None => return Err(io::ErrorKind::NotFound.into()),
        };
        Ok(Arc::new(SimFile {
            shared: Arc::clone(&self.shared),
            generation: self.generation,
            id,
        }))
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        let mut st = self.state()?;
        match st.paths.remove(path) {
            Some(_) => Ok(()),
            None => Err(io::ErrorKind::NotFound.into()),
        }
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut st = self.state()?;
        let id = st.paths.remove(from).ok_or(io::ErrorKind::NotFound)?;
        st.paths.insert(to.to_path_buf(), id);
        Ok(())
    }

    fn sync_dir(&self, _dir: &Path) -> io::Result<()> {
        self.state().map(|_| ())
    }
}

#[derive(Debug)]
struct SimFile {
    shared: Arc<Mutex<SimState>>,
    generation: u64,
    id: usize,
}

impl SimFile {
    fn state(&self) -> io::Result<MutexGuard<'_, SimState>> {
        let st = lock(&self.shared);
        if st.generation != self.generation {
            return Err(crashed());
        }
        Ok(st)
    }
}

impl StorageFile for SimFile {
    fn read_at(&self, buf: &mut [u8], pos: u64) -> io::Result<usize> {
        let mut st = self.state()?;
        let data = &st.files.get(&self.id).ok_or(io::ErrorKind::NotFound)?.data;
        let n = if pos >= data.len() as u64 {
            0
        } else {
            let start = pos as usize;
            let n = buf.len().min(data.len() - start);
            buf[..n].copy_from_slice(&data[start..start + n]);
            n
        };
        st.stats.reads += 1;
        st.stats.bytes_read += n as u64;
        Ok(n)
    }

    fn write_at(&self, buf: &[u8], pos: u64) -> io::Result<usize> {
        let mut st = self.state()?;
        if let Some(errno) = countdown(&mut st.faults.nth_write) {
            return Err(io::Error::from_raw_os_error(errno));
        }
        let mut n = buf.len();
        if let Some(max) = st.faults.max_write_chunk {
            n = n.min(max);
        }
        if let Some(budget) = st.faults.write_budget {
            if budget == 0 {
                return Err(io::Error::from_raw_os_error(28));
            }
            n = n.min(usize::try_from(budget).unwrap_or(usize::MAX));
            st.faults.write_budget = Some(budget - n as u64);
        }
        let f = st.files.get_mut(&self.id).ok_or(io::ErrorKind::NotFound)?;
        let start = usize::try_from(pos).map_err(|_| io::ErrorKind::InvalidInput)?;
        f.before_change(start);
        if f.data.len() < start + n {
            f.data.resize(start + n, 0);
        }
        f.data[start..start + n].copy_from_slice(&buf[..n]);
        st.stats.writes += 1;
        st.stats.bytes_written += n as u64;
        Ok(n)
    }

    fn sync_data(&self) -> io::Result<()> {
        let mut st = self.state()?;
        if st.faults.fail_syncs > 0 {
            st.faults.fail_syncs -= 1;
            return Err(io::Error::from_raw_os_error(5));
        }
        if let Some(errno) = countdown(&mut st.faults.nth_sync) {
            return Err(io::Error::from_raw_os_error(errno));
        }
        let f = st.files.get_mut(&self.id).ok_or(io::ErrorKind::NotFound)?;
        f.synced_len = f.data.len();
        f.shadow = None;
        st.stats.syncs += 1;
        Ok(())
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        let mut st = self.state()?;
        let f = st.files.get_mut(&self.id).ok_or(io::ErrorKind::NotFound)?;
        let len = usize::try_from(len).map_err(|_| io::ErrorKind::InvalidInput)?;
        f.before_change(len);
        f.data.resize(len, 0);
        Ok(())
    }

    fn size(&self) -> io::Result<u64> {
        let st = self.state()?;
        let f = st.files.get(&self.id).ok_or(io::ErrorKind::NotFound)?;
        Ok(f.data.len() as u64)
    }
}
