//! `speedrun data inspect`: what a shard holds, at a glance.

use std::fmt;
use std::path::{Path, PathBuf};

use rayon::prelude::*;

use super::shard::{DataError, HEADER_BYTES, SHARD_MAGIC, SHARD_VERSION, Shard};
use super::tokenizer::{END_OF_TEXT, GPT2_VOCAB, decode_u16};

/// A shard's header facts and token statistics.
pub struct ShardSummary {
    pub path: PathBuf,
    pub tokens: usize,
    pub file_bytes: u64,
    pub min_token: Option<u16>,
    pub max_token: Option<u16>,
    pub distinct: usize,
    pub end_of_text: u64,
    /// The most frequent tokens, most frequent first: (token, count).
    pub most_frequent: Vec<(u16, u64)>,
    /// The first tokens of the shard.
    pub head: Vec<u16>,
}

/// Reads and validates the shard at `path` (any u16 token is accepted: the vocabulary is
/// unknown here) and counts its tokens.
pub fn summarize(path: &Path, top: usize, head: usize) -> Result<ShardSummary, DataError> {
    let shard = Shard::open(path, 1 << 16)?;
    let tokens = shard.tokens();
    let counts = tokens
        .par_chunks(1 << 20)
        .map(|chunk| {
            let mut counts = vec![0u64; 1 << 16];
            chunk.iter().for_each(|&t| counts[t as usize] += 1);
            counts
        })
        .reduce(
            || vec![0u64; 1 << 16],
            |mut a, b| {
                a.iter_mut().zip(&b).for_each(|(a, b)| *a += b);
                a
            },
        );
    let present = || (0..=u16::MAX).filter(|&t| counts[t as usize] > 0);
    let mut most_frequent: Vec<(u16, u64)> = present().map(|t| (t, counts[t as usize])).collect();
    most_frequent.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    let distinct = most_frequent.len();
    most_frequent.truncate(top);
    Ok(ShardSummary {
        path: path.to_path_buf(),
        tokens: tokens.len(),
        file_bytes: (HEADER_BYTES + 2 * tokens.len()) as u64,
        min_token: present().next(),
        max_token: present().next_back(),
        distinct,
        end_of_text: counts[END_OF_TEXT as usize],
        most_frequent,
        head: tokens[..head.min(tokens.len())].to_vec(),
    })
}

/// How a summary prints: tokens are shown as GPT-2 text when they all belong to GPT-2's
/// vocabulary, as ids otherwise.
pub struct Report<'a>(pub &'a ShardSummary);

impl fmt::Display for Report<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.0;
        let gpt2 = s.max_token.is_some_and(|t| (t as usize) < GPT2_VOCAB);
        let show = |tokens: &[u16]| gpt2.then(|| format!("{:?}", decode_u16(tokens)));
        writeln!(f, "{}", s.path.display())?;
        writeln!(
            f,
            "  header: magic {SHARD_MAGIC}, version {SHARD_VERSION}, {} tokens ({} bytes)",
            s.tokens, s.file_bytes
        )?;
        let (Some(min), Some(max)) = (s.min_token, s.max_token) else {
            return writeln!(f, "  (no tokens)");
        };
        writeln!(f, "  token ids: {min} to {max}, {} distinct", s.distinct)?;
        if s.end_of_text > 0 {
            writeln!(
                f,
                "  end-of-text ({END_OF_TEXT}): {} (documents, in GPT-2 shards)",
                s.end_of_text
            )?;
        }
        writeln!(f, "  most frequent:")?;
        for &(token, count) in &s.most_frequent {
            let share = 100.0 * count as f64 / s.tokens as f64;
            let text = show(&[token]).map_or(String::new(), |t| format!("  {t}"));
            writeln!(f, "    {token:>6} {count:>12} {share:6.2}%{text}")?;
        }
        match show(&s.head) {
            Some(text) => writeln!(f, "  first {} tokens as text: {text}", s.head.len()),
            None => writeln!(f, "  first {} tokens: {:?}", s.head.len(), s.head),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::write_shard;

    #[test]
    fn summary_counts_tokens_documents_and_frequencies() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.bin");
        // "Hello world" is [15496, 995] in GPT-2.
        let tokens = [50256, 15496, 995, 995, 13, 13, 13, 50256, 7];
        write_shard(&path, &tokens).unwrap();
        let s = summarize(&path, 3, 3).unwrap();
        assert_eq!(s.tokens, 9);
        assert_eq!(s.file_bytes, 1024 + 18);
        assert_eq!((s.min_token, s.max_token), (Some(7), Some(50256)));
        assert_eq!(s.distinct, 5);
        assert_eq!(s.end_of_text, 2);
        // Ties go to the smaller token id.
        assert_eq!(s.most_frequent, [(13, 3), (995, 2), (50256, 2)]);
        assert_eq!(s.head, [50256, 15496, 995]);
        let text = Report(&s).to_string();
        assert!(text.contains("9 tokens (1042 bytes)"), "{text}");
        assert!(text.contains("end-of-text (50256): 2"), "{text}");
        assert!(
            text.contains(r#"first 3 tokens as text: "<|endoftext|>Hello world""#),
            "{text}"
        );
        // Tokens beyond GPT-2's vocabulary: shown as ids.
        write_shard(&path, &[60000, 1, 2]).unwrap();
        let raw = Report(&summarize(&path, 3, 3).unwrap()).to_string();
        assert!(raw.contains("first 3 tokens: [60000, 1, 2]"), "{raw}");
    }

    #[test]
    fn a_bad_file_gives_the_loader_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.bin");
        std::fs::write(&path, [0u8; 1030]).unwrap();
        let err = summarize(&path, 3, 4).err().expect("not a shard");
        assert!(
            err.to_string().contains("bad.bin: bad magic number 0"),
            "{err}"
        );
    }
}
