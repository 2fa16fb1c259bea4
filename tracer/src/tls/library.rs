//! Which files hold TLS functions worth hooking, and where those functions are: symbol
//! addresses from the ELF symbol tables (`object`), turned into file offsets.
use std::{fs::File, path::Path};

use object::{Object, ObjectSymbol};

use super::placement;

/// The kind of library, which decides the functions hooked and their calling convention.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Flavour {
    /// OpenSSL 1.1/3.x `libssl`, or an executable that links it statically (Node).
    OpenSsl,
    /// .NET's `libSystem.Security.Cryptography.Native.OpenSsl.so` shim.
    DotNet,
    /// Mono's BoringSSL wrapper, `libmono-btls-shared.so`.
    MonoBtls,
    /// libc (or libdl): `dlopen` tells us a library may have been loaded late.
    Loader,
}

impl Flavour {
    pub fn name(self) -> &'static str {
        match self {
            Flavour::OpenSsl => "openssl",
            Flavour::DotNet => "dotnet",
            Flavour::MonoBtls => "mono-btls",
            Flavour::Loader => "dlopen",
        }
    }

    /// `(symbol, entry program)`; read/write functions also get `tls_return`.
    pub fn hooks(self) -> &'static [(&'static str, Program)] {
        match self {
            Flavour::OpenSsl => &[
                ("SSL_read", Program::Read),
                ("SSL_read_ex", Program::ReadEx),
                ("SSL_write", Program::Write),
                ("SSL_write_ex", Program::WriteEx),
                ("SSL_shutdown", Program::Shutdown),
            ],
            Flavour::DotNet => &[
                ("CryptoNative_SslRead", Program::Read),
                ("CryptoNative_SslWrite", Program::Write),
            ],
            Flavour::MonoBtls => &[
                ("mono_btls_ssl_read", Program::Read),
                ("mono_btls_ssl_write", Program::Write),
            ],
            Flavour::Loader => &[("dlopen", Program::LibraryLoaded)],
        }
    }
}

/// The eBPF programs a hooked function can get.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Program {
    Read,
    ReadEx,
    Write,
    WriteEx,
    Shutdown,
    LibraryLoaded,
}

impl Program {
    /// Programs attached at the function, in this order: the return before the entry, so
    /// no call can be stashed at entry and then miss its return (a stale stash would make
    /// the thread's later plain syscalls look like a TLS library's).
    pub fn programs(self) -> &'static [&'static str] {
        match self {
            Program::Read => &["tls_return", "tls_read_enter"],
            Program::ReadEx => &["tls_return", "tls_read_ex_enter"],
            Program::Write => &["tls_return", "tls_write_enter"],
            Program::WriteEx => &["tls_return", "tls_write_ex_enter"],
            Program::Shutdown => &["tls_shutdown"],
            Program::LibraryLoaded => &["library_loaded"],
        }
    }
}

/// What a file's name says it may be (others may still export OpenSSL, see `resolve`).
pub fn flavour_by_name(path: &Path, extra: &[String]) -> Option<Flavour> {
    let name = path.file_name()?.to_str()?;
    if name.starts_with("libssl.so") || extra.iter().any(|e| e == name) {
        Some(Flavour::OpenSsl)
    } else if name.starts_with("libSystem.Security.Cryptography.Native.OpenSsl") {
        Some(Flavour::DotNet)
    } else if name.starts_with("libmono-btls-shared") {
        Some(Flavour::MonoBtls)
    } else if name.starts_with("libc.so") || name.starts_with("libdl.so") {
        Some(Flavour::Loader)
    } else {
        None
    }
}

/// A hookable function: its name, what to attach, and where in the file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Function {
    pub symbol: &'static str,
    pub program: Program,
    /// The file offset the probes attach at: the function's, or its callee's (`at_callee`).
    pub offset: u64,
    /// The function's virtual address and size, from the symbol table.
    pub address: u64,
    pub size: u64,
    /// Hooked at the function it wraps, where probes cost less (see `placement`).
    pub at_callee: bool,
    /// A function whose calls the callee's hook also sees, so it has none of its own.
    pub also: Option<&'static str>,
}

impl Function {
    /// How logs and `tracer capture` name the hook.
    pub fn describe(&self) -> String {
        match (self.at_callee, self.also) {
            (false, _) => self.symbol.to_owned(),
            (true, None) => format!("{} (at its callee, +{:#x})", self.symbol, self.offset),
            (true, Some(also)) => format!(
                "{} and {also} (at their callee, +{:#x})",
                self.symbol, self.offset
            ),
        }
    }
}

