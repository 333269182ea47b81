//! Reads of small `/proc` files on the attestation path, which runs on every Workload API call.
//!
//! `std::fs::read_to_string` asks for the file's size first (a `statx` that `/proc` answers
//! with 0) and grows a buffer from there; these files are a few hundred bytes to a couple of
//! KiB, so one open and a read or two into a stack buffer do. Invalid UTF-8 is replaced rather
//! than refused: `/proc/<pid>/stat` carries the process name, which the workload chooses, and
//! a name that is not UTF-8 must not make the process impossible to attest.

use std::fs::File;
use std::io::{self, Read};

/// Stack buffer per read; larger files are read in several.
const CHUNK: usize = 2048;

/// The whole text of the `/proc` file at `path`.
pub(crate) fn read(path: &str) -> io::Result<String> {
    let mut file = File::open(path)?;
    let mut text = Vec::new();
    let mut chunk = [0u8; CHUNK];
    loop {
        match file.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => text.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(match String::from_utf8(text) {
        Ok(s) => s,
        Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_files_larger_than_one_chunk() {
        let status = read("/proc/self/status").unwrap();
        assert!(status.len() > CHUNK / 2, "{}", status.len());
        assert!(status.contains("\nGroups:"));
        assert!(read("/proc/self/stat").unwrap().contains(')'));
        let big = read("/proc/self/smaps").unwrap();
        assert!(big.len() > CHUNK, "{}", big.len());
    }

    #[test]
    fn missing_files_are_not_found() {
        let e = read("/proc/0/stat").unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
    }
}
