//! Where a TLS function's uprobes cost least.
//!
//! A uprobe replaces one instruction with a trap; the kernel then either emulates that
//! instruction (on x86-64: `push reg`, near `call`/`jmp`/`jcc`, `nop`) or copies it out of
//! line and single-steps it, a second trap. On these VMs (Linux 6.18, Python's `ssl` over
//! memory BIOs, tracefs probes, same run) an entry + return probe pair on libssl 3's
//! `SSL_read_ex`, whose first instruction is `sub $8,%rsp`, cost ≈ 11.8 µs per call; on the
//! function it calls, whose first instruction is `push %r13`, ≈ 1.9 µs.
//!
//! A return probe has to sit at a function's first instruction (it swaps the return
//! address), so that instruction decides its cost. OpenSSL's `SSL_read_ex(s, buf, num, &n)`
//! and `SSL_write_ex` hand their arguments unchanged to `ssl_read_internal` /
//! `ssl_write_internal`, which report success the same way (1, the count stored at `&n`);
//! `SSL_read` and `SSL_write` call the same functions with a count on their stack. Where
//! the machine code shows exactly that — the `_ex` function reaches a direct call before
//! it writes any register but the stack pointer, the callee starts with an instruction the
//! kernel emulates — the callee is hooked with the `_ex` convention instead, and the plain
//! function's hook is dropped when its body calls the same callee (its calls are seen
//! there). Anything else keeps the hooks on the exported functions.
use iced_x86::{Decoder, DecoderOptions, Instruction, Mnemonic, OpKind, Register};
use object::{Object, ObjectSegment};

use super::library::{Function, Program};

/// Bytes decoded when looking for a wrapper's call: a prologue is a few instructions.
const PROLOGUE: u64 = 32;

/// A mapped ELF file's code, by virtual address.
pub struct Image<'a> {
    bytes: &'a [u8],
    /// `(virtual address, file offset, size in the file)` of each loaded segment.
    segments: Vec<(u64, u64, u64)>,
}

impl<'a> Image<'a> {
    pub fn new(elf: &object::File<'a, &'a [u8]>, bytes: &'a [u8]) -> Self {
        let segments = elf
            .segments()
            .map(|segment| {
                let (file_start, file_size) = segment.file_range();
                (segment.address(), file_start, file_size)
            })
            .collect();
        Self { bytes, segments }
    }

    /// The segment holding a virtual address.
    fn segment(&self, address: u64) -> Option<(u64, u64, u64)> {
        self.segments
            .iter()
            .copied()
            .find(|(start, _, size)| address >= *start && address < start + size)
    }

    /// The file offset of a virtual address, if a segment holds it.
    pub fn offset(&self, address: u64) -> Option<u64> {
        let (start, file_start, _) = self.segment(address)?;
        Some(address - start + file_start)
    }

    /// Up to `len` bytes of code from `address`, cut at the end of its segment.
    fn code(&self, address: u64, len: u64) -> Option<&'a [u8]> {
        let (start, file_start, size) = self.segment(address)?;
        let from = address - start;
        let to = (from + len).min(size);
        self.bytes
            .get((file_start + from) as usize..(file_start + to) as usize)
    }

    /// The instructions from `address`, over at most `len` bytes; stops at an undecodable one.
    fn instructions(&self, address: u64, len: u64) -> impl Iterator<Item = Instruction> + 'a {
        let code = self.code(address, len).unwrap_or_default();
        Decoder::with_ip(64, code, address, DecoderOptions::NONE)
            .into_iter()
            .take_while(|i| !i.is_invalid())
    }
}

/// Moves the `_ex` hooks of an OpenSSL build to the functions they wrap where the probes
/// cost less there, and drops the plain functions' hooks that the move covers.
pub fn cheapen(image: &Image, functions: &mut Vec<Function>) {
    for (ex, plain) in [
        (Program::ReadEx, Program::Read),
        (Program::WriteEx, Program::Write),
    ] {
        let Some(wrapper) = functions.iter().position(|f| f.program == ex) else {
            continue;
        };
        let Some(callee) = wrapped_callee(image, functions[wrapper].address) else {
            continue;
        };
        let Some(offset) = image.offset(callee) else {
            continue;
        };
        if !kernel_emulates_first(image, callee) {
            continue;
        }
        let covered = functions
            .iter()
            .position(|f| f.program == plain && calls(image, f.address, f.size, callee));
        let also = covered.map(|covered| functions[covered].symbol);
        let wrapper = &mut functions[wrapper];
        wrapper.offset = offset;
        wrapper.at_callee = true;
        wrapper.also = also;
        if let Some(covered) = covered {
            functions.remove(covered);
        }
    }
}

/// The function a thin wrapper at `address` hands its register arguments to: the target of
/// its first direct call or jump, when nothing before it writes a register other than the
/// stack pointer (`endbr64`, `nop`, `push reg`, `sub $imm,%rsp`).
fn wrapped_callee(image: &Image, address: u64) -> Option<u64> {
    for instruction in image.instructions(address, PROLOGUE) {
        match instruction.mnemonic() {
            Mnemonic::Endbr64 | Mnemonic::Nop => {}
            Mnemonic::Push if instruction.op0_kind() == OpKind::Register => {}
            Mnemonic::Sub
                if instruction.op0_register() == Register::RSP
                    && is_immediate(instruction.op1_kind()) => {}
            Mnemonic::Call | Mnemonic::Jmp if instruction.op0_kind() == OpKind::NearBranch64 => {
                return Some(instruction.near_branch_target());
            }
            _ => return None,
        }
    }
    None
}

