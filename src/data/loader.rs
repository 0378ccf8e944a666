//! Training and validation readers over globs of token shards.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::shard::{DataError, Shard, resolve_glob};

/// Where the next training batch starts: shard index into the sorted file
/// list, token offset in that shard, and completed passes over all shards.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct LoaderPosition {
    pub shard: usize,
    pub offset: usize,
    pub epoch: usize,
}

/// B·T, checked: both positive and B·T + 1 representable.
fn micro_batch_tokens(batch: usize, seq_len: usize) -> Result<usize, DataError> {
    batch
        .checked_mul(seq_len)
        .filter(|&bt| bt > 0 && bt < usize::MAX)
        .ok_or(DataError::BadBatchShape { batch, seq_len })
}

/// Opens a training shard and checks it holds at least one full window.
fn open_train_shard(
    path: &Path,
    vocab_size: usize,
    batch: usize,
    seq_len: usize,
) -> Result<Shard, DataError> {
    let shard = Shard::open(path, vocab_size)?;
    let need = batch * seq_len + 1;
    if shard.len() < need {
        return Err(DataError::ShardTooSmall {
            path: path.to_path_buf(),
            tokens: shard.len(),
            batch,
            seq_len,
            need,
        });
    }
    Ok(shard)
}

/// Copies a token window into a u32 buffer, reusing its allocation.
fn fill_u32(dst: &mut Vec<u32>, src: &[u16]) {
    dst.clear();
    dst.extend(src.iter().map(|&t| u32::from(t)));
}

/// Sequential, deterministic, resumable reader over a glob of shards.
/// Shards are opened (and validated) only when the loader reaches them.
pub struct TrainLoader {
    files: Vec<PathBuf>,
    batch: usize,
    seq_len: usize,
    vocab_size: usize,
    /// The open shard, always `files[pos.shard]`.
    shard: Shard,
    pos: LoaderPosition,
}

impl TrainLoader {
    pub fn new(
        pattern: &str,
        batch: usize,
        seq_len: usize,
        vocab_size: usize,
        start: LoaderPosition,
    ) -> Result<TrainLoader, DataError> {
        micro_batch_tokens(batch, seq_len)?;
        let files = resolve_glob(pattern)?;
        let path = files
            .get(start.shard)
            .ok_or_else(|| DataError::StartShardOutOfRange {
                shard: start.shard,
                pattern: pattern.to_string(),
                num_files: files.len(),
            })?;
        let shard = open_train_shard(path, vocab_size, batch, seq_len)?;
        // offset == len is allowed: it is where a shard ends and the next begins.
        if start.offset > shard.len() {
            return Err(DataError::StartOffsetBeyondShard {
                path: path.clone(),
                offset: start.offset,
                tokens: shard.len(),
            });
        }
        Ok(TrainLoader {
            files,
            batch,
            seq_len,
            vocab_size,
            shard,
            pos: start,
        })
    }

    fn window_fits(&self) -> bool {
        self.shard.len().saturating_sub(self.pos.offset) > self.batch * self.seq_len
    }

    /// The position after the current shard: the next one, or shard 0 of
    /// the next epoch after the last.
    fn next_shard_position(&self) -> LoaderPosition {
        if self.pos.shard + 1 < self.files.len() {
            LoaderPosition {
                shard: self.pos.shard + 1,
                offset: 0,
                epoch: self.pos.epoch,
            }
        } else {
            LoaderPosition {
                shard: 0,
                offset: 0,
                epoch: self.pos.epoch + 1,
            }
        }
    }

    /// Fills `inputs` and `targets` with B·T tokens each from the window
    /// tokens[offset .. offset + B·T + 1] of the current shard (targets are
    /// the inputs shifted by one), then advances by B·T.
    pub fn next_batch(
        &mut self,
        inputs: &mut Vec<u32>,
        targets: &mut Vec<u32>,
    ) -> Result<(), DataError> {
        let start = self.advance()?;
        let bt = self.batch * self.seq_len;
        let window = &self.shard.tokens()[start..start + bt + 1];
        fill_u32(inputs, &window[..bt]);
        fill_u32(targets, &window[1..]);
        Ok(())
    }

