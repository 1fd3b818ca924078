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
    // SAFETY: sysconf has no preconditions.
    let tick = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Ok(Cpu {
        user_us: utime * 1_000_000 / tick,
        sys_us: stime * 1_000_000 / tick,
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
    // SAFETY: sysconf has no preconditions.
    let tick = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Ok(busy * 1_000_000 / tick)
}
