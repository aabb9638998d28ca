//! The VM-exit information of one exit (SDM 25.9, 28.2) as a value: built once when an L2 exit
//! is normalized, edited by scripts, and written into the VMCS when the exit is reflected.

use super::fields::*;
use super::vmcs::Vmcs;

/// The exit-information fields a VM exit writes (SDM 25.9.1 basic information, 25.9.2 vectored
/// events, 25.9.4 instruction information).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExitInfo {
    pub reason: u32,
    pub qualification: u64,
    pub instruction_len: u32,
    pub instruction_info: u32,
    /// VM-exit interruption information (0: no event, SDM 28.2.2).
    pub intr_info: u32,
    pub intr_error_code: u32,
    /// IDT-vectoring information: the event whose delivery the exit interrupted (SDM 28.2.3).
    pub idt_vectoring_info: u32,
    pub idt_vectoring_error_code: u32,
    /// GUEST_PHYSICAL_ADDRESS, written for EPT violations and misconfigurations (SDM 28.2.1).
    pub guest_physical: Option<u64>,
    /// GUEST_LINEAR_ADDRESS, written for EPT violations (0 when not valid).
    pub guest_linear: Option<u64>,
}

impl ExitInfo {
    pub fn new(reason: u32, qualification: u64) -> Self {
        ExitInfo { reason, qualification, ..Default::default() }
    }

    /// VM-exit interruption information for an exit caused by an exception or NMI (SDM
    /// 28.2.2): vector, type (2 NMI, 3 hardware exception, 6 software exception), error code.
    pub fn set_interruption(&mut self, vector: u8, ty: u8, error_code: Option<u32>) {
        self.intr_info = u32::from(vector) | u32::from(ty & 7) << 8 | 1 << 31;
        if let Some(ec) = error_code {
            self.intr_info |= 1 << 11;
            self.intr_error_code = ec;
        }
    }

    /// Writes the information into `vmcs` (SDM 28.2): IDT-vectoring information is the
    /// interrupted event's or invalid (28.2.3); the valid bit of the VM-entry
    /// interruption-information field is cleared (25.8.3).
    pub fn record(&self, vmcs: &mut Vmcs) {
        vmcs.set(VM_EXIT_REASON, u64::from(self.reason));
        vmcs.set(EXIT_QUALIFICATION, self.qualification);
        vmcs.set(VM_EXIT_INSTRUCTION_LEN, u64::from(self.instruction_len));
        vmcs.set(VMX_INSTRUCTION_INFO, u64::from(self.instruction_info));
        vmcs.set(VM_EXIT_INTR_INFO, u64::from(self.intr_info));
        if self.intr_info & 1 << 11 != 0 {
            vmcs.set(VM_EXIT_INTR_ERROR_CODE, u64::from(self.intr_error_code));
        }
        vmcs.set(IDT_VECTORING_INFO_FIELD, u64::from(self.idt_vectoring_info));
        if self.idt_vectoring_info & 1 << 11 != 0 {
            vmcs.set(IDT_VECTORING_ERROR_CODE, u64::from(self.idt_vectoring_error_code));
        }
        let entry_info = vmcs.get(VM_ENTRY_INTR_INFO_FIELD) & !(1 << 31);
        vmcs.set(VM_ENTRY_INTR_INFO_FIELD, entry_info);
        if let Some(gpa) = self.guest_physical {
            vmcs.set(GUEST_PHYSICAL_ADDRESS, gpa);
        }
        if let Some(linear) = self.guest_linear {
            vmcs.set(GUEST_LINEAR_ADDRESS, linear);
        }
    }

    /// Stores a script's write of an exit-information field into this value. Returns false for
    /// fields a VM exit does not write, which go to the VMCS itself.
    pub fn write_field(&mut self, enc: u32, v: u64) -> bool {
        match enc {
            VM_EXIT_REASON => self.reason = v as u32,
            EXIT_QUALIFICATION => self.qualification = v,
            VM_EXIT_INSTRUCTION_LEN => self.instruction_len = v as u32,
            VMX_INSTRUCTION_INFO => self.instruction_info = v as u32,
            VM_EXIT_INTR_INFO => self.intr_info = v as u32,
            VM_EXIT_INTR_ERROR_CODE => self.intr_error_code = v as u32,
            IDT_VECTORING_INFO_FIELD => self.idt_vectoring_info = v as u32,
            IDT_VECTORING_ERROR_CODE => self.idt_vectoring_error_code = v as u32,
            GUEST_PHYSICAL_ADDRESS => self.guest_physical = Some(v),
            GUEST_LINEAR_ADDRESS => self.guest_linear = Some(v),
            _ => return false,
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_writes_the_exit_fields_and_clears_event_valid_bits() {
        let mut v = Vmcs::new(1);
        v.set(VM_ENTRY_INTR_INFO_FIELD, 1 << 31 | 0x30e);
        v.set(IDT_VECTORING_INFO_FIELD, 1 << 31);
        v.set(GUEST_PHYSICAL_ADDRESS, 0x1234);
        let info = ExitInfo { instruction_len: 2, ..ExitInfo::new(30, 0x80_0000) };
        info.record(&mut v);
        assert_eq!(v.get(VM_EXIT_REASON), 30);
        assert_eq!(v.get(EXIT_QUALIFICATION), 0x80_0000);
        assert_eq!(v.get(VM_EXIT_INSTRUCTION_LEN), 2);
        assert_eq!(v.get(VM_EXIT_INTR_INFO), 0);
        assert_eq!(v.get(IDT_VECTORING_INFO_FIELD), 0);
        assert_eq!(v.get(VM_ENTRY_INTR_INFO_FIELD), 0x30e);
        assert_eq!(v.get(GUEST_PHYSICAL_ADDRESS), 0x1234, "untouched without an EPT exit");
    }

    #[test]
    fn interruption_information() {
        let mut info = ExitInfo::new(0, 0);
        info.set_interruption(14, 3, Some(2));
        let mut v = Vmcs::new(1);
        info.record(&mut v);
        assert_eq!(v.get(VM_EXIT_INTR_INFO), 0x8000_0b0e);
        assert_eq!(v.get(VM_EXIT_INTR_ERROR_CODE), 2);
    }

    #[test]
    fn scripts_edit_exit_fields_only() {
        let mut info = ExitInfo::new(48, 0x181);
        assert!(info.write_field(EXIT_QUALIFICATION, 0x182));
        assert!(info.write_field(GUEST_PHYSICAL_ADDRESS, 0x5000));
        assert!(!info.write_field(GUEST_RIP, 0));
        let mut v = Vmcs::new(1);
        info.record(&mut v);
        assert_eq!(v.get(EXIT_QUALIFICATION), 0x182);
        assert_eq!(v.get(GUEST_PHYSICAL_ADDRESS), 0x5000);
    }
}
