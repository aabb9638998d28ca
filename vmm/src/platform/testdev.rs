//! QEMU's `pc-testdev` (QEMU `hw/misc/pc-testdev.c`), the ISA device kvm-unit-tests' x86 tests
//! drive interrupts and emulation through.
//!
//! - 0xE0-0xE3: a 32-bit scratch register, read and written in 1, 2 or 4 bytes at any byte
//!   offset (`emulator.c` streams string I/O through it); bytes beyond the fourth are dropped
//!   and read 0.
//! - 0xE4: "flush page": a 32-bit write names a guest-physical page whose mappings the host
//!   should drop, so the guest's next touch of it faults into the hypervisor (`eventinj.c` uses
//!   it on its stack and IDT). Other widths are ignored; reads return 0.
//! - 0xE8-0xEB: the same scratch register, accessed a byte at a time.
//! - 0x2000-0x2017: an 8-bit write of non-zero raises, of zero lowers, ISA interrupt line
//!   `port - 0x2000` (`lib/x86/apic.c` `set_irq_line`). QEMU's ISA bus wires lines 0-15;
//!   16-23 are passed on here for I/O APIC pins without a PIC input. Reads return 0.
//! - 0xFF000000-0xFF00FFFF: 64 KiB of plain memory behind MMIO exits (`x86/ioram.h`), for
//!   tests of instructions emulated on MMIO; accesses of 1-8 bytes, bytes past the end dropped.
//!
//! Not modelled: the device itself performs nothing; the run loop carries out the [`Effect`]s
//! (routing a line to the 8259 and I/O APIC, dropping a page's mappings). Ports the device does
//! not decode read all-ones; widths QEMU rejects on a decoded port read 0 and do nothing.

/// Scratch register, any width.
pub const IOPORT: u16 = 0xE0;
/// Flush-page port, 32-bit writes.
pub const FLUSH_PAGE_PORT: u16 = 0xE4;
/// Scratch register, byte-wise.
pub const IOPORT_BYTE: u16 = 0xE8;
/// First interrupt-line port.
pub const IRQ_PORT_BASE: u16 = 0x2000;
/// Number of interrupt-line ports.
pub const IRQ_LINES: u16 = 24;
/// Guest-physical base of the memory region.
pub const IOMEM_BASE: u64 = 0xFF00_0000;
/// Size of the memory region.
pub const IOMEM_LEN: usize = 0x1_0000;

/// What a write asks of the rest of the platform.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    None,
    /// Drive ISA interrupt line `line` (0-23) to `level`.
    SetIrq {
        line: u8,
        level: bool,
    },
    /// Drop the host mappings of the 4 KiB guest-physical page at `gpa`.
    FlushPage {
        gpa: u64,
    },
}

/// The test device.
#[derive(Debug, Clone)]
pub struct TestDev {
    scratch: u32,
    iomem: Vec<u8>,
}

impl Default for TestDev {
    fn default() -> Self {
        Self::new()
    }
}

impl TestDev {
    /// Scratch register and memory zeroed.
    pub fn new() -> Self {
        TestDev { scratch: 0, iomem: vec![0; IOMEM_LEN] }
    }

    /// Whether `port` belongs to the device.
    pub fn claims(port: u16) -> bool {
        matches!(port, IOPORT..=0xE7 | IOPORT_BYTE..=0xEB)
            || port.checked_sub(IRQ_PORT_BASE).is_some_and(|line| line < IRQ_LINES)
    }

    /// An `in` of `size` bytes from `port`.
    pub fn port_read(&mut self, port: u16, size: usize) -> u32 {
        if !Self::claims(port) {
            return match size {
                1 => 0xFF,
                2 => 0xFFFF,
                _ => 0xFFFF_FFFF,
            };
        }
        match port {
            IOPORT..=0xE3 | IOPORT_BYTE..=0xEB if matches!(size, 1 | 2 | 4) => {
                let bytes = self.scratch.to_le_bytes();
                let start = usize::from(port & 3);
                (0..size).filter_map(|i| bytes.get(start + i).map(|&b| u32::from(b) << (8 * i))).sum()
            }
            _ => 0,
        }
    }

    /// An `out` of `size` bytes of `value` to `port`.
    pub fn port_write(&mut self, port: u16, size: usize, value: u32) -> Effect {
        match port {
            IOPORT..=0xE3 | IOPORT_BYTE..=0xEB if matches!(size, 1 | 2 | 4) => {
                let mut bytes = self.scratch.to_le_bytes();
                let start = usize::from(port & 3);
                for (i, byte) in value.to_le_bytes().iter().take(size).enumerate() {
                    if let Some(slot) = bytes.get_mut(start + i) {
                        *slot = *byte;
                    }
                }
                self.scratch = u32::from_le_bytes(bytes);
                Effect::None
            }
            FLUSH_PAGE_PORT if size == 4 => Effect::FlushPage { gpa: u64::from(value) & !0xFFF },
            _ => match port.checked_sub(IRQ_PORT_BASE) {
                Some(line) if line < IRQ_LINES && size == 1 => {
                    Effect::SetIrq { line: line as u8, level: value & 0xFF != 0 }
                }
                _ => Effect::None,
            },
        }
    }

