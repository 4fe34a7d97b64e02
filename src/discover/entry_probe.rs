//! Where a probe of a function's entry costs least, on x86-64.
//!
//! A uprobe replaces an instruction with `int3`. For a few instructions the kernel then does
//! what the instruction does itself (arch/x86/kernel/uprobes.c: `branch_setup_xol_ops` and
//! `push_setup_xol_ops`, the latter since Linux 4.16); any other is copied out of line and
//! single-stepped, a second exception per event. Measured here on pyenv's 3.13.0
//! `sys_audit_tstate` (`bench/audit_cost.py --hook`): bpftrace's `count()` at its first
//! instruction, `test %rdi,%rdi`, 21,938 ns per event; pyusdt at the `je` that follows it, a
//! log record each, 799 ns. A build without frame pointers (pyenv's, and others compiled like
//! them) starts many functions that way; the official images' builds start with `push %rbp`,
//! emulated already.
//!
//! So an entry probe that reads only argument registers may move forward to the first
//! instruction of the entry's straight line (up to and including its first jump, call or
//! return) that the kernel emulates, when it is exactly as good as the entry:
//!
//! - every call runs the line from its start, once: nothing before the chosen instruction
//!   leaves the line, and no direct jump or call anywhere in `.text`'s functions lands after
//!   the entry and up to the chosen instruction (`lands_in`: a cold part jumping back would
//!   reach the probe without passing the entry);
//! - the registers the probe reads still hold their arguments there on the data-flow of
//!   src/discover/derive.rs.
//!
//! Otherwise the probe stays at the entry. Return probes always stay there: the kernel finds
//! the return address at the stack pointer of the instruction probed.
use iced_x86::{Decoder, DecoderOptions, FlowControl, Instruction, OpKind};
use serde::Serialize;
use std::collections::HashSet;
use std::ops::Range;

use super::derive::{decode, states_before, Function, Value, ARGUMENTS};
use super::unwind::Functions;

/// What the kernel emulates at a uprobe, by the instruction's whole bytes (so no prefix
/// slips in): `push` of a 64-bit register (with REX.B 0x41 only, as the kernel requires), a
/// one-byte `nop`, `jcc`/`jmp` by 8 or 32-bit displacement, `call rel32`.
fn emulated(bytes: &[u8]) -> bool {
    matches!(
        bytes,
        [0x50..=0x57]
            | [0x41, 0x50..=0x57]
            | [0x90]
            | [0x70..=0x7f, _]
            | [0xeb, _]
            | [0xe9, _, _, _, _]
            | [0xe8, _, _, _, _]
            | [0x0f, 0x80..=0x8f, _, _, _, _]
    )
}

/// A place for an entry probe after the entry (`list --json` shows it as it is).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EntryProbe {
    pub address: u64,
    /// The instruction there (its mnemonic, lower case), for `list`.
    pub instruction: String,
}

/// Where in `function` an entry probe that reads the arguments numbered `reads` costs least
/// (see the module's comment), `None` for the entry itself: emulated there already, or no
/// better place. `lands_in` must still clear the skipped bytes against the rest of `.text`.
pub fn cheaper_entry(
    function: Function<'_>,
    reads: &[usize],
) -> Result<Option<EntryProbe>, String> {
    let code = decode(function)?;
    let bytes_of = |i: &Instruction| {
        let at = (i.ip() - function.address) as usize;
        &function.bytes[at..at + i.len()]
    };
    let Some(first) = code.first() else {
        return Ok(None);
    };
    if emulated(bytes_of(first)) {
        return Ok(None);
    }
    let end = function
        .address
        .checked_add(function.bytes.len() as u64)
        .ok_or("a function past the address space")?;
    let states = states_before(&code, &(function.address..end))?;
    let targets: HashSet<u64> = code
        .iter()
        .filter(|i| i.op0_kind() == OpKind::NearBranch64)
        .map(|i| i.near_branch64())
        .collect();
    for n in 1..code.len() {
        let i = &code[n];
        if code[n - 1].flow_control() != FlowControl::Next || targets.contains(&i.ip()) {
            return Ok(None);
        }
        let Some(known) = &states[n] else {
            return Ok(None);
        };
        let held = reads
            .iter()
            .all(|&a| a < ARGUMENTS.len() && known.get(&ARGUMENTS[a]) == Some(&Value::Argument(a)));
        if !held {
            return Ok(None);
        }
        if emulated(bytes_of(i)) {
            return Ok(Some(EntryProbe {
                address: i.ip(),
                instruction: format!("{:?}", i.mnemonic()).to_lowercase(),
            }));
        }
    }
    Ok(None)
}

