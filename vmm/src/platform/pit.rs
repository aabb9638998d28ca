//! The 8254 programmable interval timer of the PC (Intel 8254 datasheet; QEMU `hw/timer/i8254.c`
//! for what guests expect) and the NMI status and control port 0x61 that gates its channel 2.
//!
//! Counters 0-2 at ports 0x40-0x42, the control word at 0x43, clocked at 1.193182 MHz derived
//! from the guest's TSC. Channel 0's OUT is ISA IRQ 0: each rising edge is returned by `tick`
//! for the run loop to raise. Modelled: modes 0-5 (1 and 5 start at the count write, as with
//! the gate of channels 0 and 1 tied high), the four access modes, the counter-latch and
//! read-back commands (count and status), channel 2's gate and OUT through port 0x61.
//!
//! Not modelled: BCD counting (counts are binary; the BCD bit is kept and read back), the
//! one-clock delay between a count write and the start of counting, and a new count in modes 2
//! and 3 waiting for the end of the current period (counting restarts at once, as in QEMU).

/// Counter 0 (IRQ 0).
pub const COUNTER0: u16 = 0x40;
/// Counter 2 (the speaker; gated by port 0x61).
pub const COUNTER2: u16 = 0x42;
/// The control word register.
pub const CONTROL: u16 = 0x43;
/// NMI status and control: bit 0 channel 2's gate, bit 1 speaker data, bit 4 refresh toggle,
/// bit 5 channel 2's OUT.
pub const PORT_61: u16 = 0x61;
/// The input clock, Hz.
pub const CLOCK_HZ: u64 = 1_193_182;

/// How the counter's bytes are read and written (control word bits 5:4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum Access {
    Lsb,
    Msb,
    #[default]
    Word,
}

#[derive(Debug, Clone, Default)]
struct Channel {
    mode: u8,
    bcd: bool,
    access: Access,
    /// The count in effect, 1..=65536 (a written 0 counts 65536).
    reload: u64,
    /// PIT clock at which counting began; None before a count is written (or while gated off).
    start: Option<u64>,
    /// The LSB of a word-access count, waiting for its MSB.
    write_lsb: Option<u8>,
    /// A word-access read has returned the LSB; the MSB comes next.
    read_msb: bool,
    latched: Option<u16>,
    latched_msb: bool,
    status: Option<u8>,
    /// A count was written but counting has not started with it (status bit 6).
    null_count: bool,
    gate: bool,
    /// OUT's rising edges already reported by `tick`.
    edges_seen: u64,
}

impl Channel {
    fn elapsed(&self, clock: u64) -> Option<u64> {
        self.start.map(|s| clock.saturating_sub(s))
    }

    fn count(&self, clock: u64) -> u16 {
        let Some(d) = self.elapsed(clock) else { return self.reload as u16 };
        let n = self.reload;
        let c = match self.mode {
            2 => n - d % n,
            3 => n - (2 * d) % n,
            _ => (n + 0x10000 - d % 0x10000) % 0x10000,
        };
        c as u16
    }

    fn out(&self, clock: u64) -> bool {
        let Some(d) = self.elapsed(clock) else {
            // Mode 0 drives OUT low from the control word on; the others high.
            return self.mode != 0;
        };
        let n = self.reload;
        match self.mode {
            0 | 1 => d >= n,
            2 => d % n != n - 1,
            3 => d % n < n.div_ceil(2),
            _ => d != n,
        }
    }

    /// OUT's rising edges in `(start, start + d]`.
    fn edges(&self, d: u64) -> u64 {
        let n = self.reload;
        match self.mode {
            0 | 1 => u64::from(d >= n),
            2 | 3 => d / n,
            _ => u64::from(d > n),
        }
    }

    /// The PIT clock of OUT's next rising edge after `edges_seen`.
    fn next_edge(&self) -> Option<u64> {
        let s = self.start?;
        let n = self.reload;
        let at = match self.mode {
            0 | 1 if self.edges_seen == 0 => n,
            2 | 3 => (self.edges_seen + 1) * n,
            4 | 5 if self.edges_seen == 0 => n + 1,
            _ => return None,
        };
        Some(s + at)
    }

