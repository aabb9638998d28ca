//! `monitor` commands: the VMCS by field name, exit statistics, event state, trace on/off,
//! script reload, break on an exit reason, and guest-physical memory.

use std::fmt::Write as _;

use crate::exit::Level;
use crate::runner::debug::reason_by_name;
use crate::runner::Runner;
use crate::vmx::exits::reason_name;
use crate::vmx::fields;

pub const HELP: &str = "\
nestbed monitor commands:
  vmcs [FIELD]                  the current VMCS (non-zero fields), or one field by SDM name;
                                guest-state fields show L2's live state while L2 runs
  exits                         exit statistics so far and the last 16 exits (VMCS fields, MSRs)
  events                        interruptibility and pending events of L1 and L2, L1's pending
                                interrupt, L2's preemption timer, HLT state and monitor trap flag
  trace on|off                  write exits to the --trace file or pause it
  script reload                 recompile the --script files (globals start afresh)
  break-on-exit REASON [L1|L2]  stop when an exit of this reason is handled (e.g. IO_INSTRUCTION L2)
  break-on-exit clear|list      remove all / list them
  phys ADDR [LEN]               hex dump of L1-physical memory (default 64 bytes, at most 4096)
  help                          this list
";

pub fn run(r: &mut Runner, line: &str) -> String {
    let words: Vec<&str> = line.split_whitespace().collect();
    let result = match words.as_slice() {
        [] | ["help"] => Ok(HELP.to_string()),
        ["vmcs"] => vmcs_dump(r),
        ["vmcs", field] => vmcs_field(r, field),
        ["exits"] => Ok(r.stats_report()),
        ["events"] => Ok(r.events_report()),
        ["trace", "on"] => r.set_tracing(true).map(|()| "trace on\n".into()),
        ["trace", "off"] => r.set_tracing(false).map(|()| "trace off\n".into()),
        ["script", "reload"] => match r.reload_scripts() {
            Ok(0) => Err("no scripts: start nestbed with --script FILE".into()),
            Ok(n) => Ok(format!("reloaded {n} script(s)\n")),
            Err(e) => Err(e.to_string()),
        },
        ["break-on-exit"] | ["break-on-exit", "list"] => Ok(list_breaks(r)),
        ["break-on-exit", "clear"] => {
            r.break_on_exit().clear();
            Ok("no break-on-exit\n".into())
        }
        ["break-on-exit", reason, rest @ ..] => add_break(r, reason, rest),
        ["phys", addr, rest @ ..] => phys(r, addr, rest),
        _ => Err(format!("unknown command '{}'; try 'monitor help'", line.trim())),
    };
    match result {
        Ok(s) => s,
        Err(e) => format!("error: {e}\n"),
    }
}

fn vmcs_dump(r: &mut Runner) -> Result<String, String> {
    let v = r.vmcs_view().ok_or("no current VMCS")?;
    let mut s = String::new();
    let _ = writeln!(s, "revision {:#x}, launched {}", v.revision, v.launched);
    for f in fields::FIELDS {
        let value = v.get(f.encoding);
        if value != 0 {
            let _ = writeln!(s, "{:<40} {value:#x}", f.name);
        }
    }
    Ok(s)
}

fn vmcs_field(r: &mut Runner, name: &str) -> Result<String, String> {
    let (_, f) = fields::by_name(name).ok_or_else(|| format!("unknown VMCS field '{name}'"))?;
    let v = r.vmcs_view().ok_or("no current VMCS")?;
    Ok(format!("{} = {:#x}\n", f.name, v.get(f.encoding)))
}

fn parse_level(s: &str) -> Result<Level, String> {
    match s.to_ascii_uppercase().as_str() {
        "L1" => Ok(Level::L1),
        "L2" => Ok(Level::L2),
        _ => Err(format!("level must be L1 or L2, not '{s}'")),
    }
}

fn add_break(r: &mut Runner, reason: &str, rest: &[&str]) -> Result<String, String> {
    let nr = reason_by_name(reason).ok_or_else(|| format!("unknown exit reason '{reason}' (SDM names, e.g. HLT)"))?;
    let level = match rest {
        [] => None,
        [l] => Some(parse_level(l)?),
        _ => return Err("usage: break-on-exit REASON [L1|L2]".into()),
    };
    r.break_on_exit().push((nr, level));
    Ok(list_breaks(r))
}

fn list_breaks(r: &mut Runner) -> String {
    let b = r.break_on_exit();
    if b.is_empty() {
        return "no break-on-exit\n".into();
    }
    b.iter()
        .map(|(nr, l)| format!("break on {} ({nr}) at {}\n", reason_name(*nr), l.map_or("any level", |l| l.as_str())))
        .collect()
}

fn number(s: &str) -> Result<u64, String> {
    let r = match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(h) => u64::from_str_radix(h, 16),
        None => s.parse(),
    };
    r.map_err(|_| format!("not a number: '{s}'"))
}

fn phys(r: &mut Runner, addr: &str, rest: &[&str]) -> Result<String, String> {
    let addr = number(addr)?;
    let len = match rest {
        [] => 64,
        [n] => number(n)?.min(4096),
        _ => return Err("usage: phys ADDR [LEN]".into()),
    };
    let mut buf = vec![0u8; len as usize];
    if !r.read_phys(addr, &mut buf) {
        return Err(format!("{addr:#x}+{len:#x} is outside guest RAM"));
    }
    let mut s = String::new();
    for (i, chunk) in buf.chunks(16).enumerate() {
        let _ = write!(s, "{:#010x}:", addr + 16 * i as u64);
        for b in chunk {
            let _ = write!(s, " {b:02x}");
        }
        s.push('\n');
    }
    Ok(s)
}
