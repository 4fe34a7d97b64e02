//! Internal hook points derived from exported functions' machine code (issue 24), on x86-64.
//!
//! A build without markers and without a symbol table (the official `python:*` images) exports
//! `PySys_Audit`, but the function every audit event passes through, `sys_audit_tstate`, is
//! static. `PySys_Audit` is a thin wrapper that calls it once:
//!
//! ```text
//! PySys_Audit(event, format, ...)  ->  sys_audit_tstate(tstate, event, format, &va)
//! ```
//!
//! so its one direct call of a local function, with the wrapper's first argument in the
//! callee's second register and its second in the third, is `sys_audit_tstate`. The code read is
//! someone else's, so what is derived is refused, never guessed, unless all of this holds:
//!
//! - the function's bytes (at most `MAX_FUNCTION_BYTES`) decode as x86-64 instructions, the
//!   last one ending exactly at its end, and none jumps backwards (no loop: execution moves
//!   forward, so a linear scan sees every path);
//! - it makes exactly one direct call whose target lies in the file's `.text` and outside the
//!   function itself (calls through the PLT, such as `__stack_chk_fail`, are not local);
//! - at that call, the registers hold what the shape says, followed through register-to-register
//!   moves from the function's entry: a move that a forward branch may skip, any other write,
//!   and any other call (which clobbers the caller-saved registers) make a register unknown;
//! - the target is 16-byte aligned (where compilers start functions on x86-64) and is not
//!   inside an exported function.
//!
//! The decoder is iced-x86 (not hand-written). Only a function's own symbol-sized range is
//! read, and the address returned is a call's decoded target, which the checks above tie to a
//! function start: the uprobe goes at its first byte. arm64 would need an AArch64 decoder
//! (`bl` targets, arguments in `x0`–`x7`) and the same checks; it is refused today.
use iced_x86::{
    Decoder, DecoderOptions, FlowControl, Instruction, InstructionInfoFactory, OpAccess, OpKind,
    Register,
};
use std::collections::HashMap;
use std::ops::Range;

/// The most bytes of one function decoded: `PySys_Audit` is about 220 bytes on 3.11 and 3.13.
pub const MAX_FUNCTION_BYTES: usize = 4096;

/// The argument registers of the System V x86-64 ABI, in order.
const ARGUMENTS: [Register; 6] = [
    Register::RDI,
    Register::RSI,
    Register::RDX,
    Register::RCX,
    Register::R8,
    Register::R9,
];

/// Registers a call may change (System V): the arguments, rax, r10, r11.
const CALLER_SAVED: [Register; 9] = [
    Register::RAX,
    Register::RCX,
    Register::RDX,
    Register::RSI,
    Register::RDI,
    Register::R8,
    Register::R9,
    Register::R10,
    Register::R11,
];

/// One function's code: its address and its bytes as the file holds them.
#[derive(Debug, Clone, Copy)]
pub struct Function<'a> {
    pub address: u64,
    pub bytes: &'a [u8],
}

/// What the rest of the file tells about addresses: its `.text`, and the exported functions'
/// ranges (a derived target must not fall inside one).
#[derive(Debug, Clone, Default)]
pub struct Layout {
    pub text: Range<u64>,
    pub exported: Vec<Range<u64>>,
}

impl Layout {
    /// Whether `target` can be a function of the file's own: in `.text`, where a compiler
    /// starts one, and not inside an exported function.
    fn function_start(&self, target: u64) -> Result<(), String> {
        if !self.text.contains(&target) {
            return Err(format!("{target:#x} is not in .text"));
        }
        if target % 16 != 0 {
            return Err(format!("{target:#x} is not 16-byte aligned"));
        }
        if self
            .exported
            .iter()
            .any(|r| r.start < target && target < r.end)
        {
            return Err(format!("{target:#x} is inside an exported function"));
        }
        Ok(())
    }
}