    fn set_mode(&mut self, value: u8) {
        self.access = match (value >> 4) & 3 {
            1 => Access::Lsb,
            2 => Access::Msb,
            _ => Access::Word,
        };
        // Modes 6 and 7 are 2 and 3 (datasheet: X10, X11).
        self.mode = match (value >> 1) & 7 {
            m @ 6..=7 => m - 4,
            m => m,
        };
        self.bcd = value & 1 != 0;
        self.start = None;
        self.write_lsb = None;
        self.read_msb = false;
        self.null_count = true;
    }

    fn write(&mut self, value: u8, clock: u64) {
        let count = match self.access {
            Access::Lsb => u16::from(value),
            Access::Msb => u16::from(value) << 8,
            Access::Word => match self.write_lsb.take() {
                None => {
                    self.write_lsb = Some(value);
                    return;
                }
                Some(lsb) => u16::from_le_bytes([lsb, value]),
            },
        };
        self.reload = if count == 0 { 0x10000 } else { u64::from(count) };
        self.null_count = false;
        self.edges_seen = 0;
        self.start = self.gate.then_some(clock);
    }

    fn read(&mut self, clock: u64) -> u8 {
        if let Some(s) = self.status.take() {
            return s;
        }
        let (value, msb) = match self.latched {
            Some(l) => {
                let msb = match self.access {
                    Access::Word => {
                        self.latched_msb = !self.latched_msb;
                        !self.latched_msb
                    }
                    a => a == Access::Msb,
                };
                if self.access != Access::Word || msb {
                    self.latched = None;
                    self.latched_msb = false;
                }
                (l, msb)
            }
            None => {
                let msb = match self.access {
                    Access::Word => {
                        self.read_msb = !self.read_msb;
                        !self.read_msb
                    }
                    a => a == Access::Msb,
                };
                (self.count(clock), msb)
            }
        };
        if msb {
            (value >> 8) as u8
        } else {
            value as u8
        }
    }

    fn latch_count(&mut self, clock: u64) {
        if self.latched.is_none() {
            self.latched = Some(self.count(clock));
            self.latched_msb = false;
        }
    }

    fn latch_status(&mut self, clock: u64) {
        if self.status.is_none() {
            let rw = match self.access {
                Access::Lsb => 1,
                Access::Msb => 2,
                Access::Word => 3,
            };
            self.status = Some(
                u8::from(self.out(clock)) << 7
                    | u8::from(self.null_count) << 6
                    | rw << 4
                    | self.mode << 1
                    | u8::from(self.bcd),
            );
        }
    }

    /// The gate input: a rising edge (re)starts counting with the count written (modes 1, 2,
    /// 3, 5 retrigger; 0 and 4 only begin); a low gate stops it.
    fn set_gate(&mut self, high: bool, clock: u64) {
        if high && !self.gate && !self.null_count && self.reload != 0 {
            self.start = Some(clock);
            self.edges_seen = 0;
        } else if !high {
            self.start = None;
        }
        self.gate = high;
    }
}

/// The three counters and port 0x61.
#[derive(Debug, Clone)]
pub struct Pit {
    channels: [Channel; 3],
    /// Guest TSC at PIT clock 0, and the TSC's rate.
    epoch: u64,
    tsc_khz: u64,
    speaker: bool,
    refresh: bool,
}

impl Pit {
    /// A PIT whose clock starts at guest TSC `now`; after reset no counter counts (the
    /// firmware programs them). Channels 0 and 1 have their gates tied high, as on the PC.
    pub fn new(tsc_khz: u64, now: u64) -> Self {
        let mut channels: [Channel; 3] = Default::default();
        channels[0].gate = true;
        channels[1].gate = true;
        Pit { channels, epoch: now, tsc_khz: tsc_khz.max(1), speaker: false, refresh: false }
    }

    pub fn claims(port: u16) -> bool {
        matches!(port, COUNTER0..=CONTROL | PORT_61)
    }

