//! The broker's CPU time and resident memory, read from `/proc/<pid>/stat` and `/proc/<pid>/status` (Linux).

use std::time::Instant;

use anyhow::Context;

/// Clock ticks per second for `/proc/<pid>/stat` times when the auxiliary vector does not say (Linux's usual USER_HZ).
const DEFAULT_CLK_TCK: u64 = 100;

/// One reading of a process.
#[derive(Clone, Copy, Debug)]
pub struct ProcSample {
    pub at: Instant,
    /// User + system CPU time in clock ticks.
    pub cpu_ticks: u64,
    pub rss_kb: u64,
}

/// Samples process `pid`.
#[derive(Clone, Debug)]
pub struct ProcWatch {
    pid: u32,
    ticks_per_sec: u64,
}

impl ProcWatch {
    /// Fails when the process does not exist (a wrong `--broker-pid` is caught before the run).
    pub fn new(pid: u32) -> anyhow::Result<ProcWatch> {
        let watch = ProcWatch { pid, ticks_per_sec: clock_ticks() };
        watch.sample().with_context(|| format!("cannot read /proc/{pid}: is --broker-pid a running process?"))?;
        Ok(watch)
    }

    pub fn sample(&self) -> anyhow::Result<ProcSample> {
        let at = Instant::now();
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid))?;
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid))?;
        Ok(ProcSample { at, cpu_ticks: parse_cpu_ticks(&stat)?, rss_kb: parse_status_kb(&status, "VmRSS:")? })
    }

    /// CPU use between two samples, in percent of one core.
    pub fn cpu_percent(&self, from: &ProcSample, to: &ProcSample) -> f64 {
        let wall = to.at.duration_since(from.at).as_secs_f64();
        if wall <= 0.0 {
            return 0.0;
        }
        let cpu = to.cpu_ticks.saturating_sub(from.cpu_ticks) as f64 / self.ticks_per_sec as f64;
        100.0 * cpu / wall
    }
}

/// utime + stime (fields 14 and 15) of a `/proc/<pid>/stat` line; the command name in parentheses may hold spaces.
pub fn parse_cpu_ticks(stat: &str) -> anyhow::Result<u64> {
    let after_name = stat.rsplit_once(')').map(|(_, rest)| rest).context("no ')' in /proc stat")?;
    // After the name, field 3 (state) is first, so utime (14) is at index 11 and stime (15) at 12.
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let field = |idx: usize| -> anyhow::Result<u64> {
        fields.get(idx).context("short /proc stat line")?.parse::<u64>().context("bad number in /proc stat")
    };
    Ok(field(11)? + field(12)?)
}

/// A `kB` value such as `VmRSS:` from `/proc/<pid>/status`.
pub fn parse_status_kb(status: &str, key: &str) -> anyhow::Result<u64> {
    let line = status.lines().find(|line| line.starts_with(key)).with_context(|| format!("no {key} in status"))?;
    line[key.len()..].split_whitespace().next().context("empty status value")?.parse().context("bad number in status")
}

/// USER_HZ from the auxiliary vector (AT_CLKTCK = 17), which is what sysconf(_SC_CLK_TCK) reads.
fn clock_ticks() -> u64 {
    const AT_CLKTCK: u64 = 17;
    let Ok(auxv) = std::fs::read("/proc/self/auxv") else { return DEFAULT_CLK_TCK };
    auxv.chunks_exact(16)
        .filter_map(|pair| {
            let key = u64::from_ne_bytes(pair[..8].try_into().ok()?);
            let value = u64::from_ne_bytes(pair[8..].try_into().ok()?);
            (key == AT_CLKTCK && value > 0).then_some(value)
        })
        .next()
        .unwrap_or(DEFAULT_CLK_TCK)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_spaces_in_the_name() {
        let stat = "1234 (my broker) S 1 1234 1234 0 -1 4194560 500 0 0 0 250 75 0 0 20 0 8 0 100 1000 200";
        assert_eq!(parse_cpu_ticks(stat).expect("parses"), 325);
        assert!(parse_cpu_ticks("garbage").is_err());
    }

    #[test]
    fn parses_status_values() {
        let status = "Name:\tmosquitto\nVmHWM:\t   9000 kB\nVmRSS:\t    8123 kB\n";
        assert_eq!(parse_status_kb(status, "VmRSS:").expect("parses"), 8123);
        assert_eq!(parse_status_kb(status, "VmHWM:").expect("parses"), 9000);
        assert!(parse_status_kb(status, "VmSwap:").is_err());
    }

    #[test]
    fn watches_our_own_process() {
        let watch = ProcWatch::new(std::process::id()).expect("our own pid exists");
        let sample = watch.sample().expect("readable");
        assert!(sample.rss_kb > 0);
        assert!(watch.ticks_per_sec > 0);
        assert!(ProcWatch::new(u32::MAX).is_err());
    }
}
