//! The PC platform L1 sees beside the serial port: interrupt controllers, timer, firmware config,
//! test devices. Each is a plain state machine with no KVM types, fed by port, MMIO and MSR
//! accesses and by time, and returning what it wants done (an interrupt to deliver, a line to
//! raise) as values for the run loop to route. QEMU's PC machine is the reference: test kernels
//! written for it (kvm-unit-tests first) must run unmodified.

pub mod acpi_pm;
pub mod fw_cfg;
pub mod ioapic;
pub mod lapic;
pub mod pic;
pub mod pit;
pub mod rtc;
pub mod testdev;