    /// Moves past the batch `next_batch` would return, without reading it: another rank's.
    pub fn skip_batch(&mut self) -> Result<(), DataError> {
        self.advance().map(|_| ())
    }

    /// The offset in the current shard of the next batch's window (opening the next shard if
    /// this one has no full window left), and advances the position past it.
    fn advance(&mut self) -> Result<usize, DataError> {
        if !self.window_fits() {
            let next = self.next_shard_position();
            // Reopening the same file (a single shard) would only re-validate it.
            if next.shard != self.pos.shard {
                self.shard = open_train_shard(
                    &self.files[next.shard],
                    self.vocab_size,
                    self.batch,
                    self.seq_len,
                )?;
            }
            self.pos = next;
        }
        let start = self.pos.offset;
        self.pos.offset += self.batch * self.seq_len;
        Ok(start)
    }

    /// Where the next batch starts. A loader created with this position
    /// yields exactly the batches this one yields next.
    pub fn position(&self) -> LoaderPosition {
        // Report the start of the next shard rather than a leftover tail
        // too short for a window, so the epoch count is the true one.
        if self.window_fits() {
            self.pos
        } else {
            self.next_shard_position()
        }
    }

    /// The sorted list of shard files this loader cycles through.
    pub fn files(&self) -> &[PathBuf] {
        &self.files
    }
}

/// The first `val_tokens + 1` tokens of the shards matched by a pattern
/// (concatenated in sorted file order), held in memory.
pub struct ValData {
    tokens: Vec<u16>,
    val_tokens: usize,
}

impl ValData {
    pub fn load(pattern: &str, val_tokens: usize, vocab_size: usize) -> Result<ValData, DataError> {
        // +1 for the target of the last input token.
        let need = val_tokens.saturating_add(1);
        let files = resolve_glob(pattern)?;
        let mut tokens = Vec::new();
        for path in &files {
            if tokens.len() >= need {
                break;
            }
            let shard = Shard::open(path, vocab_size)?;
            let take = (need - tokens.len()).min(shard.len());
            tokens.extend_from_slice(&shard.tokens()[..take]);
        }
        if tokens.len() < need {
            return Err(DataError::NotEnoughTokens {
                pattern: pattern.to_string(),
                have: tokens.len(),
                need,
                val_tokens,
            });
        }
        Ok(ValData { tokens, val_tokens })
    }

    pub fn num_tokens(&self) -> usize {
        self.val_tokens
    }

    /// The number of validation batches of B×T tokens: val_tokens / (B·T), which must divide.
    pub fn batch_count(&self, batch: usize, seq_len: usize) -> Result<usize, DataError> {
        let bt = micro_batch_tokens(batch, seq_len)?;
        if !self.val_tokens.is_multiple_of(bt) {
            return Err(DataError::ValNotMultiple {
                val_tokens: self.val_tokens,
                batch,
                seq_len,
                batch_tokens: bt,
            });
        }
        Ok(self.val_tokens / bt)
    }

