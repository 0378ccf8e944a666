//! Atomic file writes: a reader (or a crash) sees either the old file or the whole new one.

use std::fs::File;
use std::io;
use std::path::Path;

/// Writes a file by calling `write` on a temporary file in the same directory, syncing it to
/// disk and renaming it over `path`. On any error the temporary file is removed and `path` is
/// left as it was. The file gets the usual permissions (rw-r--r--), not a temporary file's.
pub fn write_file(path: &Path, write: impl FnOnce(&mut File) -> io::Result<()>) -> io::Result<()> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let mut builder = tempfile::Builder::new();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        builder.permissions(std::fs::Permissions::from_mode(0o644));
    }
    let mut tmp = builder.tempfile_in(dir)?;
    write(tmp.as_file_mut())?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    // Make the rename itself durable.
    #[cfg(unix)]
    File::open(dir)?.sync_all()?;
    Ok(())
}