/// The value a register holds, as far as the scan knows: the function's `n`th argument.
type Known = HashMap<Register, usize>;

/// `sys_audit_tstate`'s address, derived from `PySys_Audit` (see the module's comment): the
/// one local call, with `PySys_Audit`'s event (first argument) in rsi and format (second) in
/// rdx.
pub fn audit_worker(function: Function<'_>, layout: &Layout) -> Result<u64, String> {
    one_local_call(function, layout, &[(Register::RSI, 0), (Register::RDX, 1)])
}

/// The target of `function`'s only direct call of a local function, when at that call each
/// `(register, n)` of `expect` holds the function's `n`th argument.
pub fn one_local_call(
    function: Function<'_>,
    layout: &Layout,
    expect: &[(Register, usize)],
) -> Result<u64, String> {
    let code = decode(function)?;
    let end = function.address + function.bytes.len() as u64;
    let inside = function.address..end;
    // Forward branches, as the ranges of instructions they may skip.
    let mut skipped = Vec::new();
    for i in &code {
        if let Some(target) = branch_target(i) {
            if !inside.contains(&target) {
                continue; // A tail call or a jump to cold code: leaves the function.
            }
            if target <= i.ip() {
                return Err(format!("a backward branch at {:#x}", i.ip()));
            }
            skipped.push(i.next_ip()..target);
        }
    }
    let local_calls: Vec<&Instruction> = code
        .iter()
        .filter(|i| i.flow_control() == FlowControl::Call && i.op0_kind() == OpKind::NearBranch64)
        .filter(|i| {
            let t = i.near_branch64();
            layout.text.contains(&t) && !inside.contains(&t)
        })
        .collect();
    let call = match local_calls.as_slice() {
        [one] => *one,
        [] => return Err("no direct call of a local function".into()),
        more => return Err(format!("{} local calls where one was expected", more.len())),
    };
    let target = call.near_branch64();
    layout.function_start(target)?;

    let mut known: Known = ARGUMENTS.iter().enumerate().map(|(n, r)| (*r, n)).collect();
    let mut info = InstructionInfoFactory::new();
    for i in code.iter().take_while(|i| i.ip() < call.ip()) {
        let may_be_skipped = skipped.iter().any(|r| r.contains(&i.ip()));
        step(&mut known, &mut info, i, may_be_skipped);
    }
    for &(register, n) in expect {
        if known.get(&register) != Some(&n) {
            return Err(format!(
                "at the call {:#x}, {register:?} does not hold argument {n}",
                call.ip()
            ));
        }
    }
    Ok(target)
}

/// Decodes every instruction of `function`, or says why it is not code.
fn decode(function: Function<'_>) -> Result<Vec<Instruction>, String> {
    if function.bytes.is_empty() || function.bytes.len() > MAX_FUNCTION_BYTES {
        return Err(format!(
            "{} bytes: not a function of at most {MAX_FUNCTION_BYTES}",
            function.bytes.len()
        ));
    }
    let mut decoder = Decoder::with_ip(64, function.bytes, function.address, DecoderOptions::NONE);
    let mut code = Vec::new();
    while decoder.can_decode() {
        let i = decoder.decode();
        if i.is_invalid() {
            return Err(format!("no valid instruction at {:#x}", i.ip()));
        }
        code.push(i);
    }
    // The decoder stops at the end of the bytes: an instruction cut there is invalid (above),
    // so the last one ends exactly at the function's end.
    Ok(code)
}

/// Where a jump (conditional or not) goes, when it is direct.
fn branch_target(i: &Instruction) -> Option<u64> {
    match i.flow_control() {
        FlowControl::UnconditionalBranch | FlowControl::ConditionalBranch
            if i.op0_kind() == OpKind::NearBranch64 =>
        {
            Some(i.near_branch64())
        }
        _ => None,
    }
}

