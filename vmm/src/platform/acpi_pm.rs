//! The ACPI fixed hardware of the PC's power management (ACPI 6.x 4.8), at QEMU PIIX4's ports:
//! the PM1a event block (PM1_STS, PM1_EN) at 0x600, the PM1a control block at 0x604 and the
//! 24-bit PM timer (3.579545 MHz) at 0x608, which `machine::acpi`'s FADT points at.
//!
//! PM1_CNT.SLP_EN with SLP_TYP 1 (the DSDT's \_S3) puts the machine to sleep in S3, SLP_TYP 0
//! (\_S5) powers it off: `write` returns these as effects for the run loop. An RTC alarm wakes
//! S3 when PM1_EN.RTC_EN is set, setting RTC_STS and WAK_STS. SCI_EN reads 1 (no SMI command
//! port: ACPI mode is always on). Not modelled: the SCI interrupt, TMR_STS on the timer's
//! bit 23, the power button, GPE blocks.

/// PM1a event block: PM1_STS at +0, PM1_EN at +2.
pub const PM1A_EVT: u16 = 0x600;
/// PM1a control block.
pub const PM1A_CNT: u16 = 0x604;
/// The PM timer.
pub const PM_TMR: u16 = 0x608;
/// SLP_TYP values, as the DSDT's \_S3 and \_S5 name them.
pub const SLP_TYP_S3: u8 = 1;
pub const SLP_TYP_S5: u8 = 0;
/// The PM timer's rate, Hz.
pub const PM_TIMER_HZ: u64 = 3_579_545;

const RTC_STS: u16 = 1 << 10;
const WAK_STS: u16 = 1 << 15;
const RTC_EN: u16 = 1 << 10;
const SCI_EN: u16 = 1;
const SLP_EN: u16 = 1 << 13;
/// The PM1_STS bits that exist here (TMR, BM, GBL, PWRBTN, SLPBTN, RTC, WAK).
const STS_BITS: u16 = 0x8731;
/// The PM1_EN bits that exist here (TMR_EN, GBL_EN, PWRBTN_EN, SLPBTN_EN, RTC_EN).
const EN_BITS: u16 = 0x0721;

/// What a write asks of the machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    None,
    /// Enter S3: stop the processor until a wake event, then resume through the FACS.
    SleepS3,
    /// Enter S5: power off.
    PowerOff,
}

#[derive(Debug, Clone)]
pub struct AcpiPm {
    sts: u16,
    en: u16,
    /// SCI_EN and the other control bits kept (SLP_EN is write-only).
    cnt: u16,
    /// Guest TSC at PM timer 0, and the TSC's rate.
    epoch: u64,
    tsc_khz: u64,
}

impl AcpiPm {
    pub fn new(tsc_khz: u64, now: u64) -> Self {
        AcpiPm { sts: 0, en: 0, cnt: SCI_EN, epoch: now, tsc_khz: tsc_khz.max(1) }
    }

    pub fn claims(port: u16) -> bool {
        (PM1A_EVT..PM_TMR + 4).contains(&port)
    }

    fn timer(&self, now: u64) -> u32 {
        let ticks =
            u128::from(now.wrapping_sub(self.epoch)) * u128::from(PM_TIMER_HZ) / (u128::from(self.tsc_khz) * 1000);
        (ticks as u32) & 0x00FF_FFFF
    }

    /// The 32 bits at `base`: the register file as bytes from PM1A_EVT on.
    fn dword(&self, base: u16, now: u64) -> u32 {
        match base {
            PM1A_EVT => u32::from(self.sts) | u32::from(self.en) << 16,
            PM1A_CNT => u32::from(self.cnt),
            _ => self.timer(now),
        }
    }

    /// A read of `size` bytes at `port`, byte by byte from the registers it covers.
    pub fn read(&self, port: u16, size: usize, now: u64) -> u32 {
        let mut v = 0u32;
        for i in 0..size.min(4) {
            let p = port.wrapping_add(i as u16);
            let byte = if Self::claims(p) {
                let base = PM1A_EVT + (p - PM1A_EVT) / 4 * 4;
                (self.dword(base, now) >> (8 * (p - base))) as u8
            } else {
                0xFF
            };
            v |= u32::from(byte) << (8 * i);
        }
        v
    }