    /// val_tokens / (B·T) batches of (inputs, targets); batch i covers
    /// tokens [i·B·T, (i+1)·B·T], targets shifted by one.
    pub fn batches(
        &self,
        batch: usize,
        seq_len: usize,
    ) -> Result<impl Iterator<Item = (Vec<u32>, Vec<u32>)> + '_, DataError> {
        let count = self.batch_count(batch, seq_len)?;
        let bt = batch * seq_len;
        Ok((0..count).map(move |i| {
            let window = &self.tokens[i * bt..(i + 1) * bt + 1];
            let (mut inputs, mut targets) = (Vec::new(), Vec::new());
            fill_u32(&mut inputs, &window[..bt]);
            fill_u32(&mut targets, &window[1..]);
            (inputs, targets)
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::shard::write_shard;

    fn range(lo: u16, hi: u16) -> Vec<u16> {
        (lo..hi).collect()
    }

    /// Writes `shards` as s0.bin, s1.bin, ... and returns the glob for them.
    fn write_all(dir: &Path, shards: &[Vec<u16>]) -> String {
        for (i, tokens) in shards.iter().enumerate() {
            write_shard(&dir.join(format!("s{i}.bin")), tokens).expect("write shard");
        }
        format!("{}/s*.bin", dir.display())
    }

    fn as_u32(v: std::ops::Range<u32>) -> Vec<u32> {
        v.collect()
    }

    /// Three shards with distinct token ranges: 20 tokens 0..20, 17 tokens
    /// 100..117, 30 tokens 200..230.
    fn three_shards(dir: &Path) -> String {
        write_all(dir, &[range(0, 20), range(100, 117), range(200, 230)])
    }

    #[test]
    fn windows_are_contiguous_cross_shards_and_wrap_with_epoch() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pattern = three_shards(dir.path());
        // B=2, T=4: 8 tokens per batch, 9 per window. By hand:
        // shard 0 (20 tokens): windows at 0, 8 (16 + 9 > 20, so move on);
        // shard 1 (17 tokens): 0, 8 (8 + 9 = 17 fits exactly);
        // shard 2 (30 tokens): 0, 8, 16 (24 + 9 > 30); then wrap to shard 0.
        let starts = [0u32, 8, 100, 108, 200, 208, 216, 0, 8, 100];
        let epochs_after = [0usize, 0, 0, 0, 0, 0, 1, 1, 1, 1];
        let mut loader =
            TrainLoader::new(&pattern, 2, 4, 65536, LoaderPosition::default()).expect("loader");
        assert_eq!(loader.files().len(), 3);
        let (mut x, mut y) = (Vec::new(), Vec::new());
        for (&s, &epoch) in starts.iter().zip(&epochs_after) {
            loader.next_batch(&mut x, &mut y).expect("batch");
            assert_eq!(x, as_u32(s..s + 8));
            assert_eq!(y, as_u32(s + 1..s + 9));
            assert_eq!(loader.position().epoch, epoch);
        }
    }

    #[test]
    fn position_points_at_the_next_batch_start() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pattern = three_shards(dir.path());
        let mut loader =
            TrainLoader::new(&pattern, 2, 4, 65536, LoaderPosition::default()).expect("loader");
        let (mut x, mut y) = (Vec::new(), Vec::new());
        let pos = |shard, offset, epoch| LoaderPosition {
            shard,
            offset,
            epoch,
        };
        // Same schedule as above, worked out by hand.
        let expected = [
            pos(0, 8, 0),
            pos(1, 0, 0),
            pos(1, 8, 0),
            pos(2, 0, 0),
            pos(2, 8, 0),
            pos(2, 16, 0),
            pos(0, 0, 1),
        ];
        assert_eq!(loader.position(), pos(0, 0, 0));
        for want in expected {
            loader.next_batch(&mut x, &mut y).expect("batch");
            assert_eq!(loader.position(), want);
        }
    }

    #[test]
    fn resuming_from_position_yields_identical_batches() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pattern = three_shards(dir.path());
        let (mut x, mut y) = (Vec::new(), Vec::new());
        let mut reference = Vec::new();
        let mut positions = Vec::new();
        let mut loader =
            TrainLoader::new(&pattern, 2, 4, 65536, LoaderPosition::default()).expect("loader");
        for _ in 0..30 {
            positions.push(loader.position());
            loader.next_batch(&mut x, &mut y).expect("batch");
            reference.push((x.clone(), y.clone()));
        }
        for (k, &start) in positions.iter().enumerate().take(20) {
            // Round-trip through JSON as a checkpoint would.
            let json = serde_json::to_string(&start).expect("serialize");
            let start: LoaderPosition = serde_json::from_str(&json).expect("deserialize");
            let mut resumed = TrainLoader::new(&pattern, 2, 4, 65536, start).expect("resume");
            for (j, want) in reference[k..k + 10].iter().enumerate() {
                resumed.next_batch(&mut x, &mut y).expect("batch");
                assert_eq!(&(x.clone(), y.clone()), want, "resume at {k}, batch {j}");
                assert_eq!(resumed.position(), positions[k + j + 1]);
            }
        }
    }

