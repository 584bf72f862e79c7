//! A small assembler for classic BPF seccomp programs: instructions with named jump targets,
//! resolved to offsets when the program is finished, and an interpreter for tests.

use std::collections::HashMap;
use std::io;

/// One BPF instruction, `struct sock_filter`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Instruction {
    code: u16,
    jt: u8,
    jf: u8,
    k: u32,
}

const LD_W_ABS: u16 = (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16;
const JA: u16 = (libc::BPF_JMP | libc::BPF_JA) as u16;
const JEQ_K: u16 = (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16;
const JGE_K: u16 = (libc::BPF_JMP | libc::BPF_JGE | libc::BPF_K) as u16;
const JSET_K: u16 = (libc::BPF_JMP | libc::BPF_JSET | libc::BPF_K) as u16;
const RET_K: u16 = (libc::BPF_RET | libc::BPF_K) as u16;

/// The target of a jump: the next instruction or a label.
#[derive(Debug, Clone, Copy)]
pub enum To {
    Next,
    Label(&'static str),
}

/// A comparison of the accumulator with a constant.
#[derive(Debug, Clone, Copy)]
pub enum Test {
    Equal,
    AtLeast,
    AnyBitSet,
}

#[derive(Debug)]
enum Op {
    Plain(Instruction),
    Jump { code: u16, k: u32, jt: To, jf: To },
    Always(&'static str),
    Label(&'static str),
}

/// A program under construction.
#[derive(Debug, Default)]
pub struct Assembler {
    ops: Vec<Op>,
}

impl Assembler {
    /// Loads the 32-bit word at `offset` of `struct seccomp_data`.
    pub fn load(&mut self, offset: u32) -> &mut Self {
        self.ops.push(Op::Plain(Instruction {
            code: LD_W_ABS,
            jt: 0,
            jf: 0,
            k: offset,
        }));
        self
    }

    /// Ends the program with `action`.
    pub fn ret(&mut self, action: u32) -> &mut Self {
        self.ops.push(Op::Plain(Instruction {
            code: RET_K,
            jt: 0,
            jf: 0,
            k: action,
        }));
        self
    }

    /// Jumps to `jt` if `test` holds for the accumulator and `k`, else to `jf`.
    pub fn jump(&mut self, test: Test, k: u32, jt: To, jf: To) -> &mut Self {
        let code = match test {
            Test::Equal => JEQ_K,
            Test::AtLeast => JGE_K,
            Test::AnyBitSet => JSET_K,
        };
        self.ops.push(Op::Jump { code, k, jt, jf });
        self
    }

    pub fn goto(&mut self, label: &'static str) -> &mut Self {
        self.ops.push(Op::Always(label));
        self
    }

    pub fn label(&mut self, label: &'static str) -> &mut Self {
        self.ops.push(Op::Label(label));
        self
    }

    /// Resolves the labels. Panics on an unknown label or a conditional jump of more than
    /// 255 instructions, both mistakes in the program's source.
    pub fn finish(&self) -> Program {
        let mut positions = HashMap::new();
        let mut position = 0;
        for op in &self.ops {
            match op {
                Op::Label(name) => {
                    positions.insert(*name, position);
                }
                _ => position += 1,
            }
        }
        let offset = |from: usize, to: To| -> usize {
            match to {
                To::Next => 0,
                To::Label(name) => {
                    let target = *positions
                        .get(name)
                        .unwrap_or_else(|| panic!("no label {name}"));
                    assert!(target > from, "label {name} is not after its jump");
                    target - from - 1
                }
            }
        };
        let short = |value: usize| u8::try_from(value).expect("a conditional jump over 255");
        let mut program = Vec::new();
        for op in &self.ops {
            let here = program.len();
            let instruction = match *op {
                Op::Label(_) => continue,
                Op::Plain(instruction) => instruction,
                Op::Jump { code, k, jt, jf } => Instruction {
                    code,
                    jt: short(offset(here, jt)),
                    jf: short(offset(here, jf)),
                    k,
                },
                Op::Always(label) => Instruction {
                    code: JA,
                    jt: 0,
                    jf: 0,
                    k: offset(here, To::Label(label)) as u32,
                },
            };
            program.push(instruction);
        }
        Program(program)
    }
}

/// A finished program, ready to install.
#[derive(Debug, Clone)]
pub struct Program(Vec<Instruction>);

impl Program {
    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Installs the program as a seccomp filter of the calling thread. no_new_privs must
    /// already be set.
    pub fn install(&self) -> io::Result<()> {
        #[repr(C)]
        struct SockFprog {
            len: u16,
            filter: *const Instruction,
        }
        const SECCOMP_SET_MODE_FILTER: libc::c_uint = 1;
        let program = SockFprog {
            len: u16::try_from(self.0.len()).expect("a program of at most 4096 instructions"),
            filter: self.0.as_ptr(),
        };
        // SAFETY: `program` points to this program's instructions, which outlive the call;
        // the kernel copies them.
        let result = unsafe {
            libc::syscall(
                libc::SYS_seccomp,
                SECCOMP_SET_MODE_FILTER,
                0,
                &program as *const SockFprog,
            )
        };
        if result == -1 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Runs the program on one system call as the kernel would, for the instructions the
    /// assembler emits; returns the action.
    #[cfg(test)]
    pub fn evaluate(&self, arch: u32, nr: u32, args: [u64; 6]) -> u32 {
        let mut data = [0u8; 64];
        data[0..4].copy_from_slice(&nr.to_le_bytes());
        data[4..8].copy_from_slice(&arch.to_le_bytes());
        for (index, arg) in args.iter().enumerate() {
            data[16 + 8 * index..24 + 8 * index].copy_from_slice(&arg.to_le_bytes());
        }
        let mut accumulator = 0u32;
        let mut pc = 0usize;
        loop {
            let instruction = self.0[pc];
            pc += 1;
            let taken = match instruction.code {
                LD_W_ABS => {
                    let offset = instruction.k as usize;
                    let word = data[offset..offset + 4].try_into().expect("4 bytes");
                    accumulator = u32::from_le_bytes(word);
                    continue;
                }
                JA => {
                    pc += instruction.k as usize;
                    continue;
                }
                RET_K => return instruction.k,
                JEQ_K => accumulator == instruction.k,
                JGE_K => accumulator >= instruction.k,
                JSET_K => accumulator & instruction.k != 0,
                code => panic!("unexpected instruction code {code:#x}"),
            };
            pc += usize::from(if taken {
                instruction.jt
            } else {
                instruction.jf
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_resolve_to_forward_offsets() {
        let mut assembler = Assembler::default();
        assembler
            .load(0)
            .jump(Test::Equal, 7, To::Label("seven"), To::Next)
            .ret(1)
            .label("seven")
            .ret(2);
        let program = assembler.finish();
        assert_eq!(program.len(), 4);
        assert_eq!(program.evaluate(0, 7, [0; 6]), 2);
        assert_eq!(program.evaluate(0, 8, [0; 6]), 1);
    }

    #[test]
    fn goto_skips_to_label() {
        let mut assembler = Assembler::default();
        assembler.goto("end").ret(1).ret(2).label("end").ret(3);
        assert_eq!(assembler.finish().evaluate(0, 0, [0; 6]), 3);
    }
}
