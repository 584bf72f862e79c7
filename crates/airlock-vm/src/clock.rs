//! The guest's clock under software emulation. QEMU's TCG returns the host's own time stamp
//! counter (TSC) to the guest's `rdtsc`, and the guest's kernel keeps time with it. microvm
//! has no PIT or HPET to calibrate the TSC against, so the host measures the frequency and
//! passes it on the kernel command line. With a wrong value, the guest's clock runs fast or
//! slow by the same factor.

use std::time::{Duration, Instant};

/// How long the measurement runs. Preemption between the two readings of a sample shifts
/// it by microseconds, which over this span is an error of about 0.01%.
const MEASUREMENT: Duration = Duration::from_millis(100);

/// Measures the host's TSC frequency in kHz against the monotonic clock; `None` when this
/// is not an x86-64 host or the counter does not advance.
pub fn measure_tsc_khz() -> Option<u64> {
    let (start_ticks, start) = sample()?;
    std::thread::sleep(MEASUREMENT);
    let (end_ticks, end) = sample()?;
    let nanos = u64::try_from(end.duration_since(start).as_nanos()).ok()?;
    let ticks = end_ticks.checked_sub(start_ticks)?;
    let khz = u128::from(ticks) * 1_000_000 / u128::from(nanos.max(1));
    u64::try_from(khz).ok().filter(|&khz| khz > 0)
}

/// Reads the TSC on both sides of the monotonic clock and returns their midpoint with it.
#[cfg(target_arch = "x86_64")]
fn sample() -> Option<(u64, Instant)> {
    // SAFETY: rdtsc reads a counter and touches no memory; every x86-64 CPU has it.
    let before = unsafe { std::arch::x86_64::_rdtsc() };
    let now = Instant::now();
    // SAFETY: as above.
    let after = unsafe { std::arch::x86_64::_rdtsc() };
    Some((before / 2 + after / 2, now))
}

#[cfg(not(target_arch = "x86_64"))]
fn sample() -> Option<(u64, Instant)> {
    None
}

/// Returns the host's wall clock in nanoseconds since the Unix epoch, for the agent to set
/// the guest's clock to.
pub fn host_time() -> Option<u64> {
    let since_epoch = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?;
    u64::try_from(since_epoch.as_nanos()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg(target_arch = "x86_64")]
    fn tsc_frequency_measured_in_plausible_range() {
        let khz = measure_tsc_khz().expect("a TSC frequency");
        // From 100 MHz to 10 GHz: any x86-64 CPU of the last two decades.
        assert!((100_000..10_000_000).contains(&khz), "{khz} kHz");
    }
}