/// Whether the kernel emulates the instruction at `address` rather than single-stepping it
/// (x86-64 uprobes: near branches, `nop`, and `push reg` since Linux 6.10; on older
/// kernels a `push` is single-stepped, which costs what the wrapper's probe did).
fn kernel_emulates_first(image: &Image, address: u64) -> bool {
    let Some(first) = image.instructions(address, 16).next() else {
        return false;
    };
    match first.mnemonic() {
        Mnemonic::Push => first.op0_kind() == OpKind::Register,
        Mnemonic::Nop => true,
        Mnemonic::Call | Mnemonic::Jmp => first.op0_kind() == OpKind::NearBranch64,
        _ => false,
    }
}

/// Whether the function at `address` (`size` bytes) calls or tail-calls `target` directly.
fn calls(image: &Image, address: u64, size: u64, target: u64) -> bool {
    image.instructions(address, size).any(|i| {
        matches!(i.mnemonic(), Mnemonic::Call | Mnemonic::Jmp)
            && i.op0_kind() == OpKind::NearBranch64
            && i.near_branch_target() == target
    })
}

fn is_immediate(kind: OpKind) -> bool {
    matches!(
        kind,
        OpKind::Immediate8 | OpKind::Immediate8to64 | OpKind::Immediate32to64 | OpKind::Immediate32
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An image of one segment at address 0x1000 holding `code` at file offset 0.
    fn image(code: &[u8]) -> Image<'_> {
        Image {
            bytes: code,
            segments: vec![(0x1000, 0, code.len() as u64)],
        }
    }

    fn function(symbol: &'static str, program: Program, address: u64, size: u64) -> Function {
        Function {
            symbol,
            program,
            offset: address - 0x1000,
            address,
            size,
            at_callee: false,
            also: None,
        }
    }

    /// libssl 3 as Debian builds it: `SSL_read_ex` = `sub $8,%rsp; call internal; …`,
    /// `SSL_read` calls the same internal function after a few instructions of its own,
    /// and the internal function starts with `push %r13`.
    fn libssl_like(internal_first: &[u8]) -> Vec<u8> {
        let mut code = vec![0xcc; 0x100];
        // 0x1000 SSL_read_ex: sub $0x8,%rsp; call 0x1080; add $0x8,%rsp; ret
        let ex = [0x48, 0x83, 0xec, 0x08, 0xe8, 0x77, 0x00, 0x00, 0x00];
        code[..ex.len()].copy_from_slice(&ex);
        code[9..14].copy_from_slice(&[0x48, 0x83, 0xc4, 0x08, 0xc3]);
        // 0x1040 SSL_read: sub $0x18,%rsp; mov %rsp,%rcx; movslq %edx,%rdx; call 0x1080; …
        let plain = [
            0x48, 0x83, 0xec, 0x18, 0x48, 0x89, 0xe1, 0x48, 0x63, 0xd2, 0xe8, 0x31, 0x00, 0x00,
            0x00, 0x48, 0x83, 0xc4, 0x18, 0xc3,
        ];
        code[0x40..0x40 + plain.len()].copy_from_slice(&plain);
        // 0x1080 the internal function
        code[0x80..0x80 + internal_first.len()].copy_from_slice(internal_first);
        code
    }

    fn libssl_functions() -> Vec<Function> {
        vec![
            function("SSL_read", Program::Read, 0x1040, 20),
            function("SSL_read_ex", Program::ReadEx, 0x1000, 14),
        ]
    }

    /// The hooks `cheapen` leaves for the two functions of `libssl_like` code.
    fn placed(code: &[u8]) -> Vec<Function> {
        let mut functions = libssl_functions();
        cheapen(&image(code), &mut functions);
        functions
    }

    #[test]
    fn an_ex_wrapper_is_hooked_at_its_callee_which_also_covers_the_plain_function() {
        let code = libssl_like(&[0x41, 0x55, 0x41, 0x54, 0xc3]); // push %r13; push %r12; ret
        let functions = placed(&code);
        assert_eq!(functions.len(), 1, "{functions:?}");
        let read = &functions[0];
        assert_eq!((read.symbol, read.offset), ("SSL_read_ex", 0x80));
        assert!(read.at_callee);
        assert_eq!(read.also, Some("SSL_read"));
    }

    #[test]
    fn a_callee_the_kernel_would_single_step_keeps_the_hooks_where_they_were() {
        let code = libssl_like(&[0x48, 0x83, 0xec, 0x38, 0xc3]); // sub $0x38,%rsp; ret
        assert_eq!(placed(&code), libssl_functions());
    }

    #[test]
    fn a_wrapper_that_changes_an_argument_before_its_call_keeps_its_hook() {
        let mut code = libssl_like(&[0x41, 0x55, 0xc3]);
        // SSL_read_ex: movslq %edx,%rdx; call 0x1080 — the callee sees another count.
        code[..8].copy_from_slice(&[0x48, 0x63, 0xd2, 0xe8, 0x78, 0x00, 0x00, 0x00]);
        assert_eq!(placed(&code), libssl_functions());
    }

    #[test]
    fn a_plain_function_that_never_calls_the_callee_keeps_its_own_hook() {
        let mut code = libssl_like(&[0x41, 0x55, 0xc3]);
        code[0x40..0x60].fill(0x90); // SSL_read: nops, no call
        let functions = placed(&code);
        assert_eq!(functions.len(), 2);
        let read_ex = functions
            .iter()
            .find(|f| f.symbol == "SSL_read_ex")
            .unwrap();
        assert!(read_ex.at_callee && read_ex.also.is_none());
        let read = functions.iter().find(|f| f.symbol == "SSL_read").unwrap();
        assert_eq!(read.offset, 0x40);
    }
}
