//! The I/O APIC (Intel 82093AA datasheet; QEMU `hw/intc/ioapic.c`), 24 pins at 0xFEC00000.
//!
//! Modelled: IOREGSEL (0x00), IOWIN (0x10, 32-bit accesses only), the EOI register (0x40) of
//! version 0x20 (QEMU's default), the ID (only bits 27:24 writable), version (read-only, maximum
//! redirection entry 23) and arbitration (reads as the ID, read-only) registers, and the
//! redirection table (0x10-0x3F, each entry two 32-bit halves; delivery status and remote IRR
//! read-only). A pin fires on a rising edge of its line (edge) or while its line is asserted and
//! remote IRR is clear (level); masked pins do not fire, and an edge seen while masked is lost
//! (82093AA); unmasking a pin whose level line is asserted fires it. The polarity bit (active low)
//! inverts the line as seen by the I/O APIC. A firing pin becomes a [`Delivery`] for the local
//! APICs; a level delivery sets remote IRR until an EOI for its vector.
//!
//! Not modelled: delivery status (always idle: delivery is immediate), the extended destination
//! ID bits (48-55), interrupt remapping, QEMU's pacing of level interrupt storms, and the
//! delivery itself (destination decoding, lowest-priority arbitration, ExtINT reading the vector
//! from the 8259: the local APIC side's job).

/// Guest-physical base of the register window.
pub const IOAPIC_BASE: u64 = 0xFEC0_0000;
/// Size of the MMIO region.
pub const IOAPIC_SIZE: u64 = 0x1000;
/// Number of input pins (maximum redirection entry + 1).
pub const NUM_PINS: usize = 24;
/// Version register value of QEMU's default I/O APIC (with the EOI register).
pub const VERSION_20: u8 = 0x20;
/// Version of the 82093AA and of KVM's in-kernel I/O APIC (no EOI register).
pub const VERSION_11: u8 = 0x11;

/// Offset of the index register.
pub const IOREGSEL: u64 = 0x00;
/// Offset of the data window.
pub const IOWIN: u64 = 0x10;
/// Offset of the directed-EOI register (version 0x20).
pub const EOI: u64 = 0x40;

/// Register index of the ID register.
pub const REG_ID: u8 = 0x00;
/// Register index of the version register.
pub const REG_VERSION: u8 = 0x01;
/// Register index of the arbitration register.
pub const REG_ARB: u8 = 0x02;
/// Register index of the low half of redirection entry 0.
pub const REG_REDIR_BASE: u8 = 0x10;

const VECTOR_MASK: u64 = 0xFF;
const DELIVERY_STATUS: u64 = 1 << 12;
const DEST_LOGICAL: u64 = 1 << 11;
const POLARITY_LOW: u64 = 1 << 13;
const REMOTE_IRR: u64 = 1 << 14;
const TRIGGER_LEVEL: u64 = 1 << 15;
pub const MASKED: u64 = 1 << 16;
const READ_ONLY: u64 = DELIVERY_STATUS | REMOTE_IRR;

/// The I/O APIC input pin an ISA IRQ reaches on the PC: identity, except that the PIT's IRQ 0 is
/// wired to pin 2 (the MP table / MADT interrupt source override QEMU and KVM implement).
pub fn isa_irq_to_pin(irq: u8) -> u8 {
    if irq == 0 {
        2
    } else {
        irq
    }
}

/// Redirection entry bits 10:8.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryMode {
    Fixed,
    LowestPriority,
    Smi,
    Nmi,
    Init,
    ExtInt,
    /// 3 or 6: reserved encodings, passed on for the local APIC to refuse.
    Reserved(u8),
}

impl DeliveryMode {
    fn from_bits(bits: u8) -> Self {
        match bits & 7 {
            0 => DeliveryMode::Fixed,
            1 => DeliveryMode::LowestPriority,
            2 => DeliveryMode::Smi,
            4 => DeliveryMode::Nmi,
            5 => DeliveryMode::Init,
            7 => DeliveryMode::ExtInt,
            other => DeliveryMode::Reserved(other),
        }
    }
}