    /// A write of `size` bytes at `port`. PM1_STS bits are cleared by writing 1 (4.8.3.1).
    pub fn write(&mut self, port: u16, size: usize, value: u32) -> Effect {
        let mut effect = Effect::None;
        let mut i = 0;
        while i < size.min(4) {
            let p = port.wrapping_add(i as u16);
            let v = value >> (8 * i);
            // A 16-bit register written whole when the access covers both its bytes.
            let whole = p.is_multiple_of(2) && i + 1 < size;
            let (reg, shift, mask) = (p & !1, 8 * (p & 1), if whole { 0xFFFF } else { 0xFF });
            let bits = ((v & mask) as u16) << shift;
            let touched = (mask as u16) << shift;
            match reg {
                PM1A_EVT => self.sts &= !(bits & STS_BITS),
                r if r == PM1A_EVT + 2 => self.en = (self.en & !touched) | (bits & EN_BITS),
                PM1A_CNT => {
                    self.cnt = (self.cnt & !touched) | (bits & !SLP_EN) | SCI_EN;
                    let cnt = bits | (self.cnt & !touched);
                    if bits & SLP_EN != 0 {
                        effect = match ((cnt >> 10) & 7) as u8 {
                            SLP_TYP_S3 => Effect::SleepS3,
                            SLP_TYP_S5 => Effect::PowerOff,
                            other => {
                                tracing::debug!(
                                    slp_typ = other,
                                    "PM1_CNT: a sleep type the DSDT does not name: ignored"
                                );
                                Effect::None
                            }
                        };
                    }
                }
                _ => {}
            }
            i += if whole { 2 } else { 1 };
        }
        effect
    }

    /// An RTC alarm while asleep: whether it wakes the machine (RTC_EN), with RTC_STS and
    /// WAK_STS then set (4.8.3.1).
    pub fn rtc_wakes(&mut self) -> bool {
        self.sts |= RTC_STS;
        if self.en & RTC_EN != 0 {
            self.sts |= WAK_STS;
            return true;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s3_and_s5_by_slp_typ_with_slp_en() {
        let mut pm = AcpiPm::new(1_000_000, 0);
        assert_eq!(pm.write(PM1A_CNT, 2, 0x0400), Effect::None, "SLP_TYP without SLP_EN");
        assert_eq!(pm.write(PM1A_CNT, 2, 0x2400), Effect::SleepS3);
        assert_eq!(pm.write(PM1A_CNT, 2, 0x2000), Effect::PowerOff);
        assert_eq!(pm.write(PM1A_CNT, 2, 0x2800), Effect::None, "SLP_TYP 2 is no sleep type here");
        // SLP_EN reads 0; SCI_EN reads 1.
        assert_eq!(pm.read(PM1A_CNT, 2, 0) & 0x2001, 1);
    }

    #[test]
    fn slp_en_in_the_high_byte_alone_sleeps_with_the_type_written_before() {
        let mut pm = AcpiPm::new(1_000_000, 0);
        pm.write(PM1A_CNT + 1, 1, 0x04);
        assert_eq!(pm.write(PM1A_CNT + 1, 1, 0x24), Effect::SleepS3);
    }

    #[test]
    fn an_rtc_alarm_wakes_only_with_rtc_en_and_sts_clears_by_writing_one() {
        let mut pm = AcpiPm::new(1_000_000, 0);
        assert!(!pm.rtc_wakes());
        assert_eq!(pm.read(PM1A_EVT, 2, 0), u32::from(RTC_STS));
        pm.write(PM1A_EVT + 2, 2, u32::from(RTC_EN));
        assert!(pm.rtc_wakes());
        assert_eq!(pm.read(PM1A_EVT, 4, 0), u32::from(RTC_STS | WAK_STS) | u32::from(RTC_EN) << 16);
        pm.write(PM1A_EVT, 2, u32::from(WAK_STS));
        assert_eq!(pm.read(PM1A_EVT, 2, 0), u32::from(RTC_STS));
    }

    #[test]
    fn the_pm_timer_counts_at_3_58_mhz_in_24_bits() {
        // 1 GHz TSC: 1 s is 3,579,545 ticks; 5 s wraps past 2^24.
        let pm = AcpiPm::new(1_000_000, 0);
        assert_eq!(pm.read(PM_TMR, 4, 1_000_000_000), 3_579_545);
        assert_eq!(pm.read(PM_TMR, 4, 5_000_000_000), (5 * 3_579_545) & 0xFF_FFFF);
    }
}
