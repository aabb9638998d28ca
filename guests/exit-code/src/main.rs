//! Exits with the code given on the command line (`--cmdline 42`), default 0.
#![no_std]
#![no_main]

rt::entry!(main);

fn main(info: &rt::BootInfo) -> u32 {
    let code = rt::parse_u64(rt::next_word(info.args).0).unwrap_or(0) as u32;
    rt::println!("exiting with code ", code);
    code
}
