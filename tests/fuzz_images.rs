//! The image fuzzer: embedded guest images with flipped bits and crafted ELF and multiboot
//! headers go through the loader and the patch scanner in-process (each must answer with a
//! value, never a panic) and a few through the nestbed binary (each must end with a documented
//! exit code). Seeded; `NESTBED_FUZZ_SCALE` multiplies the counts.

mod common;

use common::{fuzz_scale, tmpdir, Rng};
use nestbed::machine::{loader, memory::GuestRam};
use nestbed::patch::{self, Selection};

const SEEDS: [&str; 4] = ["hello", "vmx-basic", "exit-code", "platform"];

/// One mutation of `img`: bit flips, a crafted ELF or multiboot header field, or a cut.
fn mutate(rng: &mut Rng, img: &[u8]) -> Vec<u8> {
    let mut m = img.to_vec();
    let word = |m: &mut Vec<u8>, at: usize, bytes: usize, v: u64| {
        if at.checked_add(bytes).is_some_and(|end| end <= m.len()) {
            m[at..at + bytes].copy_from_slice(&v.to_le_bytes()[..bytes]);
        }
    };
    let boundary = [0u64, 1, 0x7f, 0x80, 0xff, 0xffff, 0x1_0000, 0x7fff_ffff, 0xffff_ffff, u64::MAX, 1 << 20, 1 << 32];
    for _ in 0..1 + rng.below(3) {
        match rng.below(6) {
            0 => {
                for _ in 0..1 + rng.below(8) {
                    let i = rng.below(m.len() as u64) as usize;
                    m[i] ^= 1 << rng.below(8);
                }
            }
            // ELF64 header: e_entry 24, e_phoff 32, e_shoff 40, e_phentsize 54, e_phnum 56,
            // e_shentsize 58, e_shnum 60 (System V ABI).
            1 => {
                let (at, bytes) = *rng.pick(&[(24, 8), (32, 8), (40, 8), (54, 2), (56, 2), (58, 2), (60, 2), (4, 1)]);
                let v = *rng.pick(&boundary);
                word(&mut m, at, bytes, v);
            }
            // A program header field: p_type, p_offset, p_paddr, p_filesz, p_memsz.
            2 => {
                let phoff = u64::from_le_bytes(m[32..40].try_into().unwrap()) as usize;
                let ph = phoff.saturating_add(56 * rng.below(4) as usize);
                let (at, bytes) = *rng.pick(&[(0, 4), (8, 8), (24, 8), (32, 8), (40, 8)]);
                let v = *rng.pick(&boundary);
                word(&mut m, ph.saturating_add(at), bytes, v);
            }
            // The multiboot header (in the first 8 KiB): flags with a valid checksum, or the
            // a.out-kludge addresses.
            3 => {
                if let Some(h) = m.windows(4).take(8192).position(|w| w == 0x1BAD_B002u32.to_le_bytes()) {
                    let flags = if rng.below(2) == 0 { rng.next() as u32 } else { 1 << 16 | rng.below(8) as u32 };
                    word(&mut m, h + 4, 4, u64::from(flags));
                    word(&mut m, h + 8, 4, u64::from(0x1BAD_B002u32.wrapping_add(flags).wrapping_neg()));
                    for o in [12, 16, 20, 24, 28] {
                        if rng.below(2) == 0 {
                            word(&mut m, h + o, 4, *rng.pick(&boundary));
                        }
                    }
                }
            }
            4 => m.truncate(rng.below(m.len() as u64) as usize),
            _ => {
                let i = rng.below(m.len() as u64) as usize;
                let n = (rng.below(64) as usize).min(m.len() - i);
                m[i..i + n].fill(*rng.pick(&[0u8, 0xff, 0x41]));
            }
        }
        if m.len() < 64 {
            break;
        }
    }
    m
}

#[test]
fn mutated_images_get_an_answer_from_the_loader_and_the_scanner() {
    let n = 1000 * fuzz_scale();
    let mut rng = Rng(0x1a6e_f022);
    let ram = GuestRam::new(64).unwrap();
    let (mut loaded, mut refused) = (0, 0);
    for i in 0..n {
        let seed = nestbed::guests::find(SEEDS[i as usize % SEEDS.len()]).unwrap();
        let img = mutate(&mut rng, seed);
        match loader::load(&ram, &img, "fuzz") {
            Ok(_) => loaded += 1,
            Err(e) => {
                assert!(!e.to_string().is_empty());
                refused += 1;
            }
        }
        let _ = patch::scan(&img, Selection::all());
    }
    println!("image fuzzer: {n} images, {loaded} loaded, {refused} refused");
    assert!(loaded > 0 && refused > 0, "the mutations reach both sides: {loaded} loaded, {refused} refused");
}

#[test]
fn mutated_images_end_nestbed_with_a_documented_code() {
    let n = 24 * fuzz_scale();
    let mut rng = Rng(0xb007);
    let dir = tmpdir("fuzz-images");
    for i in 0..n {
        let seed = nestbed::guests::find(SEEDS[i as usize % SEEDS.len()]).unwrap();
        let img = mutate(&mut rng, seed);
        let path = dir.join(format!("{i}.elf"));
        std::fs::write(&path, &img).unwrap();
        let r = common::nestbed(&["run", "--guest", path.to_str().unwrap(), "--mem", "64", "--timeout", "3"]);
        // The guest's own status (0-199), 201-209 and 130 are documented; a panic is 101 but a
        // guest may exit with 101 too, so a panic is recognised by its message.
        assert!(
            (0..=209).contains(&r.code) && !r.stderr.contains("panicked") && !r.stderr.contains("overflow"),
            "image {i}: exit {} {}",
            r.code,
            r.stderr
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