    fn clock(&self, tsc: u64) -> u64 {
        (u128::from(tsc.wrapping_sub(self.epoch)) * u128::from(CLOCK_HZ) / (u128::from(self.tsc_khz) * 1000)) as u64
    }

    fn tsc(&self, clock: u64) -> u64 {
        let t = (u128::from(clock) * u128::from(self.tsc_khz) * 1000).div_ceil(u128::from(CLOCK_HZ));
        self.epoch.wrapping_add(t as u64)
    }

    pub fn port_read(&mut self, port: u16, now: u64) -> u8 {
        let clock = self.clock(now);
        match port {
            COUNTER0..=COUNTER2 => self.channels[usize::from(port - COUNTER0)].read(clock),
            PORT_61 => {
                // The refresh request bit toggles every 15 us on the PC; toggling per read is
                // enough for the loops that wait on it.
                self.refresh = !self.refresh;
                u8::from(self.channels[2].gate)
                    | u8::from(self.speaker) << 1
                    | u8::from(self.refresh) << 4
                    | u8::from(self.channels[2].out(clock)) << 5
            }
            // The control word register cannot be read.
            _ => 0xFF,
        }
    }

    pub fn port_write(&mut self, port: u16, value: u8, now: u64) {
        let clock = self.clock(now);
        match port {
            COUNTER0..=COUNTER2 => self.channels[usize::from(port - COUNTER0)].write(value, clock),
            CONTROL => match value >> 6 {
                3 => {
                    // Read-back: bits 3:1 select counters; bit 5 clear latches counts, bit 4
                    // clear latches status.
                    for (i, ch) in self.channels.iter_mut().enumerate() {
                        if value & (2 << i) != 0 {
                            if value & 0x20 == 0 {
                                ch.latch_count(clock);
                            }
                            if value & 0x10 == 0 {
                                ch.latch_status(clock);
                            }
                        }
                    }
                }
                sel => {
                    let ch = &mut self.channels[usize::from(sel)];
                    if value & 0x30 == 0 {
                        ch.latch_count(clock);
                    } else {
                        ch.set_mode(value);
                    }
                }
            },
            PORT_61 => {
                self.speaker = value & 2 != 0;
                self.channels[2].set_gate(value & 1 != 0, clock);
            }
            _ => {}
        }
    }

    /// Whether channel 0's OUT (IRQ 0) rose since the last call: the line to pulse.
    pub fn tick(&mut self, now: u64) -> bool {
        let clock = self.clock(now);
        let ch = &mut self.channels[0];
        let Some(d) = ch.elapsed(clock) else { return false };
        let edges = ch.edges(d);
        if edges > ch.edges_seen {
            ch.edges_seen = edges;
            return true;
        }
        false
    }

