//! Internal hook points derived from exported functions' machine code (issue 24), on x86-64.
//!
//! A build without markers and without a symbol table (the official `python:*` images) exports
//! wrappers whose work is done by static functions, which are the hook points:
//!
//! ```text
//! PySys_Audit(event, format, ...)  ->  sys_audit_tstate(tstate, event, format, &va)
//! PyGC_Collect()                   ->  gc_collect_with_callback(tstate, 2)        (3.11, 3.12)
//! gc_collect_with_callback(t, g)   ->  gc_collect_main(t, g, &collected, &uncollectable, 0)
//! PyGC_Collect()                   ->  gc_collect_main(tstate, 2, MANUAL)         (3.13)
//! _Py_HandlePending(tstate)        ->  gc_collect_main(tstate, -1, HEAP)          (3.13)
//! ```
//!
//! Each step takes the one direct call of a local function at which the registers hold what
//! the shape says (the caller's arguments, or a constant). The code read is someone else's, so
//! what is derived is refused, never guessed, unless all of this holds:
//!
//! - the function's bytes (its symbol's size, or its `.eh_frame` length for a derived one; at
//!   most `MAX_FUNCTION_BYTES`) decode as x86-64 instructions, the last one ending exactly at
//!   its end;
//! - exactly one direct call matches: its target lies in the file's `.text`, outside the
//!   function, and is not an exported function (those are not what is derived); calls through
//!   the PLT, such as `__stack_chk_fail`, are not local;
//! - at that call, the registers hold what the shape says on every path from the function's
//!   entry (a data-flow over its branches, loops included): values follow moves between
//!   registers and of constants; any other write, and any other call (which clobbers the
//!   caller-saved registers), make a register unknown, and so does a join of paths that
//!   disagree; a jump through a register or into an instruction refuses the function;
//! - the target starts a function that `.eh_frame` describes (src/discover/unwind.rs) and is
//!   not inside an exported function.
//!
//! The decoder is iced-x86 (not hand-written). Only a function's own range is read, and the
//! address returned is a decoded call's target that `.eh_frame` says starts a function: the
//! uprobe goes at its first byte. arm64 would need an AArch64 decoder (`bl` targets, arguments
//! in `x0`–`x7`) and the same checks; it is refused today.
use iced_x86::{
    Decoder, DecoderOptions, FlowControl, Instruction, InstructionInfoFactory, OpAccess, OpKind,
    Register,
};
use std::collections::HashMap;
use std::ops::Range;

use super::unwind::Functions;

/// The most bytes of one function decoded (`PySys_Audit` is about 220 bytes, the GC's
/// wrappers under 200).
pub const MAX_FUNCTION_BYTES: usize = 4096;

/// The argument registers of the System V x86-64 ABI, in order.
pub(super) const ARGUMENTS: [Register; 6] = [
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

/// What the rest of the file tells about addresses: its `.text`, its functions (`.eh_frame`),
/// and the exported functions' ranges.
#[derive(Debug, Clone, Default)]
pub struct Layout {
    pub text: Range<u64>,
    pub functions: Functions,
    pub exported: Vec<Range<u64>>,
}

impl Layout {
    /// Whether `target` is an exported function's start.
    fn exported_start(&self, target: u64) -> bool {
        self.exported.iter().any(|r| r.start == target)
    }

    /// The bounds of the function of the file's own that starts at `target`.
    fn function_at(&self, target: u64) -> Result<Range<u64>, String> {
        if !self.text.contains(&target) {
            return Err(format!("{target:#x} is not in .text"));
        }
        if self
            .exported
            .iter()
            .any(|r| r.start < target && target < r.end)
        {
            return Err(format!("{target:#x} is inside an exported function"));
        }
        let range = self
            .functions
            .starting_at(target)
            .ok_or_else(|| format!("{target:#x} starts no function .eh_frame describes"))?;
        if range.end > self.text.end {
            return Err(format!("the function at {target:#x} runs past .text"));
        }
        Ok(range)
    }
}

/// What a register holds, as far as the scan knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Value {
    /// The function's `n`th argument, all 64 bits.
    Argument(usize),
    /// The low 32 bits of the `n`th argument (after a 32-bit move): an `int` argument's value.
    Low32(usize),
    /// A constant.
    Constant(i64),
}

impl Value {
    /// Whether a register holding `self` holds what `expected` asks: an `int` argument
    /// (`Low32`) is held by the whole argument too.
    fn satisfies(self, expected: Value) -> bool {
        match (expected, self) {
            (Value::Low32(n), Value::Argument(m)) => n == m,
            _ => self == expected,
        }
    }

