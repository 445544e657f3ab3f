//! The limits' defaults: timeouts, and the limits the machine sets,
//! read from the process's own limits so that `kvs` fits where it runs.

use std::time::Duration;

// ANCHOR: timeouts
/// How long a stream or connection may do nothing, unless told otherwise.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(300);
/// How long a frame may take to arrive, unless told otherwise.
pub const DEFAULT_FRAME_TIMEOUT: Duration = Duration::from_secs(30);
/// How long an answer may wait for its reader, unless told otherwise.
pub const DEFAULT_WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// The longest timeout accepted: a year. Much longer, and adding it to
/// the time now would overflow.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(365 * 24 * 3600);
// ANCHOR_END: timeouts

// ANCHOR: seconds
/// Reads a timeout given in seconds on the command line, `30` or `0.25`:
/// more than 0, and at most [`MAX_TIMEOUT`].
pub fn parse_seconds(text: &str) -> Result<Duration, String> {
    let secs: f64 = text
        .parse()
        .map_err(|_| format!("`{text}` is not a number of seconds"))?;
    match Duration::try_from_secs_f64(secs) {
        Ok(timeout) if !timeout.is_zero() && timeout <= MAX_TIMEOUT => Ok(timeout),
        _ => Err("must be more than 0 seconds and at most a year".into()),
    }
}
// ANCHOR_END: seconds

// ANCHOR: max_connections
/// The file descriptors kept for everything but client connections: the
/// listener, the database, logs, and connections being told that the
/// server is full.
pub const RESERVED_FDS: usize = 64;

/// The connection limit when none is set: as many as the process may open
/// files, less [`RESERVED_FDS`], like Redis's `maxclients`. Past it,
/// `accept` would fail with "too many open files", and every new client
/// would be locked out until some connection closes.
pub fn default_max_connections() -> usize {
    let max_files = open_file_limit().unwrap_or(1024);
    max_files.saturating_sub(RESERVED_FDS).max(1)
}

/// The soft limit on open files (`ulimit -n`), if there is one.
#[cfg(unix)]
fn open_file_limit() -> Option<usize> {
    let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile);
    limit.current.and_then(|n| usize::try_from(n).ok())
}

#[cfg(not(unix))]
fn open_file_limit() -> Option<usize> {
    None
}
// ANCHOR_END: max_connections

// ANCHOR: memory_limit
/// How much memory this process may use: the smallest of its address
/// space limit (`ulimit -v`), its cgroup's `memory.max` (a container's
/// limit) and the machine's physical memory. The memory budgets' defaults
/// are shares of it, as the connection limit's is of the file limit.
pub fn memory_available() -> usize {
    let limits = [
        address_space_limit(),
        cgroup_memory_limit(),
        physical_memory(),
    ];
    limits.into_iter().flatten().min().unwrap_or(1 << 30)
}

/// The soft limit on address space (`ulimit -v`), if there is one.
#[cfg(unix)]
fn address_space_limit() -> Option<usize> {
    let limit = rustix::process::getrlimit(rustix::process::Resource::As);
    limit.current.and_then(|n| usize::try_from(n).ok())
}

#[cfg(not(unix))]
fn address_space_limit() -> Option<usize> {
    None
}

/// The `memory.max` of this process's cgroup (version 2), if it has one.
fn cgroup_memory_limit() -> Option<usize> {
    // "0::/some/path": the cgroup, below where cgroups are mounted.
    let cgroup = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let path = cgroup.lines().find_map(|line| line.strip_prefix("0::"))?;
    let max = std::fs::read_to_string(format!("/sys/fs/cgroup{path}/memory.max")).ok()?;
    max.trim().parse().ok() // "max" means none, and does not parse
}

/// The machine's memory, from `/proc/meminfo` ("MemTotal: 16318480 kB").
fn physical_memory() -> Option<usize> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = meminfo.lines().find(|line| line.starts_with("MemTotal:"))?;
    let kib: usize = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

/// The budget of all client connections together when none is set: a
/// quarter of [`memory_available`]. The rest is for the stored data, the
/// program itself, what each connection costs whatever it does (its TLS
/// state, tasks and yamux's bookkeeping), and the allocator's slack.
pub fn default_client_memory() -> usize {
    memory_available() / 4
}
// ANCHOR_END: memory_limit

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_memory_available_is_at_most_the_address_space_limit() {
        let available = memory_available();
        assert!(available > 0);
        if let Some(limit) = address_space_limit() {
            assert!(available <= limit, "{available} > {limit}");
        }
        if let Some(physical) = physical_memory() {
            assert!(available <= physical, "{available} > {physical}");
        }
    }

    #[test]
    fn timeouts_are_seconds_from_a_little_over_0_to_a_year() {
        assert_eq!(parse_seconds("0.25"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_seconds("30"), Ok(Duration::from_secs(30)));
        for bad in ["0", "-1", "1e19", "NaN", "soon"] {
            assert!(parse_seconds(bad).is_err(), "{bad}");
        }
        assert!(parse_seconds("-1").unwrap_err().contains("more than 0"));
        assert!(parse_seconds("soon").unwrap_err().contains("`soon`"));
    }

    #[test]
    fn the_default_connection_limit_leaves_room_below_the_file_limit() {
        let max = default_max_connections();
        assert!(max >= 1);
        if let Some(files) = open_file_limit() {
            assert!(max + RESERVED_FDS <= files.max(RESERVED_FDS + 1), "{max}");
        }
    }
}
