//! Clocks, the latency histogram, and what the tool reads about processes from `/proc`.

use std::fs;

use serde::{Deserialize, Serialize};

/// Nanoseconds on CLOCK_MONOTONIC: one clock for every process of the machine, so the
/// publisher's stamp and a worker's receipt time compare directly.
pub fn now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Raises this process's open-file limit to its hard limit; returns the new soft limit.
pub fn raise_fd_limit() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain get/setrlimit on a valid struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return 0;
        }
        limit.rlim_cur = limit.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
    }
    limit.rlim_cur
}

/// Sub-buckets per power of two: 64, so a bucket is at most 1/64 (1.6 %) wide.
const SUB_BITS: u32 = 6;
const SUB: u64 = 1 << SUB_BITS;

/// A log-linear histogram of nanosecond values (HDR-like, 1.6 % resolution), cheap to record
/// into and to merge across worker processes.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Histogram {
    #[serde(with = "sparse")]
    counts: Vec<u64>,
    pub total: u64,
    pub sum: u64,
    pub max: u64,
}

fn bucket(value: u64) -> usize {
    if value < SUB {
        return value as usize;
    }
    let k = 63 - value.leading_zeros();
    let shift = k - SUB_BITS;
    ((shift as u64) * SUB + (value >> shift)) as usize
}

/// The upper bound of a bucket (so percentiles never understate).
fn bucket_high(index: usize) -> u64 {
    let index = index as u64;
    if index < 2 * SUB {
        return index;
    }
    let shift = index / SUB - 1;
    let mantissa = index % SUB + SUB;
    ((mantissa + 1) << shift) - 1
}

impl Histogram {
    pub fn record(&mut self, value: u64) {
        let index = bucket(value);
        if index >= self.counts.len() {
            self.counts.resize(index + 1, 0);
        }
        self.counts[index] += 1;
        self.total += 1;
        self.sum = self.sum.saturating_add(value);
        self.max = self.max.max(value);
    }

    pub fn merge(&mut self, other: &Histogram) {
        if other.counts.len() > self.counts.len() {
            self.counts.resize(other.counts.len(), 0);
        }
        for (mine, theirs) in self.counts.iter_mut().zip(&other.counts) {
            *mine += theirs;
        }
        self.total += other.total;
        self.sum = self.sum.saturating_add(other.sum);
        self.max = self.max.max(other.max);
    }

    /// The value at quantile `q` (0..=1), as the upper bound of its bucket (capped at max).
    pub fn quantile(&self, q: f64) -> u64 {
        if self.total == 0 {
            return 0;
        }
        let rank = ((q * self.total as f64).ceil() as u64).clamp(1, self.total);
        let mut seen = 0;
        for (index, count) in self.counts.iter().enumerate() {
            seen += count;
            if seen >= rank {
                return bucket_high(index).min(self.max);
            }
        }
        self.max
    }

    pub fn mean(&self) -> f64 {
        if self.total == 0 {
            0.0
        } else {
            self.sum as f64 / self.total as f64
        }
    }
}

/// Serialises the bucket counts as `[[index, count], …]` for the non-empty buckets only.
mod sparse {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(counts: &[u64], serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(
            counts
                .iter()
                .enumerate()
                .filter(|(_, count)| **count > 0)
                .map(|(index, count)| (index, *count)),
        )
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<u64>, D::Error> {
        let pairs: Vec<(usize, u64)> = Vec::deserialize(deserializer)?;
        let mut counts = vec![0; pairs.iter().map(|(index, _)| index + 1).max().unwrap_or(0)];
        for (index, count) in pairs {
            counts[index] = count;
        }
        Ok(counts)
    }
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 { ticks as f64 } else { 100.0 }
}

/// What a process has used so far (all threads), from `/proc/PID/stat`.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcessTimes {
    pub user: f64,
    pub system: f64,
    /// Page faults served without I/O: mostly first touches of new heap pages, which the
    /// kernel zeroes (and a guest's host may back only then).
    pub minor_faults: f64,
}

