//! Token shards in the llm.c / FineWeb format: a 1024-byte header of 256
//! little-endian i32 (magic, version, token count, zeros) followed by
//! `count` little-endian u16 tokens.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use memmap2::Mmap;

// Tokens are viewed in place as native u16, which is only the on-disk
// little-endian layout on little-endian hosts.
#[cfg(target_endian = "big")]
compile_error!("speedrun reads token shards zero-copy and supports little-endian hosts only");

pub const SHARD_MAGIC: i32 = 20240520;
pub const SHARD_VERSION: i32 = 1;
pub const HEADER_BYTES: usize = 1024;

/// Everything that can go wrong reading or writing token data. Each message
/// names the file (or glob pattern) and says what was found and expected.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("{}: cannot {action}: {source}", path.display())]
    Io {
        path: PathBuf,
        action: &'static str,
        source: std::io::Error,
    },
    #[error(
        "{}: file is {len} bytes, shorter than the {HEADER_BYTES}-byte shard header: not a token shard",
        path.display()
    )]
    HeaderTooShort { path: PathBuf, len: u64 },
    #[error(
        "{}: bad magic number {found} (expected {SHARD_MAGIC}: not a token shard)",
        path.display()
    )]
    BadMagic { path: PathBuf, found: i32 },
    #[error(
        "{}: unsupported shard version {found} (expected {SHARD_VERSION})",
        path.display()
    )]
    BadVersion { path: PathBuf, found: i32 },
    #[error(
        "{}: header token count is {found} (expected a non-negative count): corrupt header",
        path.display()
    )]
    NegativeTokenCount { path: PathBuf, found: i32 },
    #[error(
        "{}: file is {file_bytes} bytes but its header says {tokens} tokens (expected {expected_bytes} bytes): truncated or corrupt",
        path.display()
    )]
    SizeMismatch {
        path: PathBuf,
        file_bytes: u64,
        tokens: u64,
        expected_bytes: u64,
    },
    #[error(
        "{}: token data is not 2-byte aligned in memory (memory map at an odd address)",
        path.display()
    )]
    Unaligned { path: PathBuf },
    #[error(
        "{}: token {token} at token offset {offset} is outside the vocabulary (vocab size {vocab_size})",
        path.display()
    )]
    TokenOutOfRange {
        path: PathBuf,
        token: u16,
        offset: usize,
        vocab_size: usize,
    },
    #[error(
        "{}: cannot write {count} tokens: the header's token count is an i32 (at most {})",
        path.display(),
        i32::MAX
    )]
    TooManyTokens { path: PathBuf, count: usize },
    #[error("no files match pattern '{pattern}'")]
    NoMatches { pattern: String },
    #[error("invalid glob pattern '{pattern}': {source}")]
    BadPattern {
        pattern: String,
        source: glob::PatternError,
    },
    #[error(
        "val data matching '{pattern}' has {have} tokens but {need} are needed (val_tokens {val_tokens} + 1 for the shifted targets)"
    )]
    NotEnoughTokens {
        pattern: String,
        have: usize,
        need: usize,
        val_tokens: usize,
    },
    #[error(
        "{}: shard has {tokens} tokens but one batch of {batch}x{seq_len} needs {need} (batch*seq_len + 1)",
        path.display()
    )]
    ShardTooSmall {
        path: PathBuf,
        tokens: usize,
        batch: usize,
        seq_len: usize,
        need: usize,
    },
    #[error(
        "val_tokens {val_tokens} is not a multiple of batch*seq_len = {batch}x{seq_len} = {batch_tokens}"
    )]
    ValNotMultiple {
        val_tokens: usize,
        batch: usize,
        seq_len: usize,
        batch_tokens: usize,
    },
    #[error(
        "invalid batch shape {batch}x{seq_len}: batch and seq_len must be positive and batch*seq_len + 1 must fit in memory"
    )]
    BadBatchShape { batch: usize, seq_len: usize },
    #[error(
        "start position shard {shard} is out of range: pattern '{pattern}' matches {num_files} files"
    )]
    StartShardOutOfRange {
        shard: usize,
        pattern: String,
        num_files: usize,
    },
    #[error(
        "{}: start position offset {offset} is beyond the end of the shard ({tokens} tokens)",
        path.display()
    )]
    StartOffsetBeyondShard {
        path: PathBuf,
        offset: usize,
        tokens: usize,
    },
}

impl DataError {
    fn io(path: &Path, action: &'static str, source: std::io::Error) -> DataError {
        DataError::Io {
            path: path.to_path_buf(),
            action,
            source,
        }
    }
}

