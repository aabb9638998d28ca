//! The PC's real-time clock, an MC146818 at ports 0x70 (index; bit 7 masks NMI) and 0x71
//! (data) (Motorola MC146818A datasheet; QEMU `hw/rtc/mc146818rtc.c` for what guests expect).
//!
//! The time starts at the host's UTC time and runs with the guest's TSC; the guest may set it
//! (register B's SET bit). Modelled: seconds to year and the century at CMOS 0x32, BCD or
//! binary (DM) and 12/24-hour (register B), the update-in-progress bit (register A: the 244 us
//! before each second's update), the alarm with its "don't care" values, the update-ended and
//! alarm flags of register C (read clears them) with IRQ 8 when enabled, register D's valid
//! RAM bit, and the other 114 bytes of CMOS RAM. Not modelled: the periodic interrupt (PIE)
//! and daylight saving (DSE).

/// Index port (bit 7: NMI disable).
pub const INDEX: u16 = 0x70;
pub const DATA: u16 = 0x71;

const SECONDS: usize = 0x00;
const SECONDS_ALARM: usize = 0x01;
const MINUTES: usize = 0x02;
const MINUTES_ALARM: usize = 0x03;
const HOURS: usize = 0x04;
const HOURS_ALARM: usize = 0x05;
const DAY_OF_WEEK: usize = 0x06;
const DAY_OF_MONTH: usize = 0x07;
const MONTH: usize = 0x08;
const YEAR: usize = 0x09;
const REG_A: usize = 0x0A;
const REG_B: usize = 0x0B;
const REG_C: usize = 0x0C;
const REG_D: usize = 0x0D;
const CENTURY: usize = 0x32;

const A_UIP: u8 = 0x80;
const B_SET: u8 = 0x80;
const B_AIE: u8 = 0x20;
const B_UIE: u8 = 0x10;
const B_DM_BINARY: u8 = 0x04;
const B_24H: u8 = 0x02;
const C_IRQF: u8 = 0x80;
const C_AF: u8 = 0x20;
const C_UF: u8 = 0x10;
const D_VRT: u8 = 0x80;
/// An alarm byte of 0xC0-0xFF matches every value.
const DONT_CARE: u8 = 0xC0;
/// The update cycle's length: UIP is set this long before each second ends.
const UIP_NS: u64 = 244_000;

/// What the clock did as time passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Tick {
    /// IRQ 8 went up (an enabled flag was set).
    pub irq: bool,
    /// The alarm matched (whether or not its interrupt is enabled).
    pub alarm: bool,
}

#[derive(Debug, Clone)]
pub struct Rtc {
    cmos: [u8; 128],
    index: u8,
    /// Seconds since 1970 at guest TSC `epoch`.
    base: i64,
    epoch: u64,
    tsc_khz: u64,
    /// The last whole second the clock has processed (alarms and update flags).
    seen: i64,
}

impl Rtc {
    /// A clock showing `unix_seconds` at guest TSC `now`: 24-hour BCD, as BIOSes leave it.
    pub fn new(unix_seconds: i64, tsc_khz: u64, now: u64) -> Self {
        let mut cmos = [0u8; 128];
        cmos[REG_A] = 0x26;
        cmos[REG_B] = B_24H;
        cmos[REG_D] = D_VRT;
        Rtc { cmos, index: 0, base: unix_seconds, epoch: now, tsc_khz: tsc_khz.max(1), seen: unix_seconds }
    }

    pub fn claims(port: u16) -> bool {
        port == INDEX || port == DATA
    }

    fn nanos(&self, now: u64) -> u128 {
        u128::from(now.wrapping_sub(self.epoch)) * 1_000_000 / u128::from(self.tsc_khz)
    }

    /// Seconds since 1970 and nanoseconds into the second, at guest TSC `now`.
    fn time(&self, now: u64) -> (i64, u64) {
        let ns = self.nanos(now);
        (self.base + (ns / 1_000_000_000) as i64, (ns % 1_000_000_000) as u64)
    }

    fn encode(&self, v: u8) -> u8 {
        if self.cmos[REG_B] & B_DM_BINARY != 0 {
            v
        } else {
            (v / 10) << 4 | (v % 10)
        }
    }

