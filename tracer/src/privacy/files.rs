//! Files that hold exported spans or journeys are readable by their owner only: they name
//! orders, services and (without pseudonymisation) ids.
use std::{
    fs::{File, OpenOptions, Permissions},
    io,
    os::unix::fs::{OpenOptionsExt, PermissionsExt},
    path::Path,
};

/// Owner read/write only.
pub const PRIVATE_MODE: u32 = 0o600;

/// Opens `path` for appending, creating it 0600; an existing regular file is made 0600
/// too (a device such as `/dev/null` is left as it is).
pub fn open_private_append(path: &Path) -> io::Result<File> {
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(PRIVATE_MODE)
        .open(path)?;
    if file.metadata()?.is_file() {
        file.set_permissions(Permissions::from_mode(PRIVATE_MODE))?;
    }
    Ok(file)
}

/// Creates `path` 0600 if it is missing, and makes it 0600 if it exists (before a
/// library such as SQLite opens it and derives its side files' modes from it).
pub fn make_private(path: &Path) -> io::Result<()> {
    open_private_append(path).map(drop)
}

/// Creates a directory (and parents) readable by its owner only, if it is missing.
pub fn create_private_dir(dir: &Path) -> io::Result<()> {
    if dir.exists() {
        return Ok(());
    }
    std::fs::create_dir_all(dir)?;
    std::fs::set_permissions(dir, Permissions::from_mode(0o700))
}