/// An interrupt message for the local APICs, as the redirection entry of `pin` describes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivery {
    pub pin: u8,
    pub vector: u8,
    pub mode: DeliveryMode,
    /// Destination mode: logical (true) or physical APIC ID.
    pub logical: bool,
    /// Bits 63:56 of the entry.
    pub dest: u8,
    /// The local APIC sets the vector's TMR bit and broadcasts its EOI back here.
    pub level_triggered: bool,
}

/// The I/O APIC.
#[derive(Debug, Clone)]
pub struct IoApic {
    id: u8,
    version: u8,
    ioregsel: u8,
    redir: [u64; NUM_PINS],
    /// Electrical line levels as driven, before polarity.
    lines: u32,
}

impl Default for IoApic {
    fn default() -> Self {
        Self::new()
    }
}

impl IoApic {
    /// QEMU's default: version 0x20, ID 0, every pin masked.
    pub fn new() -> Self {
        Self::with_version(VERSION_20)
    }

    /// An I/O APIC reporting `version`; only 0x20 and later decode the EOI register.
    pub fn with_version(version: u8) -> Self {
        IoApic { id: 0, version, ioregsel: 0, redir: [MASKED; NUM_PINS], lines: 0 }
    }

    /// The 64-bit redirection entry of `pin`, if it exists.
    pub fn redirection(&self, pin: usize) -> Option<u64> {
        self.redir.get(pin).copied()
    }

    /// A read of `len` bytes at `offset` into the region; 0 where nothing is decoded. The
    /// register block repeats every 256 bytes, as QEMU decodes it.
    pub fn mmio_read(&mut self, offset: u64, len: usize) -> u32 {
        if offset >= IOAPIC_SIZE || !matches!(len, 1 | 2 | 4) {
            return 0;
        }
        match offset & 0xFF {
            IOREGSEL => u32::from(self.ioregsel),
            IOWIN if len == 4 => self.read_reg(self.ioregsel),
            _ => 0,
        }
    }

    /// A write of `len` bytes of `value` at `offset`; returns the deliveries it causes (a pin
    /// unmasked or switched to level with its line asserted, or an EOI re-firing one).
    pub fn mmio_write(&mut self, offset: u64, len: usize, value: u32) -> Vec<Delivery> {
        if offset >= IOAPIC_SIZE || !matches!(len, 1 | 2 | 4) {
            return Vec::new();
        }
        match offset & 0xFF {
            IOREGSEL => {
                self.ioregsel = value as u8;
                Vec::new()
            }
            IOWIN if len == 4 => self.write_reg(self.ioregsel, value),
            EOI if self.version >= VERSION_20 => self.eoi(value as u8),
            _ => Vec::new(),
        }
    }

    fn read_reg(&self, reg: u8) -> u32 {
        match reg {
            REG_ID | REG_ARB => u32::from(self.id) << 24,
            REG_VERSION => (((NUM_PINS - 1) as u32) << 16) | u32::from(self.version),
            _ => match redir_index(reg) {
                Some((pin, true)) => (self.redir[pin] >> 32) as u32,
                Some((pin, false)) => self.redir[pin] as u32,
                None => 0,
            },
        }
    }

    fn write_reg(&mut self, reg: u8, value: u32) -> Vec<Delivery> {
        if reg == REG_ID {
            self.id = ((value >> 24) & 0xF) as u8;
            return Vec::new();
        }
        let Some((pin, high)) = redir_index(reg) else { return Vec::new() };
        let old = self.redir[pin];
        let mut entry =
            if high { (old & 0xFFFF_FFFF) | (u64::from(value) << 32) } else { (old & !0xFFFF_FFFF) | u64::from(value) };
        entry = (entry & !READ_ONLY) | (old & READ_ONLY);
        // Remote IRR means nothing for an edge pin; Linux clears a stuck one by going through edge.
        if entry & TRIGGER_LEVEL == 0 {
            entry &= !REMOTE_IRR;
        }
        self.redir[pin] = entry;
        self.service_level(pin).into_iter().collect()
    }