    /// What a 32-bit move of `self` leaves in its destination.
    fn low32(self) -> Value {
        match self {
            Value::Argument(n) | Value::Low32(n) => Value::Low32(n),
            Value::Constant(c) => Value::Constant(c & 0xffff_ffff),
        }
    }
}

pub(super) type Known = HashMap<Register, Value>;

/// A derived function: its address and bounds (from `.eh_frame`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Derived {
    pub address: u64,
    pub bounds: Range<u64>,
}

/// `sys_audit_tstate`, derived from `PySys_Audit` (see the module's comment): the local call
/// with `PySys_Audit`'s event (first argument) in rsi and format (second) in rdx.
pub fn audit_worker(function: Function<'_>, layout: &Layout) -> Result<Derived, String> {
    one_matching_call(
        function,
        layout,
        &[
            (Register::RSI, Value::Argument(0)),
            (Register::RDX, Value::Argument(1)),
        ],
    )
}

/// The local call of `PyGC_Collect` with the oldest generation, 2, in esi:
/// `gc_collect_with_callback` on 3.11 and 3.12, `gc_collect_main` itself on 3.13.
pub fn gc_with_callback(function: Function<'_>, layout: &Layout) -> Result<Derived, String> {
    one_matching_call(function, layout, &[(Register::RSI, Value::Constant(2))])
}

/// `gc_collect_main`, derived from `_Py_HandlePending` (3.13): the local call given -1
/// (`GENERATION_AUTO`, as a 32-bit constant) in esi.
pub fn gc_auto(function: Function<'_>, layout: &Layout) -> Result<Derived, String> {
    one_matching_call(
        function,
        layout,
        &[(Register::RSI, Value::Constant(0xffff_ffff))],
    )
}

/// The function `_Py_HandlePending(tstate)` hands its thread state to: `_Py_RunGC` where PGO
/// kept it apart, which then calls (or jumps to) `gc_collect_main` with -1.
pub fn tstate_passed_on(function: Function<'_>, layout: &Layout) -> Result<Derived, String> {
    one_matching_call(function, layout, &[(Register::RDI, Value::Argument(0))])
}

/// `gc_collect_main`, derived from `gc_collect_with_callback(tstate, generation)`: the local
/// call given both of its arguments, in the same registers.
pub fn gc_main(function: Function<'_>, layout: &Layout) -> Result<Derived, String> {
    one_matching_call(
        function,
        layout,
        &[
            (Register::RDI, Value::Argument(0)),
            (Register::RSI, Value::Low32(1)),
        ],
    )
}

/// The target of `function`'s only direct call of a local function at which each
/// `(register, value)` of `expect` holds.
pub fn one_matching_call(
    function: Function<'_>,
    layout: &Layout,
    expect: &[(Register, Value)],
) -> Result<Derived, String> {
    let code = decode(function)?;
    let end = function
        .address
        .checked_add(function.bytes.len() as u64)
        .ok_or("a function past the address space")?;
    let inside = function.address..end;
    let states = states_before(&code, &inside)?;
    // Calls, and jumps out of the function (tail calls: the PGO builds' _Py_RunGC makes one).
    let local_calls = code.iter().enumerate().filter(|(_, i)| {
        let transfer = matches!(
            i.flow_control(),
            FlowControl::Call | FlowControl::UnconditionalBranch
        );
        let direct = transfer && i.op0_kind() == OpKind::NearBranch64;
        let t = i.near_branch64();
        direct && layout.text.contains(&t) && !inside.contains(&t) && !layout.exported_start(t)
    });
    let mut matching = Vec::new();
    let mut jumps = Vec::new();
    let mut why_not = Vec::new();
    for (at, call) in local_calls {
        let Some(known) = &states[at] else {
            why_not.push(format!("the call at {:#x} is never reached", call.ip()));
            continue;
        };
        let wrong = expect
            .iter()
            .find(|(register, value)| !known.get(register).is_some_and(|v| v.satisfies(*value)));
        match wrong {
            None if call.flow_control() == FlowControl::Call => matching.push(call),
            None => jumps.push(call),
            Some((register, value)) => why_not.push(format!(
                "at the call {:#x}, {register:?} does not hold {value:?}",
                call.ip()
            )),
        }
    }
    // A jump out is a tail call only where no call matches: it may be the jump to the
    // function's own cold part, which .eh_frame describes apart too.
    if matching.is_empty() {
        matching = jumps;
    }
    let call = match matching.as_slice() {
        [one] => *one,
        [] if why_not.is_empty() => return Err("no direct call of a local function".into()),
        [] => return Err(why_not.join("; ")),
        more => {
            return Err(format!(
                "{} local calls match where one was expected",
                more.len()
            ))
        }
    };
    let address = call.near_branch64();
    let bounds = layout.function_at(address)?;
    Ok(Derived { address, bounds })
}

