//! Struct member offsets of the running kernel, from its BTF (`/sys/kernel/btf/vmlinux`),
//! for the one walk the kernel programs make by hand: from a data syscall's fd to its
//! `struct sock` (see `KernelOffsets`). Only what that needs is read: the type section's
//! structs and unions with their members; every other kind is skipped by its size.
use std::collections::HashMap;

use tracer_common::KernelOffsets;

const BTF_MAGIC: u16 = 0xeb9f;

/// BTF kinds (`include/uapi/linux/btf.h`).
mod kind {
    pub const INT: u32 = 1;
    pub const ARRAY: u32 = 3;
    pub const STRUCT: u32 = 4;
    pub const UNION: u32 = 5;
    pub const ENUM: u32 = 6;
    pub const TYPEDEF: u32 = 8;
    pub const VOLATILE: u32 = 9;
    pub const CONST: u32 = 10;
    pub const FUNC_PROTO: u32 = 13;
    pub const VAR: u32 = 14;
    pub const DATASEC: u32 = 15;
    pub const DECL_TAG: u32 = 17;
    pub const ENUM64: u32 = 19;
}

#[derive(Clone, Debug)]
struct Member {
    name: String,
    type_id: u32,
    bit_offset: u32,
}

#[derive(Clone, Debug)]
enum Type {
    Composite {
        members: Vec<Member>,
    },
    /// Typedef, const, volatile: the type they qualify.
    Alias(u32),
    Other,
}

/// The parsed types, by id (id 0 is `void`).
pub struct Btf {
    types: Vec<Type>,
    by_name: HashMap<String, u32>,
}