/// A validated, memory-mapped token shard.
pub struct Shard {
    mmap: Mmap,
}

impl Shard {
    /// Maps `path` and checks magic, version, exact file size, and that every
    /// token is below `vocab_size`.
    pub fn open(path: &Path, vocab_size: usize) -> Result<Shard, DataError> {
        let file = File::open(path).map_err(|e| DataError::io(path, "open", e))?;
        let len = file
            .metadata()
            .map_err(|e| DataError::io(path, "read metadata of", e))?
            .len();
        if len < HEADER_BYTES as u64 {
            return Err(DataError::HeaderTooShort {
                path: path.to_path_buf(),
                len,
            });
        }
        // SAFETY: the map is read-only; like every mmap reader we rely on
        // nobody truncating or rewriting the shard while training reads it
        // (write_shard replaces files by rename, which leaves this map intact).
        let mmap = unsafe { Mmap::map(&file) }.map_err(|e| DataError::io(path, "map", e))?;
        let header_i32 = |i: usize| {
            let b = &mmap[4 * i..4 * i + 4];
            i32::from_le_bytes([b[0], b[1], b[2], b[3]])
        };
        let magic = header_i32(0);
        if magic != SHARD_MAGIC {
            return Err(DataError::BadMagic {
                path: path.to_path_buf(),
                found: magic,
            });
        }
        let version = header_i32(1);
        if version != SHARD_VERSION {
            return Err(DataError::BadVersion {
                path: path.to_path_buf(),
                found: version,
            });
        }
        let count = header_i32(2);
        let tokens = u64::try_from(count).map_err(|_| DataError::NegativeTokenCount {
            path: path.to_path_buf(),
            found: count,
        })?;
        let expected_bytes = HEADER_BYTES as u64 + 2 * tokens;
        // Compare against the mapped length, which is what we will read.
        let file_bytes = mmap.len() as u64;
        if file_bytes != expected_bytes {
            return Err(DataError::SizeMismatch {
                path: path.to_path_buf(),
                file_bytes,
                tokens,
                expected_bytes,
            });
        }
        let data: &[u16] =
            bytemuck::try_cast_slice(&mmap[HEADER_BYTES..]).map_err(|_| DataError::Unaligned {
                path: path.to_path_buf(),
            })?;
        if let Some(offset) = data.iter().position(|&t| usize::from(t) >= vocab_size) {
            return Err(DataError::TokenOutOfRange {
                path: path.to_path_buf(),
                token: data[offset],
                offset,
                vocab_size,
            });
        }
        Ok(Shard { mmap })
    }

    /// The tokens, viewed in place in the memory map.
    pub fn tokens(&self) -> &[u16] {
        // Cannot panic: `open` checked this exact cast succeeds (mmap memory
        // is page aligned, so the data at byte 1024 is 2-aligned).
        bytemuck::cast_slice(&self.mmap[HEADER_BYTES..])
    }