    fn decode(&self, v: u8) -> u8 {
        if self.cmos[REG_B] & B_DM_BINARY != 0 {
            v
        } else {
            (v >> 4) * 10 + (v & 0xF)
        }
    }

    fn encode_hour(&self, h: u8) -> u8 {
        if self.cmos[REG_B] & B_24H != 0 {
            return self.encode(h);
        }
        let pm = if h >= 12 { 0x80 } else { 0 };
        let h12 = match h % 12 {
            0 => 12,
            x => x,
        };
        self.encode(h12) | pm
    }

    fn decode_hour(&self, v: u8) -> u8 {
        if self.cmos[REG_B] & B_24H != 0 {
            return self.decode(v);
        }
        let h = self.decode(v & 0x7F) % 12;
        if v & 0x80 != 0 {
            h + 12
        } else {
            h
        }
    }

    pub fn port_read(&mut self, port: u16, now: u64) -> u8 {
        if port == INDEX {
            return 0xFF;
        }
        self.tick(now);
        let i = usize::from(self.index);
        let (secs, ns) = self.time(now);
        let civil = Civil::from_unix(secs);
        match i {
            SECONDS => self.encode(civil.second),
            MINUTES => self.encode(civil.minute),
            HOURS => self.encode_hour(civil.hour),
            DAY_OF_WEEK => self.encode(civil.weekday + 1),
            DAY_OF_MONTH => self.encode(civil.day),
            MONTH => self.encode(civil.month),
            YEAR => self.encode((civil.year % 100) as u8),
            CENTURY => self.encode((civil.year / 100) as u8),
            REG_A => {
                let uip = self.cmos[REG_B] & B_SET == 0 && ns >= 1_000_000_000 - UIP_NS;
                self.cmos[REG_A] & !A_UIP | if uip { A_UIP } else { 0 }
            }
            REG_C => std::mem::take(&mut self.cmos[REG_C]),
            _ => self.cmos[i],
        }
    }

    /// A write; the time registers set the clock (the new time counts from this moment).
    pub fn port_write(&mut self, port: u16, value: u8, now: u64) {
        if port == INDEX {
            self.index = value & 0x7F;
            return;
        }
        self.tick(now);
        let i = usize::from(self.index);
        match i {
            SECONDS | MINUTES | HOURS | DAY_OF_MONTH | MONTH | YEAR | CENTURY => {
                let (secs, _) = self.time(now);
                let mut c = Civil::from_unix(secs);
                match i {
                    SECONDS => c.second = self.decode(value).min(59),
                    MINUTES => c.minute = self.decode(value).min(59),
                    HOURS => c.hour = self.decode_hour(value).min(23),
                    DAY_OF_MONTH => c.day = self.decode(value).clamp(1, 31),
                    MONTH => c.month = self.decode(value).clamp(1, 12),
                    YEAR => c.year = c.year / 100 * 100 + i64::from(self.decode(value) % 100),
                    _ => c.year = i64::from(self.decode(value)) * 100 + c.year % 100,
                }
                self.base = c.to_unix();
                self.epoch = now;
                self.seen = self.base;
            }
            REG_A => self.cmos[REG_A] = value & !A_UIP,
            REG_B => self.cmos[REG_B] = value,
            // Registers C and D are read-only.
            REG_C | REG_D => {}
            _ => self.cmos[i] = value,
        }
    }

    fn alarm_matches(&self, secs: i64) -> bool {
        let c = Civil::from_unix(secs);
        let field = |alarm: usize, value: u8, hour: bool| {
            let a = self.cmos[alarm];
            a & DONT_CARE == DONT_CARE || (if hour { self.decode_hour(a) } else { self.decode(a) }) == value
        };
        field(SECONDS_ALARM, c.second, false)
            && field(MINUTES_ALARM, c.minute, false)
            && field(HOURS_ALARM, c.hour, true)
    }

