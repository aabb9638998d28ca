//! ACPI S3 (suspend to RAM) as the run loop carries it out: the processor stops at the PM1a
//! control write, nestbed sleeps until a wake event (an RTC alarm with RTC_EN), then the machine
//! resumes as a PC BIOS resumes it (ACPI 6.x 16.3): the processor and chipset from their
//! power-on state, and control in real mode at the FACS firmware waking vector, CS = vector >> 4,
//! IP = vector & 0xF.

use kvm_bindings::kvm_segment;

use super::{signals, Flow, Outcome, Runner};
use crate::exit::Level;
use crate::machine::acpi;
use crate::machine::bios::{self, Firmware};

impl Runner {
    pub(super) fn sleep_s3(&mut self) -> Flow {
        if self.level == Level::L2 {
            return Flow::Stop(Outcome::Unsupported(
                "S3 entered by L2 (its PM1a control write reached the platform): nestbed resumes only L1".into(),
            ));
        }
        let vector = match self.waking_vector() {
            Ok(v) => v,
            Err(why) => return Flow::Stop(Outcome::Unsupported(why)),
        };
        tracing::info!(waking_vector = format_args!("{vector:#x}"), "S3: asleep until a wake event");
        self.notes.push(format!("S3: asleep; waking vector {vector:#x}"));
        loop {
            // A signal ends the run: the next KVM_RUN returns at once and the run loop sees it.
            if signals::cause() != signals::NONE {
                return Flow::Continue;
            }
            let (woken, next) = self.platform.s3_wake_event();
            if woken {
                break;
            }
            std::thread::sleep(self.platform.slice_until(next));
        }
        self.resume_at(vector);
        self.notes.push("S3: woken by the RTC alarm; resuming at the waking vector".into());
        Flow::Continue
    }

    /// The FACS's 32-bit firmware waking vector (5.2.10); the 64-bit one, which asks for a
    /// protected-mode resume, is not offered.
    fn waking_vector(&self) -> Result<u32, String> {
        let ram = &self.l1_vm.ram;
        let read = |offset: u64, len: usize| {
            let mut b = [0u8; 8];
            ram.read(acpi::FACS_ADDR + offset, &mut b[..len]).map(|_| u64::from_le_bytes(b))
        };
        if self.firmware != Firmware::Bios {
            return Err("S3 without firmware: nothing to resume through (run with --firmware bios)".into());
        }
        let (v, x) = match (read(acpi::FACS_WAKING_VECTOR, 4), read(acpi::FACS_X_WAKING_VECTOR, 8)) {
            (Ok(v), Ok(x)) => (v as u32, x),
            _ => return Err("S3: the FACS is outside guest RAM".into()),
        };
        match (v, x) {
            (0, 0) => Err("S3 with no waking vector in the FACS: a BIOS would boot again, which nestbed cannot".into()),
            (0, x) => Err(format!(
                "S3: only the 64-bit waking vector is set ({x:#x}); nestbed resumes through the 32-bit one"
            )),
            (v, _) => Ok(v),
        }
    }

    /// The machine as a BIOS hands it to the OS's waking vector.
    fn resume_at(&mut self, vector: u32) {
        self.platform.power_on_reset();
        for &(port, value) in bios::PORT_WRITES {
            self.platform.port_write(port, 1, u64::from(value));
        }
        self.nested.vmx.power_on();
        self.l1.finish_pending();
        let segment = (vector >> 4) as u16;
        let real = |selector: u16, type_: u8| kvm_segment {
            base: u64::from(selector) << 4,
            limit: 0xffff,
            selector,
            type_,
            present: 1,
            s: 1,
            ..Default::default()
        };
        let s = self.l1.sregs_mut();
        s.cs = real(segment, 0xb);
        for seg in [&mut s.ds, &mut s.es, &mut s.fs, &mut s.gs, &mut s.ss] {
            *seg = real(0, 0x3);
        }
        s.tr = kvm_segment { limit: 0xffff, type_: 0xb, present: 1, ..Default::default() };
        s.ldt = kvm_segment { limit: 0xffff, type_: 0x2, present: 1, ..Default::default() };
        s.gdt.base = 0;
        s.gdt.limit = 0xffff;
        s.idt.base = 0;
        s.idt.limit = 0x3ff;
        s.cr0 = 0x10; // ET
        s.cr2 = 0;
        s.cr3 = 0;
        s.cr4 = 0;
        s.efer = 0;
        let r = self.l1.regs_mut();
        *r = Default::default();
        r.rip = u64::from(vector & 0xf);
        r.rflags = 0x2;
    }
}