impl std::ops::Add for ProcessTimes {
    type Output = ProcessTimes;
    fn add(self, other: ProcessTimes) -> ProcessTimes {
        ProcessTimes {
            user: self.user + other.user,
            system: self.system + other.system,
            minor_faults: self.minor_faults + other.minor_faults,
        }
    }
}

impl std::iter::Sum for ProcessTimes {
    fn sum<I: Iterator<Item = ProcessTimes>>(iter: I) -> ProcessTimes {
        iter.fold(ProcessTimes::default(), |a, b| a + b)
    }
}

/// `/proc/PID/stat`'s times and faults; None when the process is gone.
pub fn process_times(pid: u32) -> Option<ProcessTimes> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces and parentheses: fields start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // minflt, utime and stime are fields 10, 14 and 15 of the line: 8, 12 and 13 after the
    // name.
    let field = |at: usize| fields.get(at)?.parse::<f64>().ok();
    Some(ProcessTimes {
        user: field(11)? / clock_ticks(),
        system: field(12)? / clock_ticks(),
        minor_faults: field(7)?,
    })
}

/// CPU seconds (user + system, all threads) a process has used so far; None when it is
/// gone.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    process_times(pid).map(|times| times.user + times.system)
}

/// Time a CPU core spent busy and stolen by the hypervisor, in seconds, from `/proc/stat`:
/// everything done on the server's core (softirq work run by ksoftirqd included, which
/// the server process's own counters miss under load).
#[derive(Debug, Clone, Copy, Default)]
pub struct CoreTimes {
    pub busy: f64,
    pub softirq: f64,
    pub steal: f64,
}

pub fn core_times(core: u32) -> Option<CoreTimes> {
    let stat = fs::read_to_string("/proc/stat").ok()?;
    let name = format!("cpu{core}");
    let line = stat
        .lines()
        .find(|line| line.split_whitespace().next() == Some(name.as_str()))?;
    let ticks: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is inside user).
    let field = |i: usize| ticks.get(i).copied().unwrap_or(0.0);
    let hz = clock_ticks();
    Some(CoreTimes {
        busy: (field(0) + field(1) + field(2) + field(5) + field(6)) / hz,
        softirq: field(6) / hz,
        steal: field(7) / hz,
    })
}

/// Resident set size in KiB (`VmRSS` of `/proc/PID/status`); None when it is gone.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
}

/// The sum over several processes (nginx's master and workers); None if any is gone.
pub fn sum_over<F: Fn(u32) -> Option<T>, T: std::iter::Sum<T>>(pids: &[u32], read: F) -> Option<T> {
    pids.iter().map(|pid| read(*pid)).sum()
}

/// The 1-minute load average, to tell whether the machine was busy during a run.
pub fn loadavg() -> Option<f64> {
    fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The topic (index) of message `seq`: pseudo-random but the same for the publisher and the
/// workers, so each worker computes how many deliveries to expect without being told.
pub fn topic_of(seq: u64, topics: u64) -> u64 {
    if topics <= 1 { 0 } else { mix(seq) % topics }
}

/// A fast, deterministic pseudo-random mix (SplitMix64): the publisher and the workers derive
/// the same topic from a sequence number without talking to each other.
pub fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_monotonic_and_bounded() {
        let mut last = 0;
        for value in (0..100_000u64).chain([1 << 40, u64::MAX / 2]) {
            let index = bucket(value);
            assert!(index >= last);
            last = index;
            assert!(bucket_high(index) >= value, "{value}");
            assert!(
                bucket_high(index) as f64 <= value as f64 * 1.032 + 1.0,
                "{value}"
            );
        }
    }

    #[test]
    fn quantiles() {
        let mut histogram = Histogram::default();
        for value in 1..=1000u64 {
            histogram.record(value * 1000);
        }
        let p50 = histogram.quantile(0.5);
        assert!((500_000..=510_000).contains(&p50), "{p50}");
        assert_eq!(histogram.quantile(1.0), 1_000_000);
        let json = serde_json::to_string(&histogram).unwrap();
        let back: Histogram = serde_json::from_str(&json).unwrap();
        assert_eq!(back.quantile(0.99), histogram.quantile(0.99));
    }
}
