//! The PC platform L1 sees beside the serial port: interrupt controllers, timer, firmware
//! config, test devices; each a plain state machine fed by port, MMIO and MSR accesses and by
//! time.

pub mod lapic;