fn u16_at(data: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(data.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(data: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(data.get(at..at + 4)?.try_into().ok()?))
}

impl Btf {
    pub fn from_sys_fs() -> Option<Self> {
        Self::parse(&std::fs::read("/sys/kernel/btf/vmlinux").ok()?)
    }

    /// None for anything that is not little-endian BTF as the kernel writes it.
    pub fn parse(data: &[u8]) -> Option<Self> {
        if u16_at(data, 0)? != BTF_MAGIC {
            return None;
        }
        let header_len = u32_at(data, 4)? as usize;
        let (type_off, type_len) = (u32_at(data, 8)? as usize, u32_at(data, 12)? as usize);
        let str_off = u32_at(data, 16)? as usize;
        let types_at = header_len.checked_add(type_off)?;
        let strings = data.get(header_len.checked_add(str_off)?..)?;
        let name = |offset: u32| -> String {
            let text = strings.get(offset as usize..).unwrap_or_default();
            let end = text.iter().position(|b| *b == 0).unwrap_or(text.len());
            String::from_utf8_lossy(&text[..end]).into_owned()
        };
        let section = data.get(types_at..types_at.checked_add(type_len)?)?;
        let mut types = vec![Type::Other];
        let mut by_name = HashMap::new();
        let mut at = 0;
        while at + 12 <= section.len() {
            let (name_off, info, size_or_type) = (
                u32_at(section, at)?,
                u32_at(section, at + 4)?,
                u32_at(section, at + 8)?,
            );
            at += 12;
            let (kind, vlen) = ((info >> 24) & 0x1f, (info & 0xffff) as usize);
            let bitfields = info >> 31 == 1;
            let parsed = match kind {
                kind::STRUCT | kind::UNION => {
                    let mut members = Vec::with_capacity(vlen);
                    for m in 0..vlen {
                        let base = at + 12 * m;
                        let offset = u32_at(section, base + 8)?;
                        members.push(Member {
                            name: name(u32_at(section, base)?),
                            type_id: u32_at(section, base + 4)?,
                            // With bitfields, the high byte is the field's width.
                            bit_offset: if bitfields {
                                offset & 0xff_ffff
                            } else {
                                offset
                            },
                        });
                    }
                    at += 12 * vlen;
                    let name = name(name_off);
                    if !name.is_empty() {
                        by_name.entry(name).or_insert(types.len() as u32);
                    }
                    Type::Composite { members }
                }
                kind::TYPEDEF | kind::VOLATILE | kind::CONST => Type::Alias(size_or_type),
                _ => {
                    at += match kind {
                        kind::INT | kind::VAR | kind::DECL_TAG => 4,
                        kind::ARRAY => 12,
                        kind::ENUM | kind::FUNC_PROTO => 8 * vlen,
                        kind::DATASEC | kind::ENUM64 => 12 * vlen,
                        _ => 0,
                    };
                    Type::Other
                }
            };
            types.push(parsed);
        }
        Some(Self { types, by_name })
    }

    /// The byte offset of `member` in struct `name`, looking into anonymous structs and
    /// unions; None if absent or not byte-aligned.
    pub fn offset(&self, name: &str, member: &str) -> Option<u32> {
        let id = *self.by_name.get(name)?;
        self.member_bits(id, member, 0)
            .filter(|bits| bits % 8 == 0)
            .map(|bits| bits / 8)
    }

    fn member_bits(&self, id: u32, member: &str, depth: u32) -> Option<u32> {
        if depth > 8 {
            return None;
        }
        let Type::Composite { members, .. } = self.resolve(id)? else {
            return None;
        };
        members.iter().find_map(|m| {
            if m.name == member {
                Some(m.bit_offset)
            } else if m.name.is_empty() {
                self.member_bits(m.type_id, member, depth + 1)
                    .map(|bits| m.bit_offset + bits)
            } else {
                None
            }
        })
    }

    fn resolve(&self, mut id: u32) -> Option<&Type> {
        for _ in 0..16 {
            match self.types.get(id as usize)? {
                Type::Alias(target) => id = *target,
                other => return Some(other),
            }
        }
        None
    }

    /// Whether a struct of this name exists (for messages).
    #[cfg(test)]
    fn has(&self, name: &str) -> bool {
        let id = self.by_name.get(name);
        matches!(
            id.and_then(|id| self.resolve(*id)),
            Some(Type::Composite { .. })
        )
    }
}

/// The offsets of the fd → `struct sock` walk, or None if the kernel's BTF lacks any.
pub fn kernel_offsets(btf: &Btf) -> Option<KernelOffsets> {
    Some(KernelOffsets {
        task_files: btf.offset("task_struct", "files")?,
        files_fdt: btf.offset("files_struct", "fdt")?,
        fdtable_max_fds: btf.offset("fdtable", "max_fds")?,
        fdtable_fd: btf.offset("fdtable", "fd")?,
        file_private_data: btf.offset("file", "private_data")?,
        socket_file: btf.offset("socket", "file")?,
        socket_sk: btf.offset("socket", "sk")?,
        sock_family: btf.offset("sock_common", "skc_family")?,
        sock_protocol: btf.offset("sock", "sk_protocol")?,
        _pad: 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The running kernel's BTF has every member of the walk, each inside its struct.
    #[test]
    fn the_running_kernels_btf_gives_every_offset_of_the_walk() {
        let btf = Btf::from_sys_fs().expect(
            "/sys/kernel/btf/vmlinux missing or unreadable: tracer needs a kernel with BTF",
        );
        for name in [
            "task_struct",
            "files_struct",
            "fdtable",
            "file",
            "socket",
            "sock",
        ] {
            assert!(btf.has(name), "struct {name} not found");
        }
        let offsets = kernel_offsets(&btf).expect("every member found");
        // `struct sock` begins with its `struct sock_common`; `struct socket` has its
        // state and type before the file and sock pointers; `fdtable` starts with max_fds.
        assert_eq!(btf.offset("sock", "__sk_common"), Some(0));
        assert_eq!(offsets.fdtable_max_fds, 0);
        assert!(offsets.socket_file > 0 && offsets.socket_sk > offsets.socket_file);
        assert!(offsets.sock_protocol > offsets.sock_family);
        assert!(offsets.task_files > 0 && offsets.file_private_data > 0);
        assert_eq!(btf.offset("socket", "no_such_member"), None);
        assert_eq!(btf.offset("no_such_struct", "sk"), None);
    }

    #[test]
    fn anything_but_btf_is_refused() {
        assert!(Btf::parse(b"").is_none());
        assert!(Btf::parse(&[0u8; 64]).is_none());
        let mut header = vec![0x9f, 0xeb, 1, 0, 24, 0, 0, 0];
        header.extend([0u8; 16]); // type and string sections: empty, then cut short
        header[12] = 200;
        assert!(Btf::parse(&header).is_none(), "a type section past the end");
    }
}