    #[test]
    fn un_normalized_position_at_shard_end_resumes_in_next_shard() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pattern = three_shards(dir.path());
        // Offset 20 is the very end of shard 0: the next batch is shard 1's first.
        let start = LoaderPosition {
            shard: 0,
            offset: 20,
            epoch: 0,
        };
        let mut loader = TrainLoader::new(&pattern, 2, 4, 65536, start).expect("loader");
        let (mut x, mut y) = (Vec::new(), Vec::new());
        loader.next_batch(&mut x, &mut y).expect("batch");
        assert_eq!(x, as_u32(100..108));
    }

    #[test]
    fn single_shard_wraps_onto_itself() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pattern = write_all(dir.path(), &[range(0, 10)]);
        // B·T = 4, window 5: windows at 0 and 4 (8 + 5 > 10), then wrap.
        let mut loader =
            TrainLoader::new(&pattern, 1, 4, 65536, LoaderPosition::default()).expect("loader");
        let (mut x, mut y) = (Vec::new(), Vec::new());
        for (s, epoch) in [(0u32, 0usize), (4, 1), (0, 1), (4, 2)] {
            loader.next_batch(&mut x, &mut y).expect("batch");
            assert_eq!(x, as_u32(s..s + 4));
            assert_eq!(loader.position().epoch, epoch);
        }
    }

    #[test]
    fn too_small_shard_is_an_error_naming_it_when_reached() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pattern = write_all(dir.path(), &[range(0, 20), range(100, 108)]);
        let mut loader =
            TrainLoader::new(&pattern, 2, 4, 65536, LoaderPosition::default()).expect("loader");
        let (mut x, mut y) = (Vec::new(), Vec::new());
        loader.next_batch(&mut x, &mut y).expect("batch 1");
        loader.next_batch(&mut x, &mut y).expect("batch 2");
        let err = loader
            .next_batch(&mut x, &mut y)
            .expect_err("shard 1 too small");
        assert!(
            matches!(
                err,
                DataError::ShardTooSmall {
                    tokens: 8,
                    need: 9,
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("s1.bin"), "{err}");
        // A too-small first shard fails at construction.
        let err = TrainLoader::new(&pattern, 4, 8, 65536, LoaderPosition::default())
            .err()
            .expect("shard 0 too small");
        assert!(matches!(err, DataError::ShardTooSmall { .. }), "{err}");
        assert!(err.to_string().contains("s0.bin"), "{err}");
    }

    #[test]
    fn shards_are_opened_when_reached_not_at_start() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pattern = write_all(dir.path(), &[range(0, 20)]);
        // A corrupt second shard: only noticed when the loader gets there.
        std::fs::write(dir.path().join("s1.bin"), b"garbage").expect("write");
        let mut loader =
            TrainLoader::new(&pattern, 2, 4, 65536, LoaderPosition::default()).expect("loader");
        let (mut x, mut y) = (Vec::new(), Vec::new());
        loader.next_batch(&mut x, &mut y).expect("batch 1");
        loader.next_batch(&mut x, &mut y).expect("batch 2");
        let err = loader
            .next_batch(&mut x, &mut y)
            .expect_err("corrupt shard");
        assert!(matches!(err, DataError::HeaderTooShort { .. }), "{err}");
        assert!(err.to_string().contains("s1.bin"), "{err}");
    }

    #[test]
    fn start_position_outside_the_files_is_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pattern = three_shards(dir.path());
        let start = LoaderPosition {
            shard: 3,
            offset: 0,
            epoch: 0,
        };
        let err = TrainLoader::new(&pattern, 2, 4, 65536, start)
            .err()
            .expect("shard out of range");
        assert!(
            matches!(
                err,
                DataError::StartShardOutOfRange {
                    shard: 3,
                    num_files: 3,
                    ..
                }
            ),
            "{err}"
        );
        let start = LoaderPosition {
            shard: 0,
            offset: 21,
            epoch: 0,
        };
        let err = TrainLoader::new(&pattern, 2, 4, 65536, start)
            .err()
            .expect("offset beyond shard");
        assert!(
            matches!(
                err,
                DataError::StartOffsetBeyondShard {
                    offset: 21,
                    tokens: 20,
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("s0.bin"), "{err}");
    }

    #[test]
    fn zero_or_overflowing_batch_shape_is_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pattern = three_shards(dir.path());
        for (b, t) in [(0, 4), (2, 0), (usize::MAX, 2)] {
            let err = TrainLoader::new(&pattern, b, t, 65536, LoaderPosition::default())
                .err()
                .expect("bad shape");
            assert!(matches!(err, DataError::BadBatchShape { .. }), "{err}");
        }
    }

    #[test]
    fn loader_reports_token_outside_vocab() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pattern = three_shards(dir.path());
        // Shard 0 holds 0..20; vocab 10 makes token 10 at offset 10 invalid.
        let err = TrainLoader::new(&pattern, 2, 4, 10, LoaderPosition::default())
            .err()
            .expect("vocab");
        assert!(
            matches!(
                err,
                DataError::TokenOutOfRange {
                    token: 10,
                    offset: 10,
                    ..
                }
            ),
            "{err}"
        );
    }

    /// Shards 0..5, 100..110 and a corrupt third file that must never be
    /// read when the first two hold enough tokens.
    fn val_files(dir: &Path) -> String {
        let pattern = write_all(dir, &[range(0, 5), range(100, 110)]);
        std::fs::write(dir.join("s2.bin"), b"not a shard").expect("write");
        pattern
    }

    #[test]
    fn val_data_concatenates_shards_in_order_with_exact_batches() {
        let dir = tempfile::tempdir().expect("tempdir");
        let val = ValData::load(&val_files(dir.path()), 12, 65536).expect("load");
        assert_eq!(val.num_tokens(), 12);
        // 13 tokens: 0 1 2 3 4 100 101 ... 107. B=2, T=3: 2 batches of 6.
        let batches: Vec<_> = val.batches(2, 3).expect("batches").collect();
        let want = vec![
            (vec![0, 1, 2, 3, 4, 100], vec![1, 2, 3, 4, 100, 101]),
            (
                vec![101, 102, 103, 104, 105, 106],
                vec![102, 103, 104, 105, 106, 107],
            ),
        ];
        assert_eq!(batches, want);
        // The same data as one batch of 12.
        let one: Vec<_> = val.batches(1, 12).expect("batches").collect();
        assert_eq!(one.len(), 1);
        assert_eq!(one[0].1[11], 107);
    }

    #[test]
    fn val_tokens_not_a_multiple_of_batch_is_an_error_naming_both() {
        let dir = tempfile::tempdir().expect("tempdir");
        let val = ValData::load(&val_files(dir.path()), 12, 65536).expect("load");
        let err = val.batches(5, 1).err().expect("12 % 5 != 0");
        assert!(
            matches!(
                err,
                DataError::ValNotMultiple {
                    val_tokens: 12,
                    batch_tokens: 5,
                    ..
                }
            ),
            "{err}"
        );
        let msg = err.to_string();
        assert!(msg.contains("12") && msg.contains('5'), "{msg}");
    }

    #[test]
    fn val_data_with_too_few_tokens_is_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pattern = write_all(dir.path(), &[range(0, 5), range(100, 110)]);
        // 15 tokens in all; val_tokens 15 needs 16.
        let err = ValData::load(&pattern, 15, 65536).err().expect("too few");
        assert!(
            matches!(
                err,
                DataError::NotEnoughTokens {
                    have: 15,
                    need: 16,
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains(&pattern), "{err}");
        // Exactly enough is fine.
        assert!(ValData::load(&pattern, 14, 65536).is_ok());
    }

    #[test]
    fn val_data_propagates_glob_and_shard_errors() {
        let dir = tempfile::tempdir().expect("tempdir");
        let err = ValData::load(&format!("{}/*.bin", dir.path().display()), 4, 65536)
            .err()
            .expect("no files");
        assert!(matches!(err, DataError::NoMatches { .. }), "{err}");
        let pattern = val_files(dir.path());
        // Needing the third (corrupt) file surfaces its error.
        let err = ValData::load(&pattern, 15, 65536).err().expect("corrupt");
        assert!(matches!(err, DataError::HeaderTooShort { .. }), "{err}");
    }
}
