//! Executable file mappings of a process, from `/proc/<pid>/maps`.
use std::{collections::HashSet, path::PathBuf};

/// A file, as the kernel names it: device (major, minor) and inode.
pub type FileKey = (u32, u32, u64);

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mapping {
    pub file: FileKey,
    /// Path inside the process's mount namespace.
    pub path: PathBuf,
}

/// The distinct executable files a process has mapped; empty if it is gone.
pub fn executable_mappings(pid: u32) -> Vec<Mapping> {
    std::fs::read_to_string(format!("/proc/{pid}/maps"))
        .map(|text| parse(&text))
        .unwrap_or_default()
}

/// Parses maps lines: `start-end perms offset major:minor inode path`.
pub fn parse(text: &str) -> Vec<Mapping> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for line in text.lines() {
        let mut fields = line.split_ascii_whitespace();
        let (Some(_), Some(perms), Some(_), Some(dev), Some(inode)) = (
            fields.next(),
            fields.next(),
            fields.next(),
            fields.next(),
            fields.next(),
        ) else {
            continue;
        };
        let path = fields.collect::<Vec<_>>().join(" ");
        if !perms.contains('x') || !path.starts_with('/') || path.ends_with(" (deleted)") {
            continue;
        }
        let Some((major, minor)) = dev.split_once(':') else {
            continue;
        };
        let (Ok(major), Ok(minor), Ok(inode)) = (
            u32::from_str_radix(major, 16),
            u32::from_str_radix(minor, 16),
            inode.parse::<u64>(),
        ) else {
            continue;
        };
        let file = (major, minor, inode);
        if inode != 0 && seen.insert(file) {
            out.push(Mapping {
                file,
                path: PathBuf::from(path),
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_each_executable_file_once() {
        let text = "\
55d0c0000000-55d0c0001000 r--p 00000000 fd:01 1234 /usr/bin/python3.11
55d0c0001000-55d0c0002000 r-xp 00001000 fd:01 1234 /usr/bin/python3.11
7f0000000000-7f0000001000 r-xp 00020000 fd:01 99 /usr/lib/x86_64-linux-gnu/libssl.so.3
7f0000001000-7f0000002000 r-xp 00021000 fd:01 99 /usr/lib/x86_64-linux-gnu/libssl.so.3
7f0000003000-7f0000004000 r-xp 00000000 00:00 0 [vdso]
7f0000005000-7f0000006000 r-xp 00000000 fd:01 77 /tmp/old lib.so (deleted)
7f0000007000-7f0000008000 r-xp 00000000 103:02 5 /opt/my app/libx.so
";
        let found = parse(text);
        assert_eq!(
            found,
            vec![
                Mapping {
                    file: (0xfd, 1, 1234),
                    path: "/usr/bin/python3.11".into()
                },
                Mapping {
                    file: (0xfd, 1, 99),
                    path: "/usr/lib/x86_64-linux-gnu/libssl.so.3".into()
                },
                Mapping {
                    file: (0x103, 2, 5),
                    path: "/opt/my app/libx.so".into()
                },
            ]
        );
    }
}