/// What the registers surely hold before each instruction of `code` (`None`: not reached from
/// the entry), whatever path led there: a forward data-flow over the function's branches, the
/// values at a join those that every path into it agrees on, iterated until nothing changes
/// (a loop's second pass can only forget). Fails on what makes the paths unknown: a jump
/// through a register, or into the middle of an instruction.
pub(super) fn states_before(
    code: &[Instruction],
    inside: &Range<u64>,
) -> Result<Vec<Option<Known>>, String> {
    let index: HashMap<u64, usize> = code.iter().enumerate().map(|(n, i)| (i.ip(), n)).collect();
    let mut successors = Vec::with_capacity(code.len());
    for (n, i) in code.iter().enumerate() {
        let mut next = Vec::new();
        let falls_through = !matches!(
            i.flow_control(),
            FlowControl::Return | FlowControl::UnconditionalBranch
        );
        // What iced cannot describe wholly (the registers xsave/xrstor touch) and transactions
        // (xbegin's abort path) are not followed: refused.
        if i.is_save_restore_instruction() {
            return Err(format!("a save/restore instruction at {:#x}", i.ip()));
        }
        match i.flow_control() {
            FlowControl::IndirectBranch => {
                return Err(format!("an indirect jump at {:#x}", i.ip()));
            }
            FlowControl::XbeginXabortXend => {
                return Err(format!("a transaction at {:#x}", i.ip()));
            }
            FlowControl::UnconditionalBranch | FlowControl::ConditionalBranch => {
                if let Some(target) = branch_target(i).filter(|t| inside.contains(t)) {
                    let to = *index
                        .get(&target)
                        .ok_or_else(|| format!("a jump at {:#x} into an instruction", i.ip()))?;
                    next.push(to);
                } else if branch_target(i).is_none() {
                    return Err(format!("an indirect jump at {:#x}", i.ip()));
                }
                // Elsewhere: a tail call or cold code, which leaves the function.
            }
            _ => {}
        }
        if falls_through && n + 1 < code.len() {
            next.push(n + 1);
        }
        successors.push(next);
    }
    let entry: Known = ARGUMENTS
        .iter()
        .enumerate()
        .map(|(n, r)| (*r, Value::Argument(n)))
        .collect();
    let mut states: Vec<Option<Known>> = vec![None; code.len()];
    if code.is_empty() {
        return Ok(states);
    }
    states[0] = Some(entry);
    let mut work = vec![0usize];
    let mut info = InstructionInfoFactory::new();
    // Each pass over an instruction can only remove registers: bounded by the registers known.
    let mut budget = code.len().saturating_mul(ARGUMENTS.len() + 16 + 2);
    while let Some(n) = work.pop() {
        budget = budget
            .checked_sub(1)
            .ok_or("the data-flow does not settle")?;
        let mut out = states[n].clone().unwrap_or_default();
        step(&mut out, &mut info, &code[n]);
        for &m in &successors[n] {
            let joined = match &states[m] {
                None => out.clone(),
                Some(have) => have
                    .iter()
                    .filter(|(r, v)| out.get(*r) == Some(*v))
                    .map(|(r, v)| (*r, *v))
                    .collect(),
            };
            if states[m].as_ref() != Some(&joined) {
                states[m] = Some(joined);
                work.push(m);
            }
        }
    }
    Ok(states)
}

