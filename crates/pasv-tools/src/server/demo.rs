//! The demo directory `pasvd` serves when it is given no root.

use std::fs;
use std::io;
use std::path::Path;

const README: &str = "This directory is served by pasvd, an FTP server whose passive ports come\n\
from a TIME_WAIT-aware pool.\n\nTry: curl ftp://127.0.0.1:2121/hello.txt\n     lftp -p 2121 127.0.0.1\n";

/// Creates `dir` with README.txt, hello.txt and a 1 MiB file (kept if already there).
pub fn populate_demo(dir: &Path) -> io::Result<()> {
    fs::create_dir_all(dir)?;
    let write_if_missing = |name: &str, data: &[u8]| -> io::Result<()> {
        let path = dir.join(name);
        match fs::metadata(&path) {
            Ok(m) if m.len() == data.len() as u64 => Ok(()),
            _ => fs::write(path, data),
        }
    };
    write_if_missing("README.txt", README.as_bytes())?;
    write_if_missing("hello.txt", b"Hello from pasvd!\n")?;
    // A deterministic pattern, so a download can be checked without the original.
    let mib: Vec<u8> = (0..1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    write_if_missing("1mib.bin", &mib)?;
    Ok(())
}