    /// Processes the updates (each second's end) up to `now`: UF, and AF when the alarm
    /// matches; IRQF and IRQ 8 when an enabled flag is set.
    pub fn tick(&mut self, now: u64) -> Tick {
        let (secs, _) = self.time(now);
        if secs <= self.seen || self.cmos[REG_B] & B_SET != 0 {
            self.seen = self.seen.max(secs);
            return Tick::default();
        }
        // The alarm can only match within a day of seconds.
        let first = (self.seen + 1).max(secs - 86_400);
        let alarm = (first..=secs).any(|s| self.alarm_matches(s));
        self.seen = secs;
        let mut flags = C_UF;
        if alarm {
            flags |= C_AF;
        }
        let before = self.cmos[REG_C];
        let enabled = flags & (self.cmos[REG_B] & (B_AIE | B_UIE));
        self.cmos[REG_C] |= flags;
        let irq = enabled != 0 && before & C_IRQF == 0;
        if enabled != 0 {
            self.cmos[REG_C] |= C_IRQF;
        }
        Tick { irq, alarm }
    }

    /// IRQ 8's level: register C's IRQF.
    pub fn irq_line(&self) -> bool {
        self.cmos[REG_C] & C_IRQF != 0
    }

    /// The guest TSC of the next update, when an interrupt may come of it (AIE or UIE set).
    pub fn next_deadline(&self) -> Option<u64> {
        if self.cmos[REG_B] & (B_AIE | B_UIE) == 0 {
            return None;
        }
        self.next_second()
    }

    /// The guest TSC of the next update.
    pub fn next_second(&self) -> Option<u64> {
        let elapsed_s = (self.seen + 1 - self.base).max(0) as u128;
        let t = elapsed_s * 1_000_000_000 * u128::from(self.tsc_khz) / 1_000_000;
        Some(self.epoch.wrapping_add(t as u64))
    }
}

/// A UTC calendar time (proleptic Gregorian).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Civil {
    year: i64,
    month: u8,
    day: u8,
    hour: u8,
    minute: u8,
    second: u8,
    /// 0 = Sunday.
    weekday: u8,
}

impl Civil {
    fn from_unix(secs: i64) -> Self {
        let days = secs.div_euclid(86_400);
        let rem = secs.rem_euclid(86_400);
        // Days to civil date: eras of 400 years, years from March.
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z.rem_euclid(146_097);
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = (doy - (153 * mp + 2) / 5 + 1) as u8;
        let month = if mp < 10 { mp + 3 } else { mp - 9 } as u8;
        let year = yoe + era * 400 + i64::from(month <= 2);
        Civil {
            year,
            month,
            day,
            hour: (rem / 3600) as u8,
            minute: (rem / 60 % 60) as u8,
            second: (rem % 60) as u8,
            weekday: (days + 4).rem_euclid(7) as u8,
        }
    }