/// Decodes every instruction of `function`, or says why it is not code.
pub(super) fn decode(function: Function<'_>) -> Result<Vec<Instruction>, String> {
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
fn step(known: &mut Known, info: &mut InstructionInfoFactory, i: &Instruction) {
    // A call, or an interrupt that comes back (int3, int n): the callee may change them.
    if matches!(
        i.flow_control(),
        FlowControl::Call | FlowControl::IndirectCall | FlowControl::Interrupt
    ) {
        for r in CALLER_SAVED {
            known.remove(&r);
        }
        return;
    }
    if let Some((dst, value)) = simple_move(i, known) {
        match value {
            Some(v) => known.insert(dst, v),
            _ => known.remove(&dst),
        };
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

/// A move into a register of another register (64 or 32 bits) or of a constant, and of a
/// register xor-ed with itself: (the full destination register, what it now holds if known).
fn simple_move(i: &Instruction, known: &Known) -> Option<(Register, Option<Value>)> {
    use iced_x86::Code;
    if i.op0_kind() != OpKind::Register {
        return None;
    }
    let dst = i.op0_register().full_register();
    let source = || known.get(&i.op1_register().full_register()).copied();
    match i.code() {
        Code::Mov_r64_rm64 | Code::Mov_rm64_r64 if i.op1_kind() == OpKind::Register => {
            Some((dst, source()))
        }
        Code::Mov_r32_rm32 | Code::Mov_rm32_r32 if i.op1_kind() == OpKind::Register => {
            Some((dst, source().map(Value::low32)))
        }
        Code::Mov_r32_imm32 => Some((dst, Some(Value::Constant(i64::from(i.immediate32()))))),
        Code::Mov_r64_imm64 => Some((dst, Some(Value::Constant(i.immediate64() as i64)))),
        Code::Mov_rm64_imm32 => Some((dst, Some(Value::Constant(i.immediate32to64())))),
        Code::Xor_r32_rm32 | Code::Xor_rm32_r32 | Code::Xor_r64_rm64 | Code::Xor_rm64_r64
            if i.op1_kind() == OpKind::Register && i.op1_register() == i.op0_register() =>
        {
            Some((dst, Some(Value::Constant(0))))
        }
        // `or $-1, %r32`: all ones whatever was there (compilers' short form of mov $-1).
        Code::Or_rm32_imm8 if i.immediate8to32() == -1 => {
            Some((dst, Some(Value::Constant(0xffff_ffff))))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A file whose .text spans these addresses, with functions at 0x2000 (the one decoded)
    /// and 0x3000, 0x3010 (the callees), without exported functions.
    fn layout() -> Layout {
        Layout {
            text: 0x1000..0x40_0000,
            functions: Functions::from_ranges(vec![0x2000..0x2100, 0x3000..0x3010, 0x3010..0x3040]),
            exported: vec![],
        }
    }

    fn address(r: Result<Derived, String>) -> Result<u64, String> {
        r.map(|d| d.address)
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
        assert_eq!(address(audit_worker(f, &layout())), Ok(0x3000));
        // Bounds from .eh_frame.
        assert_eq!(audit_worker(f, &layout()).unwrap().bounds, 0x3000..0x3010);
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
        assert!(e.contains("RSI does not hold Argument(0)"), "{e}");
    }

    /// A 32-bit move of a pointer argument keeps its low half only: not the event.
    #[test]
    fn a_truncated_pointer_is_not_the_argument() {
        const MOV_ESI_EDI: [u8; 2] = [0x89, 0xfe]; // mov %edi,%esi
        let bytes = function(&[&MOV_RDX_RSI, &MOV_ESI_EDI, CALL, &RET], 0x2000, 0x3000);
        let f = Function {
            address: 0x2000,
            bytes: &bytes,
        };
        let e = audit_worker(f, &layout()).unwrap_err();
        assert!(e.contains("RSI does not hold Argument(0)"), "{e}");
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
            (0x3004, "starts no function"),
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

    /// PyGC_Collect's shape: the generation, 2, as a constant (a 32-bit move); then the
    /// wrapper's: tstate and generation passed on (moved through callee-saved registers, a
    /// call between), the other call given a string in rsi.
    #[test]
    fn the_gc_shapes_give_their_callees() {
        const MOV_ESI_2: [u8; 5] = [0xbe, 0x02, 0x00, 0x00, 0x00]; // mov $2,%esi
        let bytes = function(&[&MOV_ESI_2, CALL, &RET], 0x2000, 0x3010);
        let f = Function {
            address: 0x2000,
            bytes: &bytes,
        };
        assert_eq!(address(gc_with_callback(f, &layout())), Ok(0x3010));
        let bytes = function(&[&XOR_ESI, CALL, &RET], 0x2000, 0x3010);
        let f = Function {
            address: 0x2000,
            bytes: &bytes,
        };
        assert!(gc_with_callback(f, &layout()).is_err(), "generation 0");

        const MOV_R12_RDI: [u8; 3] = [0x49, 0x89, 0xfc]; // mov %rdi,%r12
        const MOV_EBX_ESI: [u8; 2] = [0x89, 0xf3]; // mov %esi,%ebx
        const LEA_RSI: [u8; 7] = [0x48, 0x8d, 0x35, 0, 0, 0, 0]; // lea 0(%rip),%rsi
        const MOV_ESI_EBX: [u8; 2] = [0x89, 0xde]; // mov %ebx,%esi
        const MOV_RDI_R12: [u8; 3] = [0x4c, 0x89, 0xe7]; // mov %r12,%rdi
        let mut bytes = [&MOV_R12_RDI[..], &MOV_EBX_ESI, &LEA_RSI].concat();
        bytes.extend(call(0x2000 + bytes.len() as u64, 0x3000));
        // The call clobbered rdi and rsi: what gets there now comes from r12 and ebx.
        bytes.extend([&MOV_ESI_EBX[..], &MOV_RDI_R12].concat());
        bytes.extend(call(0x2000 + bytes.len() as u64, 0x3010));
        bytes.extend(RET);
        let f = Function {
            address: 0x2000,
            bytes: &bytes,
        };
        // The first call (rsi a string) does not match; the second does.
        assert_eq!(address(gc_main(f, &layout())), Ok(0x3010), "{bytes:x?}");
    }

    /// PGO's _Py_RunGC: `or $-1,%esi` then a jump to the collector, taken as a tail call
    /// where no call matches; a jump to the function's cold part while a call matches is not.
    #[test]
    fn tail_calls_count_where_no_call_matches() {
        const OR_ESI_MINUS_1: [u8; 3] = [0x83, 0xce, 0xff]; // or $-1,%esi
        let jmp = |at: u64, target: u64| {
            let rel = target.wrapping_sub(at + 5) as i64 as i32;
            let mut v = vec![0xe9];
            v.extend_from_slice(&rel.to_le_bytes());
            v
        };
        let mut bytes = OR_ESI_MINUS_1.to_vec();
        bytes.extend(jmp(0x2003, 0x3010));
        let f = Function {
            address: 0x2000,
            bytes: &bytes,
        };
        assert_eq!(address(gc_auto(f, &layout())), Ok(0x3010));

        // tstate passed on by a call, and by a jump to cold code (0x3000) too: the call.
        let mut bytes = [0x48, 0x89, 0xfb].to_vec(); // mov %rdi,%rbx
        bytes.extend([0x48, 0x89, 0xdf]); // mov %rbx,%rdi
        bytes.extend(call(0x2006, 0x3010));
        bytes.extend([0x48, 0x89, 0xdf]); // mov %rbx,%rdi
        bytes.extend(jmp(0x200e, 0x3000));
        let f = Function {
            address: 0x2000,
            bytes: &bytes,
        };
        assert_eq!(address(tstate_passed_on(f, &layout())), Ok(0x3010));
    }

    #[test]
    fn two_local_calls_and_loops_are_refused() {
        // Generation 2 given to two functions: which is the wrapper is not known.
        const MOV_ESI_2: [u8; 5] = [0xbe, 0x02, 0x00, 0x00, 0x00];
        let mut bytes = function(&[&MOV_ESI_2, CALL, &MOV_ESI_2], 0x2000, 0x3000);
        bytes.extend(call(0x2000 + bytes.len() as u64, 0x3010));
        bytes.extend_from_slice(&RET);
        let f = Function {
            address: 0x2000,
            bytes: &bytes,
        };
        let e = gc_with_callback(f, &layout()).unwrap_err();
        assert!(e.contains("2 local calls match"), "{e}");
        // The second call of the audit shape finds rsi and rdx clobbered by the first: one.
        let mut bytes = function(&[&MOV_RDX_RSI, &MOV_RSI_RDI, CALL], 0x2000, 0x3000);
        bytes.extend(call(0x2000 + bytes.len() as u64, 0x3010));
        bytes.extend_from_slice(&RET);
        let f = Function {
            address: 0x2000,
            bytes: &bytes,
        };
        assert_eq!(address(audit_worker(f, &layout())), Ok(0x3000));

        // jmp back to the start: the call is in a loop.
        let bytes = function(
            &[&MOV_RDX_RSI, &MOV_RSI_RDI, CALL, &[0xeb, 0xf3]],
            0x2000,
            0x3000,
        );
        let f = Function {
            address: 0x2000,
            bytes: &bytes,
        };
        // Its second pass finds rsi and rdx clobbered by the call.
        let e = audit_worker(f, &layout()).unwrap_err();
        assert!(e.contains("does not hold"), "{e}");
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
            if let Ok(d) = audit_worker(f, &layout()) {
                prop_assert_eq!(layout().function_at(d.address), Ok(d.bounds));
            }
            if let Ok(d) = gc_main(f, &layout()) {
                prop_assert_eq!(layout().function_at(d.address), Ok(d.bounds));
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
            if let Ok(d) = audit_worker(f, &layout()) {
                prop_assert_eq!(layout().function_at(d.address), Ok(d.bounds));
            }
        }
    }
}
