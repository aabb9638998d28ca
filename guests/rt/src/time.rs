//! The TSC's rate, for guests that compare TSC readings with times: from KVM's paravirtual
//! clock (its TSC-to-ns multiplier and shift), else CPUID 0x15, else CPUID 0x16's base
//! frequency, each with the margin its rounding needs.

use core::sync::atomic::{AtomicU32, Ordering};

use crate::io::{cpuid, wrmsr};

const MSR_KVM_SYSTEM_TIME_NEW: u32 = 0x4B56_4D01;
const KVM_FEATURE_CLOCKSOURCE2: u32 = 1 << 3;

/// The TSC rate in kHz, with the margin (in parts per thousand) lower bounds allow for its
/// rounding.
#[derive(Clone, Copy)]
pub struct Rate {
    pub khz: u64,
    pub slack_permille: u64,
}

impl Rate {
    /// TSC ticks of `ns` nanoseconds, less the margin.
    pub fn ticks_at_least(&self, ns: u64) -> u64 {
        ns * self.khz / 1_000_000 * (1000 - self.slack_permille) / 1000
    }

    /// TSC ticks of `ns` nanoseconds.
    pub fn ticks(&self, ns: u64) -> u64 {
        ns * self.khz / 1_000_000
    }

    /// Microseconds of `ticks` TSC ticks.
    pub fn us(&self, ticks: u64) -> u64 {
        ticks.saturating_mul(1000) / self.khz.max(1)
    }
}

#[repr(C, align(64))]
struct PvClock([AtomicU32; 8]);
/// KVM's pvclock_vcpu_time_info as 32-bit words: version (0), pad, tsc_timestamp (2-3),
/// system_time (4-5), tsc_to_system_mul (6), then tsc_shift (i8) and flags (u8) in word 7.
static PVCLOCK: PvClock = PvClock([const { AtomicU32::new(0) }; 8]);

fn kvmclock_khz() -> Option<u64> {
    let [_, b, c, d] = cpuid(0x4000_0000, 0);
    if [b, c, d] != [0x4B4D_564B, 0x564B_4D56, 0x4D] {
        return None;
    }
    if cpuid(0x4000_0001, 0)[0] & KVM_FEATURE_CLOCKSOURCE2 == 0 {
        return None;
    }
    wrmsr(MSR_KVM_SYSTEM_TIME_NEW, PVCLOCK.0.as_ptr() as u64 | 1);
    let mut fields = None;
    for _ in 0..1000 {
        let version = PVCLOCK.0[0].load(Ordering::SeqCst);
        let mul = PVCLOCK.0[6].load(Ordering::SeqCst);
        let shift = PVCLOCK.0[7].load(Ordering::SeqCst) as u8 as i8;
        if version != 0 && version.is_multiple_of(2) && version == PVCLOCK.0[0].load(Ordering::SeqCst) && mul != 0 {
            fields = Some((mul, shift));
            break;
        }
        // An exit lets KVM publish the clock.
        cpuid(0, 0);
    }
    wrmsr(MSR_KVM_SYSTEM_TIME_NEW, 0);
    let (mul, shift) = fields?;
    // ns = (ticks << shift) * mul >> 32, so kHz = 10^6 * 2^32 / mul / 2^shift.
    let khz = (1_000_000u64 << 32) / u64::from(mul);
    Some(if shift >= 0 { khz >> shift } else { khz << -shift })
}

/// The TSC rate and a line saying where it came from; `None` (also said) when nothing tells.
pub fn tsc_rate() -> Option<Rate> {
    if let Some(khz) = kvmclock_khz() {
        crate::println!("TSC rate ", khz, " kHz from KVM's paravirtual clock");
        return Some(Rate { khz, slack_permille: 1 });
    }
    let max = cpuid(0, 0)[0];
    if max >= 0x15 {
        let [a, b, c, _] = cpuid(0x15, 0);
        if a != 0 && b != 0 && c != 0 {
            let khz = u64::from(c) * u64::from(b) / u64::from(a) / 1000;
            crate::println!("TSC rate ", khz, " kHz from CPUID 0x15");
            return Some(Rate { khz, slack_permille: 1 });
        }
    }
    if max >= 0x16 {
        let mhz = cpuid(0x16, 0)[0] & 0xFFFF;
        if mhz != 0 {
            crate::println!("TSC rate ", mhz, " MHz from CPUID 0x16 (base frequency)");
            return Some(Rate { khz: u64::from(mhz) * 1000, slack_permille: 10 });
        }
    }
    crate::println!("TSC rate unknown (no KVM clock, no CPUID 0x15/0x16): timer checks are ordering only");
    None
}