    fn to_unix(self) -> i64 {
        let y = self.year - i64::from(self.month <= 2);
        let era = y.div_euclid(400);
        let yoe = y.rem_euclid(400);
        let m = i64::from(self.month);
        let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(self.day) - 1;
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
        let days = era * 146_097 + doe - 719_468;
        days * 86_400 + i64::from(self.hour) * 3600 + i64::from(self.minute) * 60 + i64::from(self.second)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 1 GHz TSC: one second is 1e9 ticks.
    const KHZ: u64 = 1_000_000;
    const S: u64 = 1_000_000_000;
    /// 2026-11-30 03:04:05 UTC, a Monday.
    const T0: i64 = 1_796_007_845;

    fn read(rtc: &mut Rtc, reg: u8, now: u64) -> u8 {
        rtc.port_write(INDEX, reg, now);
        rtc.port_read(DATA, now)
    }

    fn write(rtc: &mut Rtc, reg: u8, value: u8, now: u64) {
        rtc.port_write(INDEX, reg, now);
        rtc.port_write(DATA, value, now);
    }

    #[test]
    fn civil_time_round_trips() {
        let c = Civil::from_unix(T0);
        assert_eq!((c.year, c.month, c.day, c.hour, c.minute, c.second, c.weekday), (2026, 11, 30, 3, 4, 5, 1));
        assert_eq!(c.to_unix(), T0);
        let leap = Civil::from_unix(951_782_400); // 2000-02-29
        assert_eq!((leap.year, leap.month, leap.day), (2000, 2, 29));
        assert_eq!(leap.to_unix(), 951_782_400);
    }

    #[test]
    fn reads_the_time_in_bcd_and_it_runs_with_the_tsc() {
        let mut rtc = Rtc::new(T0, KHZ, 0);
        assert_eq!(read(&mut rtc, 0x00, 0), 0x05);
        assert_eq!(read(&mut rtc, 0x02, 0), 0x04);
        assert_eq!(read(&mut rtc, 0x04, 0), 0x03);
        assert_eq!(read(&mut rtc, 0x07, 0), 0x30);
        assert_eq!(read(&mut rtc, 0x08, 0), 0x11);
        assert_eq!(read(&mut rtc, 0x09, 0), 0x26);
        assert_eq!(read(&mut rtc, 0x32, 0), 0x20);
        assert_eq!(read(&mut rtc, 0x00, 10 * S), 0x15);
    }

    #[test]
    fn binary_and_12_hour_modes() {
        let mut rtc = Rtc::new(T0 + 12 * 3600, KHZ, 0); // 15:04:05
        write(&mut rtc, 0x0B, B_DM_BINARY, 0);
        assert_eq!(read(&mut rtc, 0x04, 0), 0x83, "3 PM in binary 12-hour mode");
        assert_eq!(read(&mut rtc, 0x00, 0), 5);
    }

    #[test]
    fn uip_is_set_in_the_last_244_us_of_each_second() {
        let mut rtc = Rtc::new(T0, KHZ, 0);
        assert_eq!(read(&mut rtc, 0x0A, S / 2) & A_UIP, 0);
        assert_eq!(read(&mut rtc, 0x0A, S - 100_000) & A_UIP, A_UIP);
        assert_eq!(read(&mut rtc, 0x0A, S) & A_UIP, 0);
    }

    #[test]
    fn a_dont_care_alarm_fires_every_second_and_register_c_clears_on_read() {
        let mut rtc = Rtc::new(T0, KHZ, 0);
        for r in [0x01, 0x03, 0x05] {
            write(&mut rtc, r, DONT_CARE, 0);
        }
        write(&mut rtc, 0x0B, B_24H | B_AIE, 0);
        assert_eq!(rtc.next_deadline(), Some(S));
        assert_eq!(rtc.tick(S - 1), Tick::default());
        assert_eq!(rtc.tick(S), Tick { irq: true, alarm: true });
        assert_eq!(read(&mut rtc, 0x0C, S), C_IRQF | C_AF | C_UF);
        assert_eq!(read(&mut rtc, 0x0C, S), 0);
        assert_eq!(rtc.next_deadline(), Some(2 * S));
    }

    #[test]
    fn an_alarm_at_a_set_time_fires_only_then() {
        let mut rtc = Rtc::new(T0, KHZ, 0);
        write(&mut rtc, 0x01, 0x10, 0); // :10 seconds
        write(&mut rtc, 0x03, 0x04, 0);
        write(&mut rtc, 0x05, 0x03, 0);
        write(&mut rtc, 0x0B, B_24H | B_AIE, 0);
        assert!(!rtc.tick(4 * S).alarm);
        let t = rtc.tick(6 * S);
        assert!(t.alarm && t.irq);
    }

    #[test]
    fn the_guest_sets_the_time() {
        let mut rtc = Rtc::new(T0, KHZ, 0);
        write(&mut rtc, 0x0B, B_SET | B_24H, 0);
        write(&mut rtc, 0x04, 0x23, 0);
        write(&mut rtc, 0x02, 0x59, 0);
        write(&mut rtc, 0x0B, B_24H, 0);
        assert_eq!(read(&mut rtc, 0x04, 0), 0x23);
        assert_eq!(read(&mut rtc, 0x02, 0), 0x59);
        assert_eq!(read(&mut rtc, 0x00, 0), 0x05);
    }

    #[test]
    fn cmos_ram_keeps_its_bytes_and_d_reports_valid_ram() {
        let mut rtc = Rtc::new(T0, KHZ, 0);
        write(&mut rtc, 0x40, 0xAB, 0);
        assert_eq!(read(&mut rtc, 0x40, 0), 0xAB);
        assert_eq!(read(&mut rtc, 0x0D, 0), D_VRT);
        // The NMI-disable bit of the index is not part of the register number.
        assert_eq!(read(&mut rtc, 0x80 | 0x40, 0), 0xAB);
    }
}
