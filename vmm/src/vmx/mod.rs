//! The virtual VMX as a pure model: no KVM types, testable without /dev/kvm.

pub mod caps;
pub mod decode;
pub mod exits;
pub mod fields;
pub mod vmcs;
