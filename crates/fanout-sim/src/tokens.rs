//! The simulator's deterministic token counter.
//!
//! One token is four bytes of UTF-8, rounded up, and every count is at least 1:
//! `tokens(n_bytes) = max(1, ceil(n_bytes / 4))`. Input counts cover the text the model reads
//! (see the crate docs for the exact list); output counts cover the generated text and the
//! compact JSON of generated tool inputs. `count_tokens` uses the same function, so a client can
//! predict what the simulator will charge.

/// Tokens for `bytes` bytes of text.
pub(crate) fn tokens_for_bytes(bytes: usize) -> u64 {
    let tokens = bytes.div_ceil(4) as u64;
    tokens.max(1)
}

/// Accumulates the bytes the model "reads".
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct ByteCount(pub(crate) usize);

impl ByteCount {
    pub(crate) fn text(&mut self, text: &str) {
        self.0 = self.0.saturating_add(text.len());
    }

    pub(crate) fn json(&mut self, value: &serde_json::Value) {
        let len = serde_json::to_string(value).map(|s| s.len()).unwrap_or(0);
        self.0 = self.0.saturating_add(len);
    }

    pub(crate) fn tokens(self) -> u64 {
        tokens_for_bytes(self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounding() {
        assert_eq!(tokens_for_bytes(0), 1);
        assert_eq!(tokens_for_bytes(1), 1);
        assert_eq!(tokens_for_bytes(4), 1);
        assert_eq!(tokens_for_bytes(5), 2);
        assert_eq!(tokens_for_bytes(400), 100);
    }
}