    /// Drives input `pin` to electrical `level`; returns the delivery if the pin fires.
    pub fn set_irq(&mut self, pin: usize, level: bool) -> Option<Delivery> {
        if pin >= NUM_PINS {
            return None;
        }
        let was_asserted = self.asserted(pin);
        if level {
            self.lines |= 1 << pin;
        } else {
            self.lines &= !(1 << pin);
        }
        let entry = self.redir[pin];
        if entry & TRIGGER_LEVEL != 0 {
            self.service_level(pin)
        } else if !was_asserted && self.asserted(pin) && entry & MASKED == 0 {
            Some(self.delivery(pin))
        } else {
            None
        }
    }

    /// A local APIC's EOI broadcast for `vector`: clears remote IRR of the level pins routed to
    /// it and re-fires those whose line is still asserted.
    pub fn eoi(&mut self, vector: u8) -> Vec<Delivery> {
        let mut out = Vec::new();
        for pin in 0..NUM_PINS {
            let entry = self.redir[pin];
            if entry & VECTOR_MASK == u64::from(vector) && entry & TRIGGER_LEVEL != 0 && entry & REMOTE_IRR != 0 {
                self.redir[pin] &= !REMOTE_IRR;
                out.extend(self.service_level(pin));
            }
        }
        out
    }

    /// The line of `pin` as the I/O APIC sees it, after polarity.
    fn asserted(&self, pin: usize) -> bool {
        let high = self.lines & (1 << pin) != 0;
        high != (self.redir[pin] & POLARITY_LOW != 0)
    }

    /// Fires a level pin that is asserted, unmasked and without a delivery outstanding.
    fn service_level(&mut self, pin: usize) -> Option<Delivery> {
        let entry = self.redir[pin];
        if entry & TRIGGER_LEVEL == 0 || entry & (MASKED | REMOTE_IRR) != 0 || !self.asserted(pin) {
            return None;
        }
        self.redir[pin] |= REMOTE_IRR;
        Some(self.delivery(pin))
    }

    fn delivery(&self, pin: usize) -> Delivery {
        let entry = self.redir[pin];
        Delivery {
            pin: pin as u8,
            vector: (entry & VECTOR_MASK) as u8,
            mode: DeliveryMode::from_bits((entry >> 8) as u8),
            logical: entry & DEST_LOGICAL != 0,
            dest: (entry >> 56) as u8,
            level_triggered: entry & TRIGGER_LEVEL != 0,
        }
    }
}

