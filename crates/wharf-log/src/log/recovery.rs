//! Opening a log: listing the directory, loading or rebuilding segment
//! indexes, trusting the active segment only with a valid clean-shutdown
//! marker, and otherwise scanning it and truncating a torn tail (FORMAT.md,
//! "Open and recovery").

use std::collections::BTreeSet;

use super::*;

impl Inner {
    pub(super) fn open(dir: &Path, config: LogConfig) -> Result<Inner, LogError> {
        let storage = Arc::clone(&config.storage);
        let dir = dir.to_path_buf();
        let dir_err = |op| {
            let d = dir.clone();
            move |e| LogError::io(d, op, e)
        };
        storage
            .create_dir_all(&dir)
            .map_err(dir_err(IoOp::CreateDir))?;
        let names = storage.list(&dir).map_err(dir_err(IoOp::List))?;
        let mut bases = BTreeSet::new();
        let mut index_files = Vec::new();
        let mut marker_present = false;
        for name in names {
            if name == MARKER_NAME {
                marker_present = true;
            } else if name.ends_with(".tmp") {
                remove_if_exists(&*storage, &dir.join(&name))?;
            } else if let Some(b) = parse_name(&name, ".log") {
                bases.insert(b);
            } else if let Some(b) =
                parse_name(&name, ".index").or_else(|| parse_name(&name, ".timeindex"))
            {
                index_files.push((b, name));
            }
        }
        // Index files whose segment is gone (retention crashed midway).
        for (b, name) in index_files {
            if !bases.contains(&b) {
                remove_if_exists(&*storage, &dir.join(name))?;
            }
        }
        let marker = if marker_present {
            read_small_file(&*storage, &dir.join(MARKER_NAME))?
                .and_then(|b| CleanMarker::decode(&b))
        } else {
            None
        };
        if bases.is_empty() {
            let path = dir.join(log_name(0));
            storage
                .open(&path, true)
                .map_err(|e| LogError::io(&path, IoOp::Open, e))?;
            storage.sync_dir(&dir).map_err(dir_err(IoOp::SyncDir))?;
            bases.insert(0);
        }
        let bases: Vec<u64> = bases.into_iter().collect();
        let now = config.clock.now_ms();
        let interval = config.index_interval_bytes;
        let mut segments: Vec<Arc<Segment>> = Vec::with_capacity(bases.len());
        let mut damage: Vec<Damage> = Vec::new();
        for (i, &base) in bases.iter().enumerate() {
            let last = i + 1 == bases.len();
            let path = dir.join(log_name(base));
            let file = storage
                .open(&path, false)
                .map_err(|e| LogError::io(&path, IoOp::Open, e))?;
            let len = file.size().map_err(|e| LogError::io(&path, IoOp::Len, e))?;
            let trusted =
                !last || marker.is_some_and(|m| m.active_base == base && m.active_len == len);
            let loaded = if trusted {
                load_index(&*storage, &dir, base, len)?
            } else {
                None
            };
            let loaded =
                loaded.filter(|(_, next)| !last || marker.is_some_and(|m| m.next_offset == *next));
            let (index, len, next) = match loaded {
                Some((index, next)) => (index, len, next),
                None if !last => {
                    let out = scan_resync(&*file, base, len, interval)
                        .map_err(|e| LogError::io(&path, IoOp::Read, e))?;
                    let mut found = out.damaged;
                    if let Some((pos, reason)) = out.tail {
                        // A sealed segment was synced when it was rolled:
                        // bad bytes at its end are damage, not a torn write.
                        // The next segment's base tells where it ends.
                        found.push(Damaged {
                            pos,
                            end_pos: len,
                            start: out.next_offset,
                            end: bases[i + 1],
                            reason,
                        });
                    }
                    let next = if found.is_empty() {
                        write_index_files(&*storage, &dir, base, &out.index, len, out.next_offset)?;
                        out.next_offset
                    } else {
                        bases[i + 1]
                    };
                    for d in found {
                        damage.push(detected(&config, &path, d));
                    }
                    (out.index, len, next)
                }
                None => {
                    let mut out = scan_resync(&*file, base, len, interval)
                        .map_err(|e| LogError::io(&path, IoOp::Read, e))?;
                    if config.truncate_corrupt_tail {
                        if let Some(first) = out.damaged.first() {
                            // Asked to keep only the prefix before any damage.
                            let cut = scan(&*file, base, first.pos, interval)
                                .map_err(|e| LogError::io(&path, IoOp::Read, e))?;
                            out = FullScan {
                                index: cut.index,
                                valid_len: cut.valid_len,
                                next_offset: cut.next_offset,
                                damaged: Vec::new(),
                                tail: Some((first.pos, first.reason.clone())),
                            };
                        }
                    }
                    if let Some((pos, reason)) = &out.tail {
                        // A torn tail: nothing in it was acknowledged as
                        // durable (an fdatasync would have completed it).
                        file.set_len(out.valid_len)
                            .map_err(|e| LogError::io(&path, IoOp::SetLen, e))?;
                        file.sync_data()
                            .map_err(|e| LogError::io(&path, IoOp::SyncData, e))?;
                        config.integrity_stats.on_torn_tail();
                        tracing::warn!(
                            path = %path.display(),
                            position = pos,
                            dropped_bytes = len - out.valid_len,
                            next_offset = out.next_offset,
                            %reason,
                            "recovery truncated a torn tail (never acknowledged)"
                        );
                    }
                    for d in std::mem::take(&mut out.damaged) {
                        damage.push(detected(&config, &path, d));
                    }
                    (out.index, out.valid_len, out.next_offset)
                }
            };
            if let Some(prev) = segments.last() {
                let prev_end = prev.state().written_end;
                if prev_end != base {
                    return Err(LogError::corrupt(
                        &prev.path,
                        prev.state().written_len,
                        CorruptKind::OffsetMismatch {
                            expected: base,
                            found: prev_end,
                        },
                    ));
                }
            }
            segments.push(Arc::new(Segment::new(
                base, path, file, index, len, next, now,
            )));
        }
        if marker_present {
            let m = dir.join(MARKER_NAME);
            storage
                .remove(&m)
                .map_err(|e| LogError::io(&m, IoOp::Remove, e))?;
            storage.sync_dir(&dir).map_err(dir_err(IoOp::SyncDir))?;
        }
        let active = match segments.last() {
            Some(s) => Arc::clone(s),
            None => unreachable_segments(&dir)?,
        };
        let next_offset = active.state().written_end;
        Ok(Inner {
            dir,
            storage,
            writer: Mutex::new(Writer {
                active,
                lsn: 0,
                epoch: 0,
                closed: false,
                pending: Vec::new(),
                pending_pos: 0,
                visible_lsn: 0,
            }),
            segments: RwLock::new(segments),
            sync: GroupCommit::default(),
            next_offset: AtomicU64::new(next_offset),
            failed: OnceLock::new(),
            cuts: Mutex::default(),
            closed: AtomicBool::new(false),
            stop: Mutex::new(false),
            stop_cv: Condvar::new(),
            rewrite: RwLock::new(()),
            has_damage: AtomicBool::new(!damage.is_empty()),
            damage: Mutex::new(damage),
            config,
        })
    }
}

