//! Which files hold TLS functions worth hooking, and where those functions are: symbol
//! addresses from the ELF symbol tables (`object`), turned into file offsets.
use std::{fs::File, path::Path};

use object::{read::ReadCache, Object, ObjectSegment, ObjectSymbol};

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
    /// Programs attached at the function, in order: entry first, then return.
    pub fn programs(self) -> &'static [&'static str] {
        match self {
            Program::Read => &["tls_read_enter", "tls_return"],
            Program::ReadEx => &["tls_read_ex_enter", "tls_return"],
            Program::Write => &["tls_write_enter", "tls_return"],
            Program::WriteEx => &["tls_write_ex_enter", "tls_return"],
            Program::Shutdown => &["tls_shutdown"],
            Program::LibraryLoaded => &["library_loaded"],
        }
    }
}

/// What a file's name says it may be. Other executables are checked for exported OpenSSL
/// functions (statically linked OpenSSL, as in `node`).
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

/// A hookable function: its name, what to attach, and its offset in the file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Function {
    pub symbol: &'static str,
    pub program: Program,
    pub offset: u64,
}

/// The functions of `flavour` that `path` defines, with file offsets. Only the parts of the
/// file the symbol tables need are read (executables like `node` are ~100 MB).
pub fn resolve(path: &Path, flavour: Flavour) -> Result<Vec<Function>, String> {
    let file = File::open(path).map_err(|e| format!("cannot open: {e}"))?;
    let cache = ReadCache::new(file);
    let elf = object::File::parse(&cache).map_err(|e| format!("not an ELF file: {e}"))?;
    let mut found = Vec::new();
    for &(symbol, program) in flavour.hooks() {
        let address = elf
            .dynamic_symbols()
            .chain(elf.symbols())
            .find(|s| s.is_definition() && s.name() == Ok(symbol))
            .map(|s| s.address());
        let Some(address) = address else { continue };
        let offset = elf.segments().find_map(|segment| {
            let start = segment.address();
            let (file_start, file_size) = segment.file_range();
            (address >= start && address < start + file_size).then(|| address - start + file_start)
        });
        if let Some(offset) = offset {
            found.push(Function {
                symbol,
                program,
                offset,
            });
        }
    }
    Ok(found)
}

/// True if an executable of unknown name exports OpenSSL's read and write functions.
pub fn exports_openssl(path: &Path) -> bool {
    let Ok(file) = File::open(path) else {
        return false;
    };
    let cache = ReadCache::new(file);
    let Ok(elf) = object::File::parse(&cache) else {
        return false;
    };
    let mut wanted = ["SSL_read", "SSL_write"].map(|name| (name, false));
    for symbol in elf.dynamic_symbols().filter(|s| s.is_definition()) {
        for (name, seen) in wanted.iter_mut() {
            *seen |= symbol.name() == Ok(*name);
        }
    }
    wanted.iter().all(|(_, seen)| *seen)
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn libssl_functions_resolve_to_offsets_inside_the_file() {
        let libssl = ["/usr/lib/x86_64-linux-gnu/libssl.so.3", "/lib/x86_64-linux-gnu/libssl.so.3"]
            .into_iter()
            .map(Path::new)
            .find(|p| p.exists())
            .expect("libssl3 is installed by `cargo xtask setup` (Debian package libssl3)");
        let functions = resolve(libssl, Flavour::OpenSsl).unwrap();
        let names: Vec<&str> = functions.iter().map(|f| f.symbol).collect();
        assert_eq!(
            names,
            ["SSL_read", "SSL_read_ex", "SSL_write", "SSL_write_ex", "SSL_shutdown"]
        );
        let size = std::fs::metadata(libssl).unwrap().len();
        assert!(functions.iter().all(|f| f.offset > 0 && f.offset < size));
        // A function's first bytes at that offset are code (endbr64 on CET builds).
        let bytes = std::fs::read(libssl).unwrap();
        let read = &functions[0];
        assert_ne!(&bytes[read.offset as usize..read.offset as usize + 4], &[0, 0, 0, 0]);
    }
}