    /// A read of `len` (1-8) bytes at `offset` into the memory region, little-endian.
    pub fn mmio_read(&self, offset: u64, len: usize) -> u64 {
        if !(1..=8).contains(&len) {
            return 0;
        }
        (0..len).map(|i| u64::from(self.iomem_byte(offset, i)) << (8 * i)).sum()
    }

    /// A write of the low `len` (1-8) bytes of `value` at `offset` into the memory region.
    pub fn mmio_write(&mut self, offset: u64, len: usize, value: u64) {
        if !(1..=8).contains(&len) {
            return;
        }
        for (i, byte) in value.to_le_bytes().iter().take(len).enumerate() {
            if let Some(slot) = index(offset, i).and_then(|at| self.iomem.get_mut(at)) {
                *slot = *byte;
            }
        }
    }

    fn iomem_byte(&self, offset: u64, i: usize) -> u8 {
        index(offset, i).and_then(|at| self.iomem.get(at)).copied().unwrap_or(0)
    }
}

fn index(offset: u64, i: usize) -> Option<usize> {
    usize::try_from(offset).ok()?.checked_add(i)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn irq_line_raise_and_lower() {
        let mut dev = TestDev::new();
        assert_eq!(dev.port_write(0x2000 + 0xE, 1, 1), Effect::SetIrq { line: 0xE, level: true });
        assert_eq!(dev.port_write(0x2000 + 0xE, 1, 0), Effect::SetIrq { line: 0xE, level: false });
        assert_eq!(dev.port_write(0x2000, 1, 0x80), Effect::SetIrq { line: 0, level: true });
        assert_eq!(dev.port_write(0x2017, 1, 1), Effect::SetIrq { line: 23, level: true });
        assert_eq!(dev.port_write(0x2018, 1, 1), Effect::None);
        assert_eq!(dev.port_write(0x1FFF, 1, 1), Effect::None);
    }

    #[test]
    fn irq_line_bytes_only() {
        let mut dev = TestDev::new();
        assert_eq!(dev.port_write(0x2001, 2, 1), Effect::None);
        assert_eq!(dev.port_write(0x2001, 4, 1), Effect::None);
        assert_eq!(dev.port_write(0x2001, 1, 0x100), Effect::SetIrq { line: 1, level: false });
        assert_eq!(dev.port_read(0x2001, 1), 0);
    }

    #[test]
    fn scratch_round_trips_at_every_width() {
        let mut dev = TestDev::new();
        dev.port_write(IOPORT, 4, 0x1234_5678);
        assert_eq!(dev.port_read(IOPORT, 4), 0x1234_5678);
        assert_eq!(dev.port_read(IOPORT, 2), 0x5678);
        assert_eq!(dev.port_read(IOPORT, 1), 0x78);
        assert_eq!(dev.port_read(IOPORT + 2, 2), 0x1234);
        assert_eq!(dev.port_read(IOPORT + 3, 1), 0x12);
        dev.port_write(IOPORT + 1, 1, 0xAB);
        assert_eq!(dev.port_read(IOPORT, 4), 0x1234_AB78);
    }

    #[test]
    fn scratch_as_emulator_tests_use_it() {
        // "outsb up": the last byte written is what a byte read returns.
        let mut dev = TestDev::new();
        for &b in b"abcdefghij" {
            dev.port_write(IOPORT, 1, u32::from(b));
        }
        assert_eq!(dev.port_read(IOPORT, 1), u32::from(b'j'));
        // string_io_mmio: outw 0x9999, then insb reads 0x99.
        dev.port_write(IOPORT, 2, 0x9999);
        assert_eq!(dev.port_read(IOPORT, 1), 0x99);
    }

    #[test]
    fn byte_port_aliases_scratch() {
        let mut dev = TestDev::new();
        dev.port_write(IOPORT_BYTE, 4, 0xCAFE_F00D);
        assert_eq!(dev.port_read(IOPORT, 4), 0xCAFE_F00D);
        dev.port_write(IOPORT, 2, 0x1111);
        assert_eq!(dev.port_read(IOPORT_BYTE + 1, 1), 0x11);
    }

    #[test]
    fn scratch_drops_bytes_past_the_register() {
        let mut dev = TestDev::new();
        dev.port_write(IOPORT + 3, 4, 0xAABB_CCDD);
        assert_eq!(dev.port_read(IOPORT, 4), 0xDD00_0000);
        assert_eq!(dev.port_read(IOPORT + 3, 4), 0xDD);
        dev.port_write(IOPORT, 3, 0xFFFF_FFFF);
        assert_eq!(dev.port_read(IOPORT, 3), 0);
        assert_eq!(dev.port_read(IOPORT, 4), 0xDD00_0000);
    }

    #[test]
    fn flush_page() {
        let mut dev = TestDev::new();
        assert_eq!(dev.port_write(FLUSH_PAGE_PORT, 4, 0x0012_3ABC), Effect::FlushPage { gpa: 0x12_3000 });
        assert_eq!(dev.port_write(FLUSH_PAGE_PORT, 2, 0x1000), Effect::None);
        assert_eq!(dev.port_write(FLUSH_PAGE_PORT + 1, 4, 0x1000), Effect::None);
        assert_eq!(dev.port_read(FLUSH_PAGE_PORT, 4), 0);
        assert_eq!(dev.port_read(IOPORT, 4), 0, "the scratch register is untouched");
    }

    #[test]
    fn iomem_is_plain_memory() {
        let mut dev = TestDev::new();
        assert_eq!(dev.mmio_read(0, 8), 0);
        dev.mmio_write(0x10, 8, 0x0102_0304_0506_0708);
        assert_eq!(dev.mmio_read(0x10, 8), 0x0102_0304_0506_0708);
        assert_eq!(dev.mmio_read(0x11, 2), 0x0607);
        dev.mmio_write(0x12, 1, 0xFFFF);
        assert_eq!(dev.mmio_read(0x10, 4), 0x05FF_0708);
        dev.mmio_write(0x2000, 4, 0xDEAD_BEEF);
        assert_eq!(dev.mmio_read(0x2000, 4), 0xDEAD_BEEF, "beyond the first page too");
    }

    #[test]
    fn iomem_edges() {
        let mut dev = TestDev::new();
        dev.mmio_write(IOMEM_LEN as u64 - 2, 4, 0xAABB_CCDD);
        assert_eq!(dev.mmio_read(IOMEM_LEN as u64 - 2, 4), 0xCCDD);
        assert_eq!(dev.mmio_read(IOMEM_LEN as u64, 1), 0);
        dev.mmio_write(u64::MAX, 8, u64::MAX);
        assert_eq!(dev.mmio_read(u64::MAX, 8), 0);
        dev.mmio_write(0, 0, 1);
        dev.mmio_write(0, 9, 1);
        assert_eq!(dev.mmio_read(0, 0), 0);
        assert_eq!(dev.mmio_read(0, 16), 0);
        assert_eq!(dev.mmio_read(0, 8), 0);
    }

    #[test]
    fn ports_not_decoded() {
        let mut dev = TestDev::new();
        for port in [0xDF, 0xEC, 0xF4, 0x1FFF, 0x2018, 0xFFFF] {
            assert!(!TestDev::claims(port), "{port:#x}");
            assert_eq!(dev.port_read(port, 1), 0xFF);
            assert_eq!(dev.port_read(port, 2), 0xFFFF);
            assert_eq!(dev.port_write(port, 1, 1), Effect::None);
        }
        for port in [IOPORT, FLUSH_PAGE_PORT, IOPORT_BYTE, 0xEB, 0x2000, 0x2017] {
            assert!(TestDev::claims(port), "{port:#x}");
        }
    }

    /// The path of kvm-unit-tests' `set_irq_line` as the run loop is to wire it.
    #[test]
    fn line_effect_drives_pic_and_ioapic() {
        use crate::platform::ioapic::{isa_irq_to_pin, IoApic, IOREGSEL, IOWIN};
        use crate::platform::pic::Pic;
        let mut dev = TestDev::new();
        let mut pic = Pic::new();
        let mut ioapic = IoApic::new();
        ioapic.mmio_write(IOREGSEL, 4, 0x10 + 2 * 0xE);
        ioapic.mmio_write(IOWIN, 4, 0x76);
        let mut fired = Vec::new();
        for level in [1, 0] {
            let Effect::SetIrq { line, level } = dev.port_write(IRQ_PORT_BASE + 0xE, 1, level) else {
                panic!("not a line change");
            };
            pic.set_irq(line, level);
            fired.extend(ioapic.set_irq(isa_irq_to_pin(line).into(), level));
        }
        assert_eq!(fired.len(), 1);
        assert_eq!(fired[0].vector, 0x76);
        assert!(pic.output(), "unmasked after reset, the 8259 sees the edge too");
    }

    #[test]
    fn bad_widths_on_decoded_ports() {
        let mut dev = TestDev::new();
        dev.port_write(IOPORT, 4, 0x1234_5678);
        for size in [0, 3, 8, usize::MAX] {
            assert_eq!(dev.port_write(IOPORT, size, 0), Effect::None);
            assert_eq!(dev.port_read(IOPORT, size), 0);
        }
        assert_eq!(dev.port_read(IOPORT, 4), 0x1234_5678);
    }
}
