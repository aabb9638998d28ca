//! The smallest nestbed guest: prints a greeting and what the loader said, exits 0.
#![no_std]
#![no_main]

use rt::Hex;

rt::entry!(main);

fn main(info: &rt::BootInfo) -> u32 {
    rt::println!("Hello from a nestbed guest!");
    rt::println!(
        "multiboot magic ",
        Hex(u64::from(info.magic)),
        ", ",
        info.mem_upper_kib,
        " KiB above 1 MiB, args \"",
        info.args,
        "\""
    );
    0
}
