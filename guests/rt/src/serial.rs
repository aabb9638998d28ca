//! Polled 16550 UART output on COM1 (0x3f8), with number formatting of our own.
//!
//! Guests do not use `core::fmt`: the host target's precompiled `core` uses SSE, and some KVM
//! hosts (software hypervisors without VMX/SVM) cannot run SSE instructions in guests. So the
//! guests are built without SSE and print through [`Show`]: `println!("x = ", Hex(x))`.

use crate::io::{inb, outb};

const COM1: u16 = 0x3f8;
const LSR: u16 = COM1 + 5;
const LSR_THRE: u8 = 0x20;

pub fn write_byte(b: u8) {
    while inb(LSR) & LSR_THRE == 0 {}
    outb(COM1, b);
}

pub fn write_str(s: &str) {
    for &b in s.as_bytes() {
        if b == b'\n' {
            write_byte(b'\r');
        }
        write_byte(b);
    }
}

/// Something the console can print.
pub trait Show {
    fn show(&self);
}

/// Prints as `0x…` hexadecimal.
#[derive(Clone, Copy)]
pub struct Hex(pub u64);

impl Show for str {
    fn show(&self) {
        write_str(self);
    }
}

impl Show for &str {
    fn show(&self) {
        write_str(self);
    }
}

impl Show for bool {
    fn show(&self) {
        write_str(if *self { "true" } else { "false" });
    }
}

impl Show for Hex {
    fn show(&self) {
        write_str("0x");
        let mut started = false;
        for i in (0..16).rev() {
            let d = ((self.0 >> (i * 4)) & 0xf) as u8;
            if d != 0 || started || i == 0 {
                started = true;
                write_byte(if d < 10 { b'0' + d } else { b'a' + d - 10 });
            }
        }
    }
}

fn show_u64(mut v: u64) {
    let mut buf = [0u8; 20];
    let mut n = 0;
    loop {
        buf[n] = b'0' + (v % 10) as u8;
        n += 1;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    while n > 0 {
        n -= 1;
        write_byte(buf[n]);
    }
}

macro_rules! show_unsigned {
    ($($t:ty),*) => {$(
        impl Show for $t {
            fn show(&self) {
                show_u64(*self as u64);
            }
        }
    )*};
}
show_unsigned!(u8, u16, u32, u64, usize);

macro_rules! show_signed {
    ($($t:ty),*) => {$(
        impl Show for $t {
            fn show(&self) {
                if *self < 0 {
                    write_byte(b'-');
                }
                show_u64(self.unsigned_abs() as u64);
            }
        }
    )*};
}
show_signed!(i32, i64);

#[macro_export]
macro_rules! print {
    ($($e:expr),* $(,)?) => {{ $( $crate::serial::Show::show(&$e); )* }};
}

#[macro_export]
macro_rules! println {
    ($($e:expr),* $(,)?) => {{ $( $crate::serial::Show::show(&$e); )* $crate::serial::write_str("\n"); }};
}
