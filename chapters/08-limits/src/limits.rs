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

// ANCHOR: tests
#[cfg(test)]
mod tests {
    use super::*;

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
// ANCHOR_END: tests
