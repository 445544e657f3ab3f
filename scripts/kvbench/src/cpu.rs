//! CPU time of a process, from Linux's /proc: user and system time of all
//! its threads.

use std::time::Duration;

/// /proc counts in ticks of USER_HZ, 1/100 s on the usual Linux platforms
/// (x86 and ARM among them).
const TICKS_PER_SECOND: u64 = 100;

pub fn of_process(pid: u32) -> Option<Duration> {
    parse(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

pub fn of_self() -> Option<Duration> {
    parse(&std::fs::read_to_string("/proc/self/stat").ok()?)
}

/// utime and stime are the 14th and 15th fields. The 2nd, the command
/// name in parentheses, may hold spaces: count from the last `)`.
fn parse(stat: &str) -> Option<Duration> {
    let after_name = &stat[stat.rfind(')')? + 1..];
    let mut fields = after_name.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(Duration::from_millis(
        (utime + stime) * 1000 / TICKS_PER_SECOND,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_user_and_system_ticks() {
        let stat = "42 (a (b) c) S 1 42 42 0 -1 4194560 100 0 0 0 150 25 0 0 20 0 3 0";
        assert_eq!(parse(stat), Some(Duration::from_millis(1750)));
    }

    #[test]
    fn this_process_has_used_some_time() {
        let spin = std::time::Instant::now();
        while spin.elapsed() < Duration::from_millis(50) {}
        assert!(of_self().is_some_and(|used| used > Duration::ZERO));
    }
}