/// Whether a direct jump or call in any function `.eh_frame` describes lands in `skipped`.
/// `code`: the file's executable sections (`.text`, and `.init`, `.plt`, `.fini` whose code
/// `.eh_frame` describes too), each as its address and bytes. Each function is decoded from
/// its start; bytes that do not decode are stepped over. A function not wholly inside one of
/// them counts as landing there: unknown is not clear. So do functions that overlap so much
/// that decoding them all would take more than twice the code's bytes (a file's own claim:
/// bounded, since 500,000 ranges of 4 MB would be decoded for hours).
pub fn lands_in(functions: &Functions, code: &[(u64, Vec<u8>)], skipped: &Range<u64>) -> bool {
    let mut i = Instruction::default();
    let mut budget = code
        .iter()
        .map(|(_, b)| b.len())
        .sum::<usize>()
        .saturating_mul(2);
    for range in functions.ranges() {
        let within = code.iter().find_map(|(start, bytes)| {
            let a = usize::try_from(range.start.checked_sub(*start)?).ok()?;
            let b = usize::try_from(range.end.checked_sub(*start)?).ok()?;
            bytes.get(a..b)
        });
        let Some(bytes) = within else {
            return true;
        };
        let Some(left) = budget.checked_sub(bytes.len()) else {
            return true;
        };
        budget = left;
        let mut decoder = Decoder::with_ip(64, bytes, range.start, DecoderOptions::NONE);
        while decoder.can_decode() {
            decoder.decode_out(&mut i);
            if i.op0_kind() == OpKind::NearBranch64 && skipped.contains(&i.near_branch64()) {
                return true;
            }
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const TEST_RDI: [u8; 3] = [0x48, 0x85, 0xff]; // test %rdi,%rdi
    const JE_FAR: [u8; 6] = [0x0f, 0x84, 0x20, 0x00, 0x00, 0x00]; // je +0x20
    const PUSH_R15: [u8; 2] = [0x41, 0x57];
    const PUSH_RBP: [u8; 1] = [0x55];
    const MOV_RSI_RDI: [u8; 3] = [0x48, 0x89, 0xfe]; // mov %rdi,%rsi
    const MOV_R13_RDI: [u8; 3] = [0x49, 0x89, 0xfd]; // mov %rdi,%r13
    const NOPS: [u8; 0x30] = [0x90; 0x30];
    const RET: [u8; 1] = [0xc3];

    fn at(parts: &[&[u8]]) -> Vec<u8> {
        parts.concat()
    }

    /// The place found, `None` for the entry (an error leaves the probe there too).
    fn cheaper(bytes: &[u8], reads: &[usize]) -> Option<u64> {
        let f = Function {
            address: 0x2000,
            bytes,
        };
        cheaper_entry(f, reads).ok().flatten().map(|p| p.address)
    }

    #[test]
    fn a_single_stepped_entry_moves_to_the_first_emulated_instruction() {
        // pyenv's sys_audit_tstate: test %rdi,%rdi; je ...; push %r15
        let code = at(&[&TEST_RDI, &JE_FAR, &PUSH_R15, &NOPS, &RET]);
        let f = Function {
            address: 0x2000,
            bytes: &code,
        };
        let p = cheaper_entry(f, &[0, 1]).unwrap().unwrap();
        assert_eq!((p.address, p.instruction.as_str()), (0x2003, "je"));
        // Two moves, then the push.
        let code = at(&[&MOV_R13_RDI, &MOV_R13_RDI, &PUSH_R15, &RET]);
        assert_eq!(cheaper(&code, &[0, 1]), Some(0x2006));
    }

    #[test]
    fn an_emulated_entry_stays() {
        let code = at(&[&PUSH_RBP, &TEST_RDI, &JE_FAR, &NOPS, &RET]);
        assert_eq!(cheaper(&code, &[0, 1]), None);
    }

    #[test]
    fn an_argument_changed_before_stays_at_the_entry() {
        // rsi overwritten before the push: the probe reads rsi.
        let code = at(&[&MOV_RSI_RDI, &PUSH_R15, &RET]);
        assert_eq!(cheaper(&code, &[0, 1]), None);
        // ... which does not matter to a probe reading rdi only.
        assert_eq!(cheaper(&code, &[0]), Some(0x2003));
        // Moved elsewhere is not kept.
        let code = at(&[&MOV_R13_RDI, &PUSH_R15, &RET]);
        assert_eq!(cheaper(&code, &[0]), Some(0x2003));
    }

    #[test]
    fn the_line_ends_at_its_first_branch_or_a_jump_into_it() {
        // The instruction after a conditional jump is not run by every call.
        let code = at(&[&TEST_RDI, &[0x74, 0x03], &MOV_R13_RDI, &PUSH_R15, &RET]);
        assert_eq!(cheaper(&code, &[0]), Some(0x2003));
        let code = at(&[&TEST_RDI, &RET, &PUSH_R15, &RET]);
        assert_eq!(cheaper(&code, &[0]), None);
        // A loop back to the second instruction: the probe would fire once per turn.
        let code = at(&[&TEST_RDI, &MOV_R13_RDI, &PUSH_R15, &[0xeb, 0xf9], &RET]);
        assert_eq!(cheaper(&code, &[0]), None);
        // A prefixed branch is single-stepped too: not chosen.
        let code = at(&[&TEST_RDI, &[0x66, 0xe9, 0, 0, 0, 0], &RET]);
        assert_eq!(cheaper(&code, &[0]), None);
    }

    #[test]
    fn jumps_from_other_functions_are_found() {
        // At 0x1000: the probed function; at 0x1080: code jumping to 0x1003; in another
        // section at 0x5000, a call of 0x1005.
        let mut text = vec![0x90u8; 0x100];
        text[0x80..0x82].copy_from_slice(&[0xeb, 0x81]); // jmp 0x1003
        let plt = [0xe8, 0x00, 0xc0, 0xff, 0xff]; // call 0x1005
        let code = vec![(0x1000, text), (0x5000, plt.to_vec())];
        let f = Functions::from_ranges(vec![0x1000..0x1080, 0x1080..0x1090, 0x5000..0x5005]);
        assert!(lands_in(&f, &code, &(0x1001..0x1004)));
        assert!(lands_in(&f, &code, &(0x1004..0x1006)));
        assert!(!lands_in(&f, &code, &(0x1006..0x1008)));
        // A function outside the bytes read: unknown, so landing.
        let f = Functions::from_ranges(vec![0x1000..0x1080, 0x10f0..0x1200]);
        assert!(lands_in(&f, &code, &(0x1006..0x1008)));
        // Ranges overlapping beyond twice the code's bytes: not decoded, so landing.
        let f = Functions::from_ranges(vec![0x1000..0x1100; 3]);
        assert!(lands_in(&f, &code, &(0x1006..0x1008)));
        let f = Functions::from_ranges(vec![0x1000..0x1080; 2]);
        assert!(!lands_in(&f, &code, &(0x1006..0x1008)));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// Whatever the bytes, the place returned is an instruction boundary after the entry
        /// whose bytes are an emulated instruction.
        #[test]
        fn arbitrary_code_gives_emulated_boundaries(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let f = Function { address: 0x2000, bytes: &bytes };
            if let Ok(Some(p)) = cheaper_entry(f, &[0, 1]) {
                let code = decode(f).unwrap();
                let i = code.iter().find(|i| i.ip() == p.address);
                prop_assert!(i.is_some());
                let i = i.unwrap();
                let at = (i.ip() - 0x2000) as usize;
                prop_assert!(emulated(&bytes[at..at + i.len()]));
                prop_assert!(p.address > 0x2000);
            }
        }
    }
}