/// Turns a damaged stretch found by a scan into a [`Damage`], logging and
/// counting it.
pub(super) fn detected(config: &LogConfig, path: &Path, d: Damaged) -> Damage {
    let damage = Damage {
        path: path.to_path_buf(),
        position: d.pos,
        end_position: d.end_pos,
        start_offset: d.start,
        end_offset: d.end,
        reason: d.reason,
    };
    log_detected(config, &damage);
    damage
}

pub(super) fn log_detected(config: &LogConfig, d: &Damage) {
    config.integrity_stats.on_detected();
    tracing::error!(
        path = %d.path.display(),
        position = d.position,
        end_position = d.end_position,
        first_offset = d.start_offset,
        end_offset = d.end_offset,
        reason = %d.reason,
        "damaged batch detected: its records are not served until it is repaired"
    );
}

fn unreachable_segments(dir: &Path) -> Result<Arc<Segment>, LogError> {
    // `open` always creates segment 0 in an empty directory, so this is
    // only reachable if the storage lied about the listing.
    Err(LogError::io(
        dir,
        IoOp::List,
        io::Error::new(io::ErrorKind::NotFound, "no segment after recovery"),
    ))
}

fn read_small_file(storage: &dyn Storage, path: &Path) -> Result<Option<Vec<u8>>, LogError> {
    let file = match storage.open(path, false) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(LogError::io(path, IoOp::Open, e)),
    };
    let len = file.size().map_err(|e| LogError::io(path, IoOp::Len, e))?;
    if len > 1 << 30 {
        return Ok(None);
    }
    let mut buf = vec![0u8; len as usize];
    read_exact_at(&*file, &mut buf, 0).map_err(|e| LogError::io(path, IoOp::Read, e))?;
    Ok(Some(buf))
}

fn load_index(
    storage: &dyn Storage,
    dir: &Path,
    base: u64,
    len: u64,
) -> Result<Option<(SegmentIndex, u64)>, LogError> {
    let Some(offsets) = read_small_file(storage, &dir.join(index_name(base)))? else {
        return Ok(None);
    };
    let Some(times) = read_small_file(storage, &dir.join(time_index_name(base)))? else {
        return Ok(None);
    };
    Ok(SegmentIndex::decode(&offsets, &times, base, len))
}