/// Pin and half (true: bits 63:32) addressed by register index `reg`.
fn redir_index(reg: u8) -> Option<(usize, bool)> {
    let index = usize::from(reg.checked_sub(REG_REDIR_BASE)?);
    let pin = index / 2;
    (pin < NUM_PINS).then_some((pin, index % 2 == 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_reg(io: &mut IoApic, reg: u8) -> u32 {
        io.mmio_write(IOREGSEL, 4, u32::from(reg));
        io.mmio_read(IOWIN, 4)
    }

    fn write_reg(io: &mut IoApic, reg: u8, value: u32) -> Vec<Delivery> {
        io.mmio_write(IOREGSEL, 4, u32::from(reg));
        io.mmio_write(IOWIN, 4, value)
    }

    /// As kvm-unit-tests' `ioapic_write_redir`: low half, then high half.
    fn write_redir(io: &mut IoApic, pin: u8, entry: u64) -> Vec<Delivery> {
        let mut out = write_reg(io, REG_REDIR_BASE + pin * 2, entry as u32);
        out.extend(write_reg(io, REG_REDIR_BASE + pin * 2 + 1, (entry >> 32) as u32));
        out
    }

    fn read_redir(io: &mut IoApic, pin: u8) -> u64 {
        let lo = read_reg(io, REG_REDIR_BASE + pin * 2);
        let hi = read_reg(io, REG_REDIR_BASE + pin * 2 + 1);
        (u64::from(hi) << 32) | u64::from(lo)
    }

    fn set_mask(io: &mut IoApic, pin: u8, masked: bool) -> Vec<Delivery> {
        let lo = read_reg(io, REG_REDIR_BASE + pin * 2) & !(MASKED as u32);
        write_reg(io, REG_REDIR_BASE + pin * 2, lo | if masked { MASKED as u32 } else { 0 })
    }

    fn edge(vector: u8) -> u64 {
        u64::from(vector)
    }

    fn level(vector: u8) -> u64 {
        u64::from(vector) | TRIGGER_LEVEL
    }

    fn fixed(pin: u8, vector: u8, level_triggered: bool) -> Delivery {
        Delivery { pin, vector, mode: DeliveryMode::Fixed, logical: false, dest: 0, level_triggered }
    }

    #[test]
    fn version_register_read_only() {
        let mut io = IoApic::new();
        let version = read_reg(&mut io, REG_VERSION);
        assert_eq!(version, 0x0017_0020);
        write_reg(&mut io, REG_VERSION, !version);
        assert_eq!(read_reg(&mut io, REG_VERSION), version);
        let mut old = IoApic::with_version(VERSION_11);
        assert_eq!(read_reg(&mut old, REG_VERSION), 0x0017_0011);
    }

    #[test]
    fn id_only_bits_27_24_writable() {
        let mut io = IoApic::new();
        let id = read_reg(&mut io, REG_ID);
        write_reg(&mut io, REG_ID, !id);
        assert_eq!(id ^ read_reg(&mut io, REG_ID), 0x0F00_0000);
    }

    #[test]
    fn arbitration_follows_id_and_is_read_only() {
        let mut io = IoApic::new();
        write_reg(&mut io, REG_ID, 0x0F00_0000);
        assert_eq!(read_reg(&mut io, REG_ARB), 0x0F00_0000);
        write_reg(&mut io, REG_ARB, 0);
        assert_eq!(read_reg(&mut io, REG_ARB), 0x0F00_0000);
    }

    #[test]
    fn ioregsel_reads_back() {
        let mut io = IoApic::new();
        io.mmio_write(IOREGSEL, 4, 0x1234_5621);
        assert_eq!(io.mmio_read(IOREGSEL, 4), 0x21);
    }

    #[test]
    fn pins_reset_masked() {
        let mut io = IoApic::new();
        for pin in 0..NUM_PINS as u8 {
            assert_eq!(read_redir(&mut io, pin), MASKED);
            assert_eq!(io.set_irq(pin.into(), true), None);
        }
    }

    #[test]
    fn redirection_halves_independent() {
        let mut io = IoApic::new();
        // Delivery status and remote IRR (bits 12 and 14) are dropped.
        write_reg(&mut io, 0x10 + 2 * 5, 0x0001_F9F3);
        write_reg(&mut io, 0x10 + 2 * 5 + 1, 0xAB00_0000);
        assert_eq!(read_redir(&mut io, 5), 0xAB00_0000_0001_A9F3);
        write_reg(&mut io, 0x10 + 2 * 5 + 1, 0x0300_0000);
        assert_eq!(read_reg(&mut io, 0x10 + 2 * 5), 0x0001_A9F3);
        assert_eq!(io.redirection(5), Some(0x0300_0000_0001_A9F3));
        write_reg(&mut io, 0x10 + 2 * 5, 0x22);
        assert_eq!(io.redirection(5), Some(0x0300_0000_0000_0022));
        assert_eq!(io.redirection(24), None);
    }

    #[test]
    fn last_entry_and_beyond() {
        let mut io = IoApic::new();
        write_reg(&mut io, 0x3F, 0xFF00_0000);
        assert_eq!(read_reg(&mut io, 0x3F), 0xFF00_0000);
        write_reg(&mut io, 0x40, 0xFFFF_FFFF);
        assert_eq!(read_reg(&mut io, 0x40), 0);
        assert_eq!(read_reg(&mut io, 0x03), 0);
        assert_eq!(read_reg(&mut io, 0xFF), 0);
    }

    #[test]
    fn remote_irr_and_delivery_status_read_only() {
        let mut io = IoApic::new();
        write_redir(&mut io, 3, level(0x40) | REMOTE_IRR | DELIVERY_STATUS);
        assert_eq!(read_redir(&mut io, 3), level(0x40));
    }

    #[test]
    fn edge_fires_once_per_rising_edge() {
        let mut io = IoApic::new();
        write_redir(&mut io, 0xE, edge(0x76));
        assert_eq!(io.set_irq(0xE, true), Some(fixed(0xE, 0x76, false)));
        assert_eq!(io.set_irq(0xE, true), None);
        assert_eq!(io.set_irq(0xE, false), None);
        assert_eq!(io.set_irq(0xE, true), Some(fixed(0xE, 0x76, false)));
        assert_eq!(read_redir(&mut io, 0xE) & REMOTE_IRR, 0);
    }

    #[test]
    fn level_fires_sets_remote_irr_until_eoi() {
        let mut io = IoApic::new();
        write_redir(&mut io, 0xE, level(0x77));
        assert_eq!(io.set_irq(0xE, true), Some(fixed(0xE, 0x77, true)));
        assert_ne!(read_redir(&mut io, 0xE) & REMOTE_IRR, 0);
        // Coalesced while remote IRR is set.
        assert_eq!(io.set_irq(0xE, false), None);
        assert_eq!(io.set_irq(0xE, true), None);
        assert_eq!(io.set_irq(0xE, false), None);
        assert_ne!(read_redir(&mut io, 0xE) & REMOTE_IRR, 0, "set until EOI even with the line low");
        assert_eq!(io.eoi(0x77), vec![]);
        assert_eq!(read_redir(&mut io, 0xE) & REMOTE_IRR, 0);
    }

    #[test]
    fn level_refires_on_eoi_while_asserted() {
        let mut io = IoApic::new();
        write_redir(&mut io, 0xE, level(0x9A));
        assert!(io.set_irq(0xE, true).is_some());
        assert_eq!(io.eoi(0x9A), vec![fixed(0xE, 0x9A, true)]);
        assert_eq!(io.eoi(0x9B), vec![], "other vectors leave it alone");
        io.set_irq(0xE, false);
        assert_eq!(io.eoi(0x9A), vec![]);
    }

    #[test]
    fn eoi_register_broadcasts() {
        let mut io = IoApic::new();
        write_redir(&mut io, 1, level(0x50));
        write_redir(&mut io, 2, level(0x50));
        io.set_irq(1, true);
        io.set_irq(2, true);
        let again = io.mmio_write(EOI, 4, 0x50);
        assert_eq!(again, vec![fixed(1, 0x50, true), fixed(2, 0x50, true)]);
        let mut old = IoApic::with_version(VERSION_11);
        write_redir(&mut old, 1, level(0x50));
        old.set_irq(1, true);
        assert_eq!(old.mmio_write(EOI, 4, 0x50), vec![], "no EOI register before version 0x20");
    }

    #[test]
    fn eoi_ignores_edge_pins() {
        let mut io = IoApic::new();
        write_redir(&mut io, 4, edge(0x60));
        io.set_irq(4, true);
        assert_eq!(io.eoi(0x60), vec![]);
    }

    #[test]
    fn masked_edge_is_lost() {
        let mut io = IoApic::new();
        write_redir(&mut io, 0xE, edge(0x81) | MASKED);
        assert_eq!(io.set_irq(0xE, true), None);
        assert_eq!(io.set_irq(0xE, false), None);
        assert_eq!(set_mask(&mut io, 0xE, false), vec![]);
        assert_eq!(io.set_irq(0xE, true), Some(fixed(0xE, 0x81, false)));
    }

    #[test]
    fn unmasking_asserted_level_fires() {
        let mut io = IoApic::new();
        write_redir(&mut io, 0xE, level(0x82) | MASKED);
        assert_eq!(io.set_irq(0xE, true), None);
        assert_eq!(set_mask(&mut io, 0xE, false), vec![fixed(0xE, 0x82, true)]);
    }

    #[test]
    fn retrigger_with_mask() {
        // kvm-unit-tests' "retriggered level interrupts with mask": the handler masks and EOIs.
        let mut io = IoApic::new();
        write_redir(&mut io, 0xE, level(0x83));
        assert!(io.set_irq(0xE, true).is_some());
        set_mask(&mut io, 0xE, true);
        assert_eq!(io.eoi(0x83), vec![]);
        assert_eq!(set_mask(&mut io, 0xE, false), vec![fixed(0xE, 0x83, true)]);
    }

    #[test]
    fn redirection_write_with_level_asserted_fires_once() {
        let mut io = IoApic::new();
        io.set_irq(7, true);
        let fired = write_redir(&mut io, 7, level(0x90));
        assert_eq!(fired, vec![fixed(7, 0x90, true)]);
        assert_eq!(write_redir(&mut io, 7, level(0x90)), vec![], "remote IRR holds it");
    }

    #[test]
    fn switching_to_edge_clears_remote_irr() {
        let mut io = IoApic::new();
        write_redir(&mut io, 9, level(0x31));
        io.set_irq(9, true);
        write_redir(&mut io, 9, edge(0x31));
        assert_eq!(read_redir(&mut io, 9) & REMOTE_IRR, 0);
    }

    #[test]
    fn polarity_low_inverts_line() {
        let mut io = IoApic::new();
        io.set_irq(10, true);
        write_redir(&mut io, 10, level(0x44) | POLARITY_LOW);
        assert_eq!(io.set_irq(10, true), None, "high is deasserted");
        assert_eq!(io.set_irq(10, false), Some(fixed(10, 0x44, true)));
        io.set_irq(10, true);
        assert_eq!(io.eoi(0x44), vec![]);
    }

    #[test]
    fn polarity_low_edge_on_falling_line() {
        let mut io = IoApic::new();
        io.set_irq(11, true);
        write_redir(&mut io, 11, edge(0x45) | POLARITY_LOW);
        assert_eq!(io.set_irq(11, false), Some(fixed(11, 0x45, false)));
        assert_eq!(io.set_irq(11, true), None);
    }

    #[test]
    fn delivery_fields() {
        let mut io = IoApic::new();
        // Logical, NMI, destination 0x0D.
        write_redir(&mut io, 3, 0x0D00_0000_0000_0C00 | 0x22);
        let d = io.set_irq(3, true).unwrap();
        assert_eq!(
            d,
            Delivery {
                pin: 3,
                vector: 0x22,
                mode: DeliveryMode::Nmi,
                logical: true,
                dest: 0x0D,
                level_triggered: false
            }
        );
        write_redir(&mut io, 4, 0x700);
        assert_eq!(io.set_irq(4, true).unwrap().mode, DeliveryMode::ExtInt);
        write_redir(&mut io, 5, 0x300);
        assert_eq!(io.set_irq(5, true).unwrap().mode, DeliveryMode::Reserved(3));
    }

    #[test]
    fn narrow_or_stray_accesses() {
        let mut io = IoApic::new();
        io.mmio_write(IOREGSEL, 4, 0x01);
        assert_eq!(io.mmio_read(IOWIN, 1), 0, "IOWIN takes 32-bit accesses only");
        assert_eq!(io.mmio_read(IOWIN, 4), 0x0017_0020);
        io.mmio_write(IOREGSEL, 1, 0x00);
        io.mmio_write(IOWIN, 2, 0xFFFF);
        assert_eq!(io.mmio_read(IOWIN, 4), 0, "a 16-bit IOWIN write is dropped");
        // The 256-byte block repeats.
        assert_eq!(io.mmio_read(0x100, 4), 0);
        io.mmio_write(0x100, 4, 0x01);
        assert_eq!(io.mmio_read(0x110, 4), 0x0017_0020);
        for (offset, len) in [(0x20, 4), (0x1000, 4), (u64::MAX, 4), (IOWIN, 3), (IOWIN, 8), (IOWIN, 0)] {
            assert_eq!(io.mmio_read(offset, len), 0);
            assert_eq!(io.mmio_write(offset, len, 0xFFFF_FFFF), vec![]);
        }
        assert_eq!(io.set_irq(24, true), None);
        assert_eq!(io.set_irq(usize::MAX, true), None);
    }

    #[test]
    fn isa_irq0_reaches_pin_2() {
        assert_eq!(isa_irq_to_pin(0), 2);
        assert_eq!(isa_irq_to_pin(14), 14);
    }
}
