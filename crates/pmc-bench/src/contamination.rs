//! Benchmark contamination: which questions share a word 13-gram with a pretraining corpus.
//!
//! The benchmark's n-grams are few (a split is at most a few MB of text), the corpus's many,
//! so the benchmark side is indexed and the corpus streamed past it, document by document.
//! Words are lower-cased alphanumeric runs, as in GPT-3's and the Llama papers' checks.

use std::collections::{HashMap, HashSet};

use pmc_corpus::dedup::word_hashes;

use crate::data::{Question, Task};

/// The n-gram length of the check (13, as GPT-3's contamination analysis).
pub const NGRAM: usize = 13;

fn word_ngrams(words: &[u64]) -> impl Iterator<Item = u64> + '_ {
    words.windows(NGRAM).map(|w| {
        w.iter().fold(0u64, |acc, &x| {
            (acc.rotate_left(7) ^ x).wrapping_mul(0x9e37_79b9_7f4a_7c15)
        })
    })
}

/// The text of a question that is checked: the question, PubMedQA's abstract, the options.
pub fn item_text(task: Task, q: &Question) -> String {
    let mut parts = vec![q.question.clone()];
    if task == Task::PubMedQa {
        parts.extend(q.contexts.iter().cloned());
    }
    parts.extend(
        q.options
            .iter()
            .filter(|o| o.split_whitespace().count() > 2)
            .cloned(),
    );
    parts.join("\n")
}

/// Index of the benchmark's n-grams → the questions that contain them.
#[derive(Debug)]
pub struct ContaminationIndex {
    ngrams: HashMap<u64, Vec<u32>>,
    ids: Vec<String>,
    /// Questions too short to hold one n-gram (never counted as contaminated).
    pub too_short: usize,
}

impl ContaminationIndex {
    pub fn new(task: Task, questions: &[Question]) -> Self {
        let mut ngrams: HashMap<u64, Vec<u32>> = HashMap::new();
        let mut too_short = 0;
        for (i, q) in questions.iter().enumerate() {
            let w = word_hashes(&item_text(task, q));
            if w.len() < NGRAM {
                too_short += 1;
            }
            let unique: HashSet<u64> = word_ngrams(&w).collect();
            for g in unique {
                ngrams.entry(g).or_default().push(i as u32);
            }
        }
        ContaminationIndex {
            ngrams,
            ids: questions.iter().map(|q| q.id.clone()).collect(),
            too_short,
        }
    }

    /// Questions (indices) sharing at least one n-gram with `document`.
    pub fn hits(&self, document: &str) -> HashSet<u32> {
        let w = word_hashes(document);
        let mut out = HashSet::new();
        for g in word_ngrams(&w) {
            if let Some(items) = self.ngrams.get(&g) {
                out.extend(items.iter().copied());
            }
        }
        out
    }

    pub fn id(&self, index: u32) -> &str {
        &self.ids[index as usize]
    }

    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn question(id: &str, text: &str) -> Question {
        Question {
            id: id.into(),
            question: text.into(),
            contexts: vec![],
            options: vec!["A".into(), "B".into()],
            gold: 0,
            subject: None,
            long_answer: None,
        }
    }

    #[test]
    fn shared_13_grams_are_found_regardless_of_case_and_punctuation() {
        let text = "Does metformin reduce the incidence of colorectal cancer in patients with type two diabetes mellitus over ten years";
        let qs = [
            question("q1", text),
            question(
                "q2",
                "An entirely different question about something else that is long enough to count here",
            ),
        ];
        let index = ContaminationIndex::new(Task::MedQa, &qs);
        let corpus = "Background: DOES metformin reduce the incidence of colorectal-cancer in patients with type two diabetes? We studied...";
        assert_eq!(index.hits(corpus), HashSet::from([0]));
        // Twelve shared words are not enough.
        assert!(
            index
                .hits(
                    "metformin reduce the incidence of colorectal cancer in patients with type two"
                )
                .is_empty()
        );
    }
}

/// One split's items that share a word n-gram with the corpus.
#[derive(Debug)]
pub struct SplitContamination {
    /// The split.
    pub split: crate::Split,
    /// Its items.
    pub index: ContaminationIndex,
    /// Item → the corpus documents sharing an n-gram with it.
    pub hits: std::collections::BTreeMap<u32, Vec<String>>,
}

/// Scans the text shards of the corpus prepared at `corpus` for `task`'s evaluation split
/// and, when `data` has one, its training pool. Returns each split's contamination and the
/// number of documents read.
pub fn scan(
    corpus: &std::path::Path,
    task: Task,
    data: &std::path::Path,
) -> Result<(Vec<SplitContamination>, usize), crate::BenchError> {
    let manifest = pmc_corpus::read_manifest(corpus)?;
    let mut splits = Vec::new();
    for split in [crate::Split::Eval, crate::Split::Train] {
        match crate::data::load(task, split, data) {
            Ok(questions) => splits.push(SplitContamination {
                split,
                index: ContaminationIndex::new(task, &questions),
                hits: Default::default(),
            }),
            Err(_) if split == crate::Split::Train => {}
            Err(e) => return Err(e),
        }
    }
    let mut documents = 0usize;
    for shard in &manifest.text_shards {
        for (doc_id, text) in pmc_corpus::shards::read_text_shard(&corpus.join(&shard.file))? {
            documents += 1;
            for split in &mut splits {
                for hit in split.index.hits(&text) {
                    split.hits.entry(hit).or_default().push(doc_id.clone());
                }
            }
        }
    }
    Ok((splits, documents))
}