/// What `i` does to the registers whose values are known.
fn step(
    known: &mut Known,
    info: &mut InstructionInfoFactory,
    i: &Instruction,
    may_be_skipped: bool,
) {
    if i.flow_control() == FlowControl::Call || i.flow_control() == FlowControl::IndirectCall {
        for r in CALLER_SAVED {
            known.remove(&r);
        }
        return;
    }
    // A 64-bit register-to-register move copies what is known, unless it may not run.
    if let Some((dst, src)) = register_move(i) {
        match known.get(&src).copied() {
            Some(n) if !may_be_skipped => {
                known.insert(dst, n);
            }
            _ => {
                known.remove(&dst);
            }
        }
        return;
    }
    for used in info.info(i).used_registers() {
        let written = !matches!(
            used.access(),
            OpAccess::Read | OpAccess::CondRead | OpAccess::None | OpAccess::NoMemAccess
        );
        if written {
            known.remove(&used.register().full_register());
        }
    }
}

/// `mov r64, r64`: (destination, source).
fn register_move(i: &Instruction) -> Option<(Register, Register)> {
    use iced_x86::Code;
    let is_move = matches!(i.code(), Code::Mov_r64_rm64 | Code::Mov_rm64_r64);
    (is_move && i.op0_kind() == OpKind::Register && i.op1_kind() == OpKind::Register)
        .then(|| (i.op0_register(), i.op1_register()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A file whose .text spans these addresses, without exported functions.
    fn layout() -> Layout {
        Layout {
            text: 0x1000..0x40_0000,
            exported: vec![],
        }
    }

    /// The pieces the tests assemble functions from (the wrapper's shape: format to rdx,
    /// event to rsi, call).
    const MOV_RSI_RDI: [u8; 3] = [0x48, 0x89, 0xfe]; // mov %rdi,%rsi
    const MOV_RDX_RSI: [u8; 3] = [0x48, 0x89, 0xf2]; // mov %rsi,%rdx
    const XOR_ESI: [u8; 2] = [0x31, 0xf6]; // xor %esi,%esi
    const RET: [u8; 1] = [0xc3];

    /// `call rel32` to `target` from an instruction at `at`.
    fn call(at: u64, target: u64) -> Vec<u8> {
        let rel = target.wrapping_sub(at + 5) as i64 as i32;
        let mut v = vec![0xe8];
        v.extend_from_slice(&rel.to_le_bytes());
        v
    }

    /// The function at `address` made of `parts`, where an empty part (`CALL`) is a call of
    /// `target`.
    fn function(parts: &[&[u8]], address: u64, target: u64) -> Vec<u8> {
        let mut v: Vec<u8> = Vec::new();
        for p in parts {
            if p.is_empty() {
                let at = address + v.len() as u64;
                v.extend(call(at, target));
            } else {
                v.extend_from_slice(p);
            }
        }
        v
    }

    const CALL: &[u8] = &[];

    #[test]
    fn the_wrapper_shape_gives_its_callee() {
        let bytes = function(&[&MOV_RDX_RSI, &MOV_RSI_RDI, CALL, &RET], 0x2000, 0x3000);
        let f = Function {
            address: 0x2000,
            bytes: &bytes,
        };
        assert_eq!(audit_worker(f, &layout()), Ok(0x3000));
    }

    #[test]
    fn an_argument_overwritten_before_the_call_is_refused() {
        let bytes = function(
            &[&MOV_RDX_RSI, &MOV_RSI_RDI, &XOR_ESI, CALL, &RET],
            0x2000,
            0x3000,
        );
        let f = Function {
            address: 0x2000,
            bytes: &bytes,
        };
        let e = audit_worker(f, &layout()).unwrap_err();
        assert!(e.contains("RSI does not hold argument 0"), "{e}");
    }

    #[test]
    fn a_move_a_branch_may_skip_is_not_trusted() {
        // je +3 over the move of rdi into rsi.
        let bytes = function(
            &[&MOV_RDX_RSI, &[0x74, 0x03], &MOV_RSI_RDI, CALL, &RET],
            0x2000,
            0x3000,
        );
        let f = Function {
            address: 0x2000,
            bytes: &bytes,
        };
        assert!(audit_worker(f, &layout()).is_err());
    }

    #[test]
    fn targets_that_are_not_function_starts_are_refused() {
        for (target, why) in [
            (0x3004, "aligned"),
            // Outside .text (a PLT stub) or inside itself: not a local call at all.
            (0x50_0000, "no direct call"),
            (0x2004, "no direct call"),
        ] {
            let bytes = function(&[&MOV_RDX_RSI, &MOV_RSI_RDI, CALL, &RET], 0x2000, target);
            let f = Function {
                address: 0x2000,
                bytes: &bytes,
            };
            let e = audit_worker(f, &layout()).unwrap_err();
            assert!(e.contains(why), "{target:#x}: {e}");
        }
        let mut l = layout();
        l.exported.push(0x2ff0..0x3100);
        let bytes = function(&[&MOV_RDX_RSI, &MOV_RSI_RDI, CALL, &RET], 0x2000, 0x3000);
        let f = Function {
            address: 0x2000,
            bytes: &bytes,
        };
        assert!(audit_worker(f, &l).unwrap_err().contains("exported"));
    }

    #[test]
    fn two_local_calls_and_loops_are_refused() {
        let mut bytes = function(&[&MOV_RDX_RSI, &MOV_RSI_RDI, CALL], 0x2000, 0x3000);
        let at = 0x2000 + bytes.len() as u64;
        bytes.extend(call(at, 0x3010));
        bytes.extend_from_slice(&RET);
        let f = Function {
            address: 0x2000,
            bytes: &bytes,
        };
        assert!(audit_worker(f, &layout())
            .unwrap_err()
            .contains("2 local calls"));

        // jmp back to the start.
        let bytes = function(
            &[&MOV_RDX_RSI, &MOV_RSI_RDI, CALL, &[0xeb, 0xf3]],
            0x2000,
            0x3000,
        );
        let f = Function {
            address: 0x2000,
            bytes: &bytes,
        };
        assert!(audit_worker(f, &layout()).unwrap_err().contains("backward"));
    }

    #[test]
    fn cut_and_oversized_code_is_refused() {
        let bytes = function(&[&MOV_RDX_RSI, &MOV_RSI_RDI, CALL], 0x2000, 0x3000);
        let cut = &bytes[..bytes.len() - 2];
        let f = Function {
            address: 0x2000,
            bytes: cut,
        };
        assert!(audit_worker(f, &layout())
            .unwrap_err()
            .contains("no valid instruction"));
        let big = vec![0x90; MAX_FUNCTION_BYTES + 1];
        let f = Function {
            address: 0x2000,
            bytes: &big,
        };
        assert!(audit_worker(f, &layout()).is_err());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// Arbitrary bytes never panic, and whatever is returned passed the target checks.
        #[test]
        fn arbitrary_code_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let f = Function { address: 0x2000, bytes: &bytes };
            if let Ok(t) = audit_worker(f, &layout()) {
                prop_assert!(layout().function_start(t).is_ok());
            }
        }

        /// The valid shape, mutated: a result is always a validated target, and any mutation
        /// that keeps one returns the same target or one the checks accept.
        #[test]
        fn mutated_code_is_refused_or_still_valid(flips in proptest::collection::vec((any::<u16>(), any::<u8>()), 1..6)) {
            let mut bytes = function(&[&MOV_RDX_RSI, &MOV_RSI_RDI, CALL, &RET], 0x2000, 0x3000);
            for (at, x) in flips {
                let i = at as usize % bytes.len();
                bytes[i] ^= x;
            }
            let f = Function { address: 0x2000, bytes: &bytes };
            if let Ok(t) = audit_worker(f, &layout()) {
                prop_assert!(layout().function_start(t).is_ok());
            }
        }
    }
}
