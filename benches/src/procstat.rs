//! CPU time and resident memory of a process, from /proc.

use anyhow::{Context, Result};

/// CPU time of a process: user and system, in microseconds.
#[derive(Clone, Copy, Debug, Default)]
pub struct Cpu {
    pub user_us: u64,
    pub sys_us: u64,
}

impl Cpu {
    /// User + system.
    pub fn total_us(self) -> u64 {
        self.user_us + self.sys_us
    }
}

/// User and system CPU time of `pid` so far.
pub fn cpu(pid: u32) -> Result<Cpu> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = &stat[stat.rfind(')').context("bad stat")? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields[11].parse()?;
    let stime: u64 = fields[12].parse()?;
    Ok(Cpu {
        user_us: ticks_to_us(utime),
        sys_us: ticks_to_us(stime),
    })
}

/// Resident set size of `pid`, in KiB.
pub fn rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmRSS")
}

/// CPU time the whole machine spent busy so far (user, nice, system, irq, softirq of all
/// CPUs; not idle, iowait or time stolen by the hypervisor), in microseconds.
pub fn machine_busy_us() -> Result<u64> {
    let stat = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
    let line = stat.lines().next().context("empty /proc/stat")?;
    let f: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|v| v.parse().unwrap_or(0))
        .collect();
    // user nice system idle iowait irq softirq steal ...
    let busy = [0, 1, 2, 5, 6]
        .iter()
        .map(|&i| f.get(i).copied().unwrap_or(0))
        .sum::<u64>();
    Ok(ticks_to_us(busy))
}

/// CPU time (microseconds) and context switches of this process's terminated and reaped
/// children so far (pgbench runs).
pub fn children() -> (u64, u64) {
    // SAFETY: an all-zero rusage is valid; getrusage only writes into it.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointer to a rusage.
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru) };
    let us = |t: libc::timeval| t.tv_sec as u64 * 1_000_000 + t.tv_usec as u64;
    (
        us(ru.ru_utime) + us(ru.ru_stime),
        (ru.ru_nvcsw + ru.ru_nivcsw) as u64,
    )
}

/// PostgreSQL's use so far: CPU time in microseconds (live processes named `postgres`, plus
/// what their reaped children, exited backends, used) and context switches (voluntary and not,
/// live processes only). Only the postmasters `of` and their children count (other clusters on
/// a shared machine, such as another engineer's tests, do not); empty `of` counts them all.
pub fn postgres(of: &[i32]) -> (u64, u64) {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return (0, 0);
    };
    let (mut ticks, mut switches) = (0, 0);
    for path in dir.flatten().map(|e| e.path()) {
        if std::fs::read_to_string(path.join("comm")).ok().as_deref() != Some("postgres\n") {
            continue;
        }
        if let Ok(stat) = std::fs::read_to_string(path.join("stat")) {
            // pid is field 1, ppid field 4; utime, stime, cutime, cstime are fields 14-17.
            let after_name = stat
                .rfind(')')
                .and_then(|c| stat.get(c + 2..))
                .unwrap_or("");
            let pid = stat.split_whitespace().next().and_then(|p| p.parse().ok());
            let ppid = after_name
                .split_whitespace()
                .nth(1)
                .and_then(|p| p.parse().ok());
            let ours = |p: Option<i32>| p.is_some_and(|p| of.contains(&p));
            if !of.is_empty() && !ours(pid) && !ours(ppid) {
                continue;
            }
            ticks += after_name
                .split_whitespace()
                .skip(11)
                .take(4)
                .filter_map(|v| v.parse::<u64>().ok())
                .sum::<u64>();
        }
        if let Ok(status) = std::fs::read_to_string(path.join("status")) {
            switches += status
                .lines()
                .filter(|l| l.contains("ctxt_switches:"))
                .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
                .sum::<u64>();
        }
    }
    (ticks_to_us(ticks), switches)
}

/// Clock ticks (the unit of `/proc` CPU times) in microseconds.
fn ticks_to_us(ticks: u64) -> u64 {
    // SAFETY: sysconf has no preconditions.
    let tick = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    ticks * 1_000_000 / tick
}