/// The functions of `flavour` that `path` defines, with file offsets; for `None`, the
/// OpenSSL functions if the file exports both `SSL_read` and `SSL_write` (statically
/// linked OpenSSL, as in `node`), else nothing. The file is mapped, not read: executables
/// like `node` are ~100 MB and only their symbol tables are touched, in one pass.
pub fn resolve(path: &Path, flavour: Option<Flavour>) -> Result<(Flavour, Vec<Function>), String> {
    let file = File::open(path).map_err(|e| format!("cannot open: {e}"))?;
    let contents = FileBytes::new(file).map_err(|e| format!("cannot read: {e}"))?;
    let elf = object::File::parse(contents.bytes()).map_err(|e| format!("not an ELF file: {e}"))?;
    // Unnamed files are looked at for a statically linked OpenSSL.
    let kind = flavour.unwrap_or(Flavour::OpenSsl);
    let hooks = kind.hooks();
    // `(address, size)` of each hooked function found.
    let mut addresses: Vec<Option<(u64, u64)>> = vec![None; hooks.len()];
    let find = |symbols: object::SymbolIterator<'_, '_, &[u8]>,
                addresses: &mut [Option<(u64, u64)>]| {
        for symbol in symbols.filter(|s| s.is_definition()) {
            let Ok(name) = symbol.name() else { continue };
            if let Some(i) = hooks.iter().position(|(wanted, _)| *wanted == name) {
                addresses[i].get_or_insert((symbol.address(), symbol.size()));
            }
        }
    };
    find(elf.dynamic_symbols(), &mut addresses);
    if flavour.is_some() && addresses.iter().any(Option::is_none) {
        find(elf.symbols(), &mut addresses); // unexported functions of a named library
    }
    let exported = |name: &str| {
        hooks
            .iter()
            .zip(&addresses)
            .any(|((symbol, _), address)| *symbol == name && address.is_some())
    };
    if flavour.is_none() && !(exported("SSL_read") && exported("SSL_write")) {
        return Ok((kind, Vec::new()));
    }
    let image = placement::Image::new(&elf, contents.bytes());
    let mut found = Vec::new();
    for (&(symbol, program), address) in hooks.iter().zip(addresses) {
        let Some((address, size)) = address else {
            continue;
        };
        if let Some(offset) = image.offset(address) {
            found.push(Function {
                symbol,
                program,
                offset,
                address,
                size,
                at_callee: false,
                also: None,
            });
        }
    }
    if kind == Flavour::OpenSsl {
        placement::cheapen(&image, &mut found);
    }
    Ok((kind, found))
}

/// Files up to this size are read rather than mapped.
const READ_LIMIT: u64 = 64 << 20;

/// A whole file's bytes as they are on disk. The kernel writes the breakpoints of uprobes
/// already registered on a file (another agent's, a debugger's) into every mapping of it
/// that may execute, a read-only private one too: placement would decode `int3` where
/// the code is, and keep the dearer hooks. Libraries are read; a larger file (a statically
/// linked Node.js) is mapped, where a breakpoint only keeps the hooks on the exported
/// functions.
enum FileBytes {
    Read(Vec<u8>),
    Mapped(Mapped),
}

impl FileBytes {
    fn new(mut file: File) -> std::io::Result<Self> {
        use std::io::Read as _;
        let len = file.metadata()?.len();
        if len > READ_LIMIT {
            return Mapped::new(&file).map(Self::Mapped);
        }
        let mut bytes = Vec::with_capacity(len as usize);
        file.read_to_end(&mut bytes)?;
        Ok(Self::Read(bytes))
    }

    fn bytes(&self) -> &[u8] {
        match self {
            Self::Read(bytes) => bytes,
            Self::Mapped(mapped) => mapped.bytes(),
        }
    }
}

/// A read-only private mapping of a whole file.
struct Mapped {
    ptr: *mut libc::c_void,
    len: usize,
}

impl Mapped {
    fn new(file: &File) -> std::io::Result<Self> {
        use std::os::fd::AsRawFd;
        let len = file.metadata()?.len() as usize;
        if len == 0 {
            return Err(std::io::Error::other("empty file"));
        }
        // SAFETY: a fresh read-only private mapping of an open file; unmapped on drop.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_PRIVATE,
                file.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Self { ptr, len })
    }

    fn bytes(&self) -> &[u8] {
        // SAFETY: the mapping is `len` readable bytes and lives as long as `self`. (A file
        // truncated while mapped would fault; TLS libraries in use are not truncated.)
        unsafe { std::slice::from_raw_parts(self.ptr.cast::<u8>(), self.len) }
    }
}