    pub fn len(&self) -> usize {
        (self.mmap.len() - HEADER_BYTES) / 2
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Writes `tokens` as a shard at `path` atomically: the data goes to a
/// temporary file in the same directory, is fsynced, then renamed over
/// `path`, so readers never see a partial shard.
pub fn write_shard(path: &Path, tokens: &[u16]) -> Result<(), DataError> {
    let count = i32::try_from(tokens.len()).map_err(|_| DataError::TooManyTokens {
        path: path.to_path_buf(),
        count: tokens.len(),
    })?;
    let mut header = [0u8; HEADER_BYTES];
    for (i, v) in [SHARD_MAGIC, SHARD_VERSION, count].into_iter().enumerate() {
        header[4 * i..4 * i + 4].copy_from_slice(&v.to_le_bytes());
    }
    // On error nothing partial stays: the temporary file is deleted.
    crate::atomic::write_file(path, |f| {
        f.write_all(&header)?;
        f.write_all(bytemuck::cast_slice(tokens))
    })
    .map_err(|e| DataError::io(path, "write", e))?;
    Ok(())
}

/// The files matching `pattern`, sorted. Directories are skipped; an invalid
/// pattern or one that matches no file is an error.
pub fn resolve_glob(pattern: &str) -> Result<Vec<PathBuf>, DataError> {
    let paths = glob::glob(pattern).map_err(|source| DataError::BadPattern {
        pattern: pattern.to_string(),
        source,
    })?;
    let mut files = Vec::new();
    for entry in paths {
        let path = entry.map_err(|e| {
            let path = e.path().to_path_buf();
            DataError::io(&path, "read directory", e.into())
        })?;
        if path.is_file() {
            files.push(path);
        }
    }
    if files.is_empty() {
        return Err(DataError::NoMatches {
            pattern: pattern.to_string(),
        });
    }
    files.sort();
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Writes raw bytes (header fields + payload) without any validation.
    fn write_raw(path: &Path, magic: i32, version: i32, count: i32, payload: &[u8]) {
        let mut bytes = vec![0u8; HEADER_BYTES];
        bytes[0..4].copy_from_slice(&magic.to_le_bytes());
        bytes[4..8].copy_from_slice(&version.to_le_bytes());
        bytes[8..12].copy_from_slice(&count.to_le_bytes());
        bytes.extend_from_slice(payload);
        std::fs::write(path, bytes).expect("write test file");
    }

    fn le_tokens(tokens: &[u16]) -> Vec<u8> {
        tokens.iter().flat_map(|t| t.to_le_bytes()).collect()
    }

    fn assert_names(err: &DataError, path: &Path) {
        let msg = err.to_string();
        assert!(
            msg.contains(&path.display().to_string()),
            "message does not name {}: {msg}",
            path.display()
        );
    }

    #[test]
    fn write_then_open_round_trips_tokens() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("a.bin");
        let tokens: Vec<u16> = vec![0, 1, 2, 50256, 65535, 7, 7, 300];
        write_shard(&path, &tokens).expect("write");
        let shard = Shard::open(&path, 65536).expect("open");
        assert_eq!(shard.tokens(), &tokens[..]);
        assert_eq!(shard.len(), 8);
        assert!(!shard.is_empty());
    }

    #[test]
    fn written_header_and_payload_bytes_match_the_format_by_hand() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("h.bin");
        write_shard(&path, &[0x0102, 0xBEEF, 3]).expect("write");
        let bytes = std::fs::read(&path).expect("read");
        assert_eq!(bytes.len(), 1024 + 6);
        // 20240520 = 1·16^6 + 0x34·16^4 + 0xD888 = 0x0134D888, little-endian.
        assert_eq!(&bytes[0..4], &[0x88, 0xD8, 0x34, 0x01]);
        assert_eq!(&bytes[4..8], &[1, 0, 0, 0]);
        assert_eq!(&bytes[8..12], &[3, 0, 0, 0]);
        assert!(bytes[12..1024].iter().all(|&b| b == 0));
        assert_eq!(&bytes[1024..], &[0x02, 0x01, 0xEF, 0xBE, 0x03, 0x00]);
    }

