//! Tokenizers (given or trained) and packing documents into fixed-length sequences.

use std::path::Path;

use tokenizers::Tokenizer;

use crate::CorpusError;
use crate::shards::Sequence;

/// End-of-text tokens of the common LLaMA-family tokenizers, in order of preference.
pub const EOS_CANDIDATES: &[&str] = &[
    "</s>",
    "<|endoftext|>",
    "<|end_of_text|>",
    "<eos>",
    "<|im_end|>",
];

/// Load a `tokenizer.json`.
pub fn load_tokenizer(path: &Path) -> Result<Tokenizer, CorpusError> {
    Tokenizer::from_file(path)
        .map_err(|e| CorpusError::Tokenizer(format!("{}: {e}", path.display())))
}

/// The id of the token that ends each document: `name` when given, else the first of
/// [`EOS_CANDIDATES`] the vocabulary has.
pub fn eos_id(tokenizer: &Tokenizer, name: Option<&str>) -> Result<(String, u32), CorpusError> {
    let candidates: Vec<&str> = match name {
        Some(n) => vec![n],
        None => EOS_CANDIDATES.to_vec(),
    };
    candidates
        .iter()
        .find_map(|t| tokenizer.token_to_id(t).map(|id| (t.to_string(), id)))
        .ok_or_else(|| {
            CorpusError::Tokenizer(format!(
                "the tokenizer has none of the end-of-text tokens {candidates:?}; name one with --eos-token"
            ))
        })
}

/// Train a byte-level BPE (GPT-2 style: bytes as the base alphabet, `<|endoftext|>` as the
/// one special token) of `vocab_size` entries on the given texts.
pub fn train_byte_level_bpe<I>(texts: I, vocab_size: usize) -> Result<Tokenizer, CorpusError>
where
    I: Iterator<Item = String> + Send,
{
    use tokenizers::AddedToken;
    use tokenizers::models::TrainerWrapper;
    use tokenizers::models::bpe::{BPE, BpeTrainerBuilder};
    use tokenizers::pre_tokenizers::byte_level::ByteLevel;
    let mut trainer: TrainerWrapper = BpeTrainerBuilder::new()
        .vocab_size(vocab_size)
        .show_progress(false)
        .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
        .special_tokens(vec![AddedToken::from("<|endoftext|>", true)])
        .build()
        .into();
    let mut tokenizer = Tokenizer::new(BPE::default());
    tokenizer.with_pre_tokenizer(Some(ByteLevel::default().add_prefix_space(false)));
    tokenizer.with_decoder(Some(ByteLevel::default()));
    tokenizer
        .train(&mut trainer, texts)
        .map_err(|e| CorpusError::Tokenizer(format!("training the tokenizer: {e}")))?;
    Ok(tokenizer)
}

/// Token ids of one document, without special tokens (EOS is added by the packer).
pub fn encode(tokenizer: &Tokenizer, text: &str) -> Result<Vec<u32>, CorpusError> {
    tokenizer
        .encode_fast(text, false)
        .map(|e| e.get_ids().to_vec())
        .map_err(|e| CorpusError::Tokenizer(format!("encoding: {e}")))
}

/// Joins documents with EOS and cuts the stream into sequences of exactly `seq_len` tokens.
///
/// The partial sequence left at the end is not emitted (`tail_tokens` reports its size), as
/// in HF's `group_texts`; every emitted sequence lists the documents it draws from.
pub struct Packer {
    seq_len: usize,
    eos: u32,
    buffer: Vec<u32>,
    buffer_docs: Vec<String>,
    /// Tokens pushed so far, EOS included.
    pub tokens: u64,
}

impl Packer {
    pub fn new(seq_len: usize, eos: u32) -> Self {
        Packer {
            seq_len,
            eos,
            buffer: Vec::with_capacity(seq_len),
            buffer_docs: Vec::new(),
            tokens: 0,
        }
    }

    /// Append a document; call `emit` for each sequence it completes.
    pub fn push(
        &mut self,
        doc_id: &str,
        ids: &[u32],
        mut emit: impl FnMut(Sequence) -> Result<(), CorpusError>,
    ) -> Result<(), CorpusError> {
        self.tokens += ids.len() as u64 + 1;
        let mut rest = ids.iter().copied().chain([self.eos]).peekable();
        while rest.peek().is_some() {
            if self.buffer_docs.last().is_none_or(|d| d != doc_id) {
                self.buffer_docs.push(doc_id.to_string());
            }
            let room = self.seq_len - self.buffer.len();
            self.buffer.extend(rest.by_ref().take(room));
            if self.buffer.len() == self.seq_len {
                let input_ids =
                    std::mem::replace(&mut self.buffer, Vec::with_capacity(self.seq_len));
                let doc_ids = std::mem::take(&mut self.buffer_docs);
                emit(Sequence { input_ids, doc_ids })?;
            }
        }
        Ok(())
    }

    /// Tokens left over that do not fill a sequence.
    pub fn tail_tokens(&self) -> usize {
        self.buffer.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packing_joins_with_eos_and_cuts_exactly() {
        let mut packer = Packer::new(4, 0);
        let mut out = Vec::new();
        let mut collect = |s| {
            out.push(s);
            Ok(())
        };
        packer.push("a", &[1, 2, 3], &mut collect).unwrap();
        packer.push("b", &[4, 5, 6, 7, 8, 9], &mut collect).unwrap();
        packer.push("c", &[10], &mut collect).unwrap();
        let ids: Vec<Vec<u32>> = out.iter().map(|s| s.input_ids.clone()).collect();
        assert_eq!(
            ids,
            vec![vec![1, 2, 3, 0], vec![4, 5, 6, 7], vec![8, 9, 0, 10]]
        );
        let docs: Vec<Vec<String>> = out.iter().map(|s| s.doc_ids.clone()).collect();
        assert_eq!(
            docs,
            vec![
                vec!["a".to_string()],
                vec!["b".into()],
                vec!["b".into(), "c".into()]
            ]
        );
        assert_eq!(packer.tail_tokens(), 1);
        assert_eq!(packer.tokens, 13);
    }
}
