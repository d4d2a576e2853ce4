//! This process's resource use — CPU time, resident memory, open files —
//! for `/metrics` (the standard `process_*` series), the `Info` call and
//! `wharf bench`, which reads the server's CPU time before and after a load
//! to report CPU per message next to the in-process figure; and raising the
//! open-files limit at start, which the connection cap stays below.

use std::time::Duration;

/// What the process has used so far; a field is `None` where the platform
/// does not report it.
#[derive(Debug, Clone, Copy, Default)]
pub struct Usage {
    /// User plus system CPU time of every thread, since the process started.
    pub cpu: Option<Duration>,
    /// Resident set size.
    pub resident_bytes: Option<u64>,
    /// Open file descriptors.
    pub open_fds: Option<u64>,
}

/// This process's [`Usage`] now.
pub fn usage() -> Usage {
    Usage {
        cpu: cpu_time(),
        resident_bytes: resident_bytes(),
        open_fds: open_fds(),
    }
}

/// User plus system CPU time of the whole process (`getrusage`).
#[cfg(unix)]
#[allow(unsafe_code)] // audited: one libc call, see SAFETY
pub fn cpu_time() -> Option<Duration> {
    // SAFETY: `getrusage` only writes the struct it is given, which is
    // plain data and fully initialized by a zeroed value.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) } != 0 {
        return None;
    }
    let tv = |t: libc::timeval| {
        Duration::from_secs(u64::try_from(t.tv_sec).ok()?)
            .checked_add(Duration::from_micros(u64::try_from(t.tv_usec).ok()?))
    };
    tv(ru.ru_utime)?.checked_add(tv(ru.ru_stime)?)
}

/// User plus system CPU time of the whole process (not reported here).
#[cfg(not(unix))]
pub fn cpu_time() -> Option<Duration> {
    None
}

/// Resident set size (`/proc/self/statm`).
#[cfg(target_os = "linux")]
#[allow(unsafe_code)] // audited: one libc call, see SAFETY
pub fn resident_bytes() -> Option<u64> {
    // statm: size resident shared text lib data dt, in pages.
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Some(pages * u64::try_from(page).ok()?)
}

/// Resident set size (not reported here).
#[cfg(not(target_os = "linux"))]
pub fn resident_bytes() -> Option<u64> {
    None
}

#[cfg(target_os = "linux")]
fn open_fds() -> Option<u64> {
    // The directory's own handle is one of the entries while it is read.
    Some(
        std::fs::read_dir("/proc/self/fd")
            .ok()?
            .count()
            .saturating_sub(1) as u64,
    )
}

#[cfg(not(target_os = "linux"))]
fn open_fds() -> Option<u64> {
    None
}

/// Raises this process's soft limit on open files to its hard limit where
/// the OS allows it, so the connection cap can sit just below it; returns
/// the soft limit in force afterwards (`None` where it cannot be read).
#[cfg(unix)]
#[allow(unsafe_code)] // audited: two libc calls on a plain struct, see SAFETY
pub fn raise_fd_limit() -> Option<u64> {
    // SAFETY: `getrlimit`/`setrlimit` read and write only the plain struct
    // they are given, fully initialized by a zeroed value.
    let mut lim: libc::rlimit = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return None;
    }
    if lim.rlim_cur < lim.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            lim.rlim_cur = lim.rlim_max;
        }
    }
    Some(lim.rlim_cur)
}

/// Raises this process's soft limit on open files (not supported here).
#[cfg(not(unix))]
pub fn raise_fd_limit() -> Option<u64> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_time_grows_with_work() {
        let t0 = cpu_time().expect("getrusage works here");
        // Busy until 20 ms more CPU time is reported (10 s at most).
        let start = std::time::Instant::now();
        let mut x = 0u64;
        let grew = loop {
            for _ in 0..100_000 {
                x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
            }
            let t = cpu_time().expect("getrusage works here");
            if t >= t0 + Duration::from_millis(20) {
                break true;
            }
            if start.elapsed() > Duration::from_secs(10) {
                break false;
            }
        };
        assert!(grew, "CPU time stayed near {t0:?} through 10 s of work");
    }

    #[test]
    fn resident_memory_and_open_files_are_counted() {
        let u = usage();
        let rss = u.resident_bytes.expect("statm on linux");
        assert!(rss > 1 << 20, "a test process holds more than 1 MiB: {rss}");
        let block = std::hint::black_box(vec![1u8; 64 << 20]);
        let grown = resident_bytes().expect("statm on linux");
        assert!(
            grown >= rss + (48 << 20),
            "64 MiB touched: {rss} -> {grown}"
        );
        drop(block);

        let fds = u.open_fds.expect("/proc/self/fd on linux");
        let files: Vec<_> = (0..32)
            .map(|_| std::fs::File::open("/proc/self/statm").expect("opens"))
            .collect();
        let more = open_fds().expect("counts");
        // Other tests of this process may close a few files meanwhile.
        assert!(more >= fds + 16, "32 files opened: {fds} -> {more}");
        drop(files);
    }
}
