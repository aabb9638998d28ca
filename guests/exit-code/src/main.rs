//! Exits with the code given on the command line (`--cmdline 42`), default 0; `--cmdline spin`
//! never exits (for timeouts and Ctrl-C).
#![no_std]
#![no_main]

rt::entry!(main);

fn main(info: &rt::BootInfo) -> u32 {
    if rt::next_word(info.args).0 == "spin" {
        rt::println!("spinning forever");
        loop {
            core::hint::spin_loop();
        }
    }
    let code = rt::parse_u64(rt::next_word(info.args).0).unwrap_or(0) as u32;
    rt::println!("exiting with code ", code);
    code
}