impl Drop for Mapped {
    fn drop(&mut self) {
        // SAFETY: unmapping our own mapping.
        unsafe { libc::munmap(self.ptr, self.len) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TRACEFS: &str = "/sys/kernel/tracing";

    #[test]
    fn names_decide_the_flavour() {
        let extra = vec!["my-static-openssl-app".to_string()];
        let cases = [
            ("/usr/lib/x86_64-linux-gnu/libssl.so.3", Some(Flavour::OpenSsl)),
            ("/usr/lib/libssl.so.1.1", Some(Flavour::OpenSsl)),
            ("/opt/bin/my-static-openssl-app", Some(Flavour::OpenSsl)),
            (
                "/usr/share/dotnet/shared/Microsoft.NETCore.App/8.0.0/libSystem.Security.Cryptography.Native.OpenSsl.so",
                Some(Flavour::DotNet),
            ),
            ("/usr/lib/libmono-btls-shared.so", Some(Flavour::MonoBtls)),
            ("/lib/x86_64-linux-gnu/libc.so.6", Some(Flavour::Loader)),
            ("/lib/x86_64-linux-gnu/libcrypto.so.3", None),
            ("/usr/bin/python3.11", None),
        ];
        for (path, flavour) in cases {
            assert_eq!(flavour_by_name(Path::new(path), &extra), flavour, "{path}");
        }
    }

    fn libssl() -> &'static Path {
        [
            "/usr/lib/x86_64-linux-gnu/libssl.so.3",
            "/lib/x86_64-linux-gnu/libssl.so.3",
        ]
        .into_iter()
        .map(Path::new)
        .find(|p| p.exists())
        .expect("libssl3 is installed by `cargo xtask setup` (Debian package libssl3)")
    }

    /// A tracefs uprobe, enabled while alive (its breakpoint is in every mapping of the
    /// file meanwhile).
    struct TracefsUprobe;

    impl TracefsUprobe {
        const NAME: &'static str = "tracer_placement_test/callee";

        fn enable(path: &Path, offset: u64) -> Self {
            Self::define(&format!("p:{} {}:{offset:#x}", Self::NAME, path.display()))
                .unwrap_or_else(|e| {
                    panic!("registering a uprobe in {TRACEFS}/uprobe_events (tracefs, root; `cargo xtask setup` mounts it): {e}")
                });
            std::fs::write(Self::enable_file(), "1").expect("enabling the tracefs uprobe");
            Self
        }

        /// Appends one line to `uprobe_events` (a definition, or `-:name` to remove one).
        fn define(line: &str) -> std::io::Result<()> {
            let mut events = std::fs::OpenOptions::new()
                .append(true)
                .open(format!("{TRACEFS}/uprobe_events"))?;
            std::io::Write::write_all(&mut events, format!("{line}\n").as_bytes())
        }

        fn enable_file() -> String {
            format!("{TRACEFS}/events/{}/enable", Self::NAME)
        }
    }

    impl Drop for TracefsUprobe {
        fn drop(&mut self) {
            let _ = std::fs::write(Self::enable_file(), "0");
            let _ = Self::define(&format!("-:{}", Self::NAME));
        }
    }

    #[test]
    fn a_breakpoint_already_at_the_callee_does_not_change_the_placement() {
        let (_, before) = resolve(libssl(), Some(Flavour::OpenSsl)).unwrap();
        assert!(before[0].at_callee, "{:?}", before[0]);
        // Another agent's (or a debugger's) uprobe where ours would go: the kernel puts
        // its int3 into every mapping of libssl that may execute.
        let _probe = TracefsUprobe::enable(libssl(), before[0].offset);
        let (_, after) = resolve(libssl(), Some(Flavour::OpenSsl)).unwrap();
        let describe = |f: &[Function]| f.iter().map(Function::describe).collect::<Vec<_>>();
        assert_eq!(describe(&after), describe(&before));
        assert_eq!(
            after.iter().map(|f| f.offset).collect::<Vec<_>>(),
            before.iter().map(|f| f.offset).collect::<Vec<_>>()
        );
    }

    #[test]
    fn libssl_functions_resolve_to_offsets_inside_the_file() {
        let libssl = libssl();
        let (_, functions) = resolve(libssl, Some(Flavour::OpenSsl)).unwrap();
        let names: Vec<String> = functions.iter().map(Function::describe).collect();
        // Debian's libssl 3: the `_ex` functions wrap ssl_read_internal/ssl_write_internal,
        // which start with `push` (emulated by the kernel) and which SSL_read/SSL_write call.
        assert_eq!(names.len(), 3, "{names:?}");
        assert!(
            names[0].starts_with("SSL_read_ex and SSL_read (at their callee"),
            "{names:?}"
        );
        assert!(
            names[1].starts_with("SSL_write_ex and SSL_write (at their callee"),
            "{names:?}"
        );
        assert_eq!(names[2], "SSL_shutdown");
        let size = std::fs::metadata(libssl).unwrap().len();
        assert!(functions.iter().all(|f| f.offset > 0 && f.offset < size));
        // A function's first bytes at that offset are code (endbr64 on CET builds).
        let bytes = std::fs::read(libssl).unwrap();
        let read = &functions[0];
        assert_ne!(
            &bytes[read.offset as usize..read.offset as usize + 4],
            &[0, 0, 0, 0]
        );
    }
}
