//! The GPT-2 tokenizer: tiktoken-rs's `r50k_base`, OpenAI's `gpt2` encoding, with its ranks
//! built into the binary, so it works offline. Checked token for token against Python
//! tiktoken by tests/tokenizer_fixtures.rs.

use std::sync::OnceLock;

use tiktoken_rs::CoreBPE;

/// GPT-2's vocabulary: 50,256 BPE tokens and `<|endoftext|>`.
pub const GPT2_VOCAB: usize = 50257;
/// GPT-2's end-of-text token, which GPT-2 shards put before every document.
pub const END_OF_TEXT: u32 = 50256;

static TOKENIZER: OnceLock<Result<CoreBPE, String>> = OnceLock::new();

/// The GPT-2 tokenizer (tiktoken-rs `r50k_base`, the ranks built into the binary), loaded on
/// first use (in a few tens of milliseconds) and shared afterwards.
pub fn gpt2_tokenizer() -> anyhow::Result<&'static CoreBPE> {
    TOKENIZER
        .get_or_init(|| tiktoken_rs::r50k_base().map_err(|e| format!("{e:#}")))
        .as_ref()
        .map_err(|e| {
            anyhow::anyhow!("cannot load the GPT-2 tokenizer (tiktoken-rs r50k_base): {e}")
        })
}

fn tokenizer() -> &'static CoreBPE {
    // The ranks are compiled in and a test loads them, so this cannot fail at run time.
    gpt2_tokenizer().expect("the GPT-2 tokenizer built into tiktoken-rs loads")
}

/// `text` as GPT-2 tokens, exactly as tiktoken's `gpt2` encoding's `encode_ordinary`: special
/// token strings such as `<|endoftext|>` in `text` are encoded as ordinary text.
pub fn encode(text: &str) -> Vec<u32> {
    tokenizer().encode_ordinary(text)
}

/// The bytes that `tokens` stand for; 50256 gives the bytes of `<|endoftext|>`, and an id
/// outside the vocabulary the bytes of U+FFFD (�).
pub fn decode_bytes(tokens: &[u32]) -> Vec<u8> {
    let bpe = tokenizer();
    bpe.decode_bytes(tokens).unwrap_or_else(|_| {
        let mut bytes = Vec::with_capacity(2 * tokens.len());
        for &t in tokens {
            match bpe.decode_bytes(&[t]) {
                Ok(b) => bytes.extend_from_slice(&b),
                Err(_) => bytes.extend_from_slice("\u{FFFD}".as_bytes()),
            }
        }
        bytes
    })
}

/// `tokens` as text. Lossy: a byte sequence that is not UTF-8 — a character whose bytes are
/// split across tokens at either end of `tokens` (an excerpt cut mid-character), or across an
/// id outside the vocabulary — becomes U+FFFD (�). Decoding whole encoded texts gives them
/// back exactly. 50256 decodes as the text `<|endoftext|>`.
pub fn decode(tokens: &[u32]) -> String {
    String::from_utf8_lossy(&decode_bytes(tokens)).into_owned()
}

/// [`decode`] for shard tokens.
pub fn decode_u16(tokens: &[u16]) -> String {
    let wide: Vec<u32> = tokens.iter().map(|&t| u32::from(t)).collect();
    decode(&wide)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokenizer_loads_and_encodes_known_gpt2_tokens() {
        gpt2_tokenizer().expect("tokenizer");
        assert_eq!(encode("Hello world"), [15496, 995]);
        assert_eq!(encode(""), [] as [u32; 0]);
        // encode_ordinary: the special token's text is ordinary text.
        assert_eq!(encode("<|endoftext|>"), [27, 91, 437, 1659, 5239, 91, 29]);
    }

    #[test]
    fn decode_round_trips_and_end_of_text_decodes_as_its_text() {
        let text = "Hello, wörld! 日本語 🙂\n";
        assert_eq!(decode(&encode(text)), text);
        assert_eq!(
            decode(&[15496, END_OF_TEXT, 995]),
            "Hello<|endoftext|> world"
        );
        assert_eq!(decode_u16(&[15496, 995]), "Hello world");
        assert_eq!(decode(&[]), "");
    }

    #[test]
    fn decode_is_lossy_for_partial_characters_and_unknown_ids() {
        let tokens = encode("🙂");
        assert!(tokens.len() > 1, "an emoji takes several byte tokens");
        // The emoji's first token alone is an incomplete UTF-8 sequence.
        assert!(decode(&tokens[..1]).contains('\u{FFFD}'));
        assert_eq!(decode(&[15496, 60000, 995]), "Hello\u{FFFD} world");
        assert_eq!(decode_bytes(&[15496, 60000]), "Hello\u{FFFD}".as_bytes());
    }
}