    /// The guest TSC of IRQ 0's next rising edge, if channel 0 will make one.
    pub fn next_deadline(&self) -> Option<u64> {
        self.channels[0].next_edge().map(|c| self.tsc(c))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 1 GHz TSC: one PIT clock is ~838 TSC ticks.
    const KHZ: u64 = 1_000_000;

    fn tsc_of(clock: u64) -> u64 {
        (clock * KHZ * 1000).div_ceil(CLOCK_HZ)
    }

    fn program(pit: &mut Pit, control: u8, count: u16, now: u64) {
        pit.port_write(CONTROL, control, now);
        pit.port_write(COUNTER0, count as u8, now);
        pit.port_write(COUNTER0, (count >> 8) as u8, now);
    }

    fn read_word(pit: &mut Pit, port: u16, now: u64) -> u16 {
        u16::from_le_bytes([pit.port_read(port, now), pit.port_read(port, now)])
    }

    #[test]
    fn no_counter_counts_after_reset() {
        let mut pit = Pit::new(KHZ, 0);
        assert!(!pit.tick(tsc_of(1_000_000)));
        assert_eq!(pit.next_deadline(), None);
    }

    #[test]
    fn mode_2_raises_irq0_once_per_period() {
        let mut pit = Pit::new(KHZ, 0);
        program(&mut pit, 0x34, 1000, 0);
        assert_eq!(pit.next_deadline(), Some(tsc_of(1000)));
        assert!(!pit.tick(tsc_of(999)));
        assert!(pit.tick(tsc_of(1000)));
        assert!(!pit.tick(tsc_of(1500)));
        assert_eq!(pit.next_deadline(), Some(tsc_of(2000)));
        // Periods missed while nobody looked make one edge: the PIC latches edges, not counts.
        assert!(pit.tick(tsc_of(5500)));
        assert_eq!(pit.next_deadline(), Some(tsc_of(6000)));
    }

    #[test]
    fn a_zero_count_is_65536() {
        let mut pit = Pit::new(KHZ, 0);
        program(&mut pit, 0x34, 0, 0);
        assert_eq!(pit.next_deadline(), Some(tsc_of(65536)));
    }

    #[test]
    fn mode_0_interrupts_once_at_terminal_count() {
        let mut pit = Pit::new(KHZ, 0);
        program(&mut pit, 0x30, 100, 0);
        assert!(pit.tick(tsc_of(100)));
        assert_eq!(pit.next_deadline(), None);
        assert!(!pit.tick(tsc_of(100_000)));
        // The counter wraps on and keeps counting down.
        assert_eq!(read_word(&mut pit, COUNTER0, tsc_of(101)), 0xFFFF);
    }

    #[test]
    fn counts_read_down_in_word_access_and_latch_holds_them() {
        let mut pit = Pit::new(KHZ, 0);
        program(&mut pit, 0x34, 1000, 0);
        assert_eq!(read_word(&mut pit, COUNTER0, tsc_of(300)), 700);
        pit.port_write(CONTROL, 0x00, tsc_of(400));
        assert_eq!(read_word(&mut pit, COUNTER0, tsc_of(900)), 600);
        assert_eq!(read_word(&mut pit, COUNTER0, tsc_of(900)), 100);
    }

    #[test]
    fn mode_3_counts_by_two() {
        let mut pit = Pit::new(KHZ, 0);
        program(&mut pit, 0x36, 1000, 0);
        assert_eq!(read_word(&mut pit, COUNTER0, tsc_of(100)), 800);
        assert!(pit.tick(tsc_of(1000)));
    }

    #[test]
    fn read_back_status_reports_out_mode_and_access() {
        let mut pit = Pit::new(KHZ, 0);
        pit.port_write(CONTROL, 0x30, 0);
        // Read-back of counter 0's status only.
        pit.port_write(CONTROL, 0xE2, 0);
        // OUT low, null count, word access, mode 0.
        assert_eq!(pit.port_read(COUNTER0, 0), 0x70);
        pit.port_write(COUNTER0, 10, 0);
        pit.port_write(COUNTER0, 0, 0);
        pit.port_write(CONTROL, 0xE2, tsc_of(20));
        assert_eq!(pit.port_read(COUNTER0, tsc_of(20)), 0xB0);
    }

    #[test]
    fn channel_2_is_gated_by_port_61_and_its_out_reads_there() {
        let mut pit = Pit::new(KHZ, 0);
        pit.port_write(CONTROL, 0xB0, 0); // counter 2, word, mode 0
        pit.port_write(COUNTER2, 100, 0);
        pit.port_write(COUNTER2, 0, 0);
        // Gate low: no counting.
        assert_eq!(pit.port_read(PORT_61, tsc_of(500)) & 0x21, 0);
        pit.port_write(PORT_61, 1, tsc_of(1000));
        assert_eq!(pit.port_read(PORT_61, tsc_of(1050)) & 0x20, 0);
        assert_eq!(pit.port_read(PORT_61, tsc_of(1100)) & 0x21, 0x21);
        // Channel 2 never raises IRQ 0.
        assert!(!pit.tick(tsc_of(2000)));
    }

    #[test]
    fn lsb_only_access_writes_and_reads_one_byte() {
        let mut pit = Pit::new(KHZ, 0);
        pit.port_write(CONTROL, 0x14, 0); // counter 0, LSB, mode 2
        pit.port_write(COUNTER0, 200, 0);
        assert_eq!(pit.port_read(COUNTER0, tsc_of(50)), 150);
        assert_eq!(pit.next_deadline(), Some(tsc_of(200)));
    }
}