    #[test]
    fn empty_shard_round_trips() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("e.bin");
        write_shard(&path, &[]).expect("write");
        let shard = Shard::open(&path, 10).expect("open");
        assert!(shard.is_empty());
        assert_eq!(shard.tokens(), &[] as &[u16]);
    }

    #[test]
    fn write_shard_replaces_an_existing_file_and_leaves_no_temporaries() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("r.bin");
        write_shard(&path, &[1, 2, 3, 4]).expect("write");
        write_shard(&path, &[9]).expect("rewrite");
        assert_eq!(Shard::open(&path, 10).expect("open").tokens(), &[9]);
        let entries = std::fs::read_dir(dir.path()).expect("read_dir").count();
        assert_eq!(entries, 1);
    }

    #[test]
    fn write_shard_into_missing_directory_fails_without_creating_anything() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("missing").join("x.bin");
        let err = write_shard(&path, &[1]).expect_err("must fail");
        assert!(matches!(err, DataError::Io { .. }), "{err}");
        assert_names(&err, &path);
        assert!(!dir.path().join("missing").exists());
    }

    #[test]
    fn wrong_magic_is_bad_magic() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("m.bin");
        write_raw(&path, 12345, 1, 1, &le_tokens(&[5]));
        let err = Shard::open(&path, 100).err().expect("must fail");
        assert!(
            matches!(err, DataError::BadMagic { found: 12345, .. }),
            "{err}"
        );
        assert_names(&err, &path);
        assert!(err.to_string().contains("20240520"));
    }

    #[test]
    fn wrong_version_is_bad_version() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("v.bin");
        write_raw(&path, SHARD_MAGIC, 2, 1, &le_tokens(&[5]));
        let err = Shard::open(&path, 100).err().expect("must fail");
        assert!(
            matches!(err, DataError::BadVersion { found: 2, .. }),
            "{err}"
        );
        assert_names(&err, &path);
    }

    #[test]
    fn truncated_file_is_size_mismatch_with_expected_size() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("t.bin");
        // Header claims 1000 tokens (expects 1024 + 2000 = 3024 bytes), file has 1024 + 6.
        write_raw(&path, SHARD_MAGIC, 1, 1000, &le_tokens(&[1, 2, 3]));
        let err = Shard::open(&path, 100).err().expect("must fail");
        assert!(
            matches!(
                err,
                DataError::SizeMismatch {
                    file_bytes: 1030,
                    tokens: 1000,
                    expected_bytes: 3024,
                    ..
                }
            ),
            "{err}"
        );
        assert_names(&err, &path);
        assert!(err.to_string().contains("3024"));
    }

    #[test]
    fn trailing_bytes_are_size_mismatch() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("long.bin");
        write_raw(&path, SHARD_MAGIC, 1, 1, &le_tokens(&[1, 2]));
        let err = Shard::open(&path, 100).err().expect("must fail");
        assert!(matches!(err, DataError::SizeMismatch { .. }), "{err}");
    }

    #[test]
    fn negative_count_is_rejected() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("n.bin");
        write_raw(&path, SHARD_MAGIC, 1, -3, &[]);
        let err = Shard::open(&path, 100).err().expect("must fail");
        assert!(
            matches!(err, DataError::NegativeTokenCount { found: -3, .. }),
            "{err}"
        );
        assert_names(&err, &path);
    }

    #[test]
    fn file_shorter_than_header_is_header_too_short() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("s.bin");
        std::fs::write(&path, [0u8; 100]).expect("write");
        let err = Shard::open(&path, 100).err().expect("must fail");
        assert!(
            matches!(err, DataError::HeaderTooShort { len: 100, .. }),
            "{err}"
        );
        assert_names(&err, &path);
        // An empty file too (mapping zero bytes would itself fail).
        std::fs::write(&path, []).expect("write");
        let err = Shard::open(&path, 100).err().expect("must fail");
        assert!(
            matches!(err, DataError::HeaderTooShort { len: 0, .. }),
            "{err}"
        );
    }

    #[test]
    fn missing_file_is_io_error_naming_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("nope.bin");
        let err = Shard::open(&path, 100).err().expect("must fail");
        assert!(matches!(err, DataError::Io { .. }), "{err}");
        assert_names(&err, &path);
    }

    #[test]
    fn token_at_or_above_vocab_reports_first_offending_offset() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("o.bin");
        write_shard(&path, &[1, 2, 99, 100, 101, 5]).expect("write");
        // vocab 100: token 100 at offset 3 is the first invalid one (99 is fine).
        let err = Shard::open(&path, 100).err().expect("must fail");
        assert!(
            matches!(
                err,
                DataError::TokenOutOfRange {
                    token: 100,
                    offset: 3,
                    vocab_size: 100,
                    ..
                }
            ),
            "{err}"
        );
        assert_names(&err, &path);
        assert!(Shard::open(&path, 102).is_ok());
    }

    #[test]
    fn glob_resolves_sorted_files_and_skips_directories() {
        let dir = tempfile::tempdir().expect("tempdir");
        for name in ["b.bin", "a.bin", "c.bin", "other.txt"] {
            std::fs::write(dir.path().join(name), b"x").expect("write");
        }
        std::fs::create_dir(dir.path().join("d.bin")).expect("mkdir");
        let pattern = format!("{}/*.bin", dir.path().display());
        let files = resolve_glob(&pattern).expect("glob");
        let names: Vec<_> = files
            .iter()
            .map(|p| p.file_name().and_then(|n| n.to_str()).unwrap_or(""))
            .collect();
        assert_eq!(names, ["a.bin", "b.bin", "c.bin"]);
    }

    #[test]
    fn glob_matching_nothing_is_no_matches_naming_the_pattern() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pattern = format!("{}/*.bin", dir.path().display());
        let err = resolve_glob(&pattern).expect_err("must fail");
        assert!(matches!(err, DataError::NoMatches { .. }), "{err}");
        assert!(err.to_string().contains(&pattern));
    }

    #[test]
    fn invalid_glob_is_bad_pattern_naming_the_pattern() {
        let err = resolve_glob("data/[*.bin").expect_err("must fail");
        assert!(matches!(err, DataError::BadPattern { .. }), "{err}");
        assert!(err.to_string().contains("data/[*.bin"));
    }
}
