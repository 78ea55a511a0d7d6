//! Duplicate removal: exact (same PMCID, same folded text) and near (MinHash with LSH).
//!
//! Fingerprints are computed in parallel with the cleaning ([`Fingerprint::of`]); decisions
//! are made one document at a time in input order ([`Deduplicator::check`]), so the output
//! does not depend on the number of threads. The index keeps ~0.7 KB per kept document
//! (signature and band keys), the only state of the pipeline that grows with the corpus.

use std::collections::{HashMap, HashSet};

use sha2::{Digest, Sha256};

use crate::clean::DropReason;

/// Number of MinHash permutations.
pub const PERMUTATIONS: usize = 128;
/// LSH bands × rows = permutations; 16 × 8 finds pairs at Jaccard 0.8 with p ≈ 0.96 and
/// at 0.5 with p ≈ 0.06, and every candidate is then checked against the threshold.
const BANDS: usize = 16;
const ROWS: usize = PERMUTATIONS / BANDS;
/// Word n-gram size of the shingles.
pub const SHINGLE_WORDS: usize = 5;

/// What the deduplicator needs to know about one document.
#[derive(Debug, Clone)]
pub struct Fingerprint {
    /// SHA-256 (first 16 bytes) of the text lower-cased with whitespace folded.
    pub exact: [u8; 16],
    /// MinHash signature over word 5-gram shingles (empty when near-dedup is off).
    pub minhash: Vec<u32>,
}

impl Fingerprint {
    /// Fingerprint a cleaned text; `near` computes the MinHash signature too.
    pub fn of(text: &str, near: bool) -> Fingerprint {
        let words = word_hashes(text);
        let mut hasher = Sha256::new();
        for w in &words {
            hasher.update(w.to_le_bytes());
        }
        let digest = hasher.finalize();
        let mut exact = [0u8; 16];
        exact.copy_from_slice(&digest[..16]);
        let minhash = if near { minhash(&words) } else { Vec::new() };
        Fingerprint { exact, minhash }
    }

    /// The MinHash estimate of the Jaccard similarity of two documents' shingle sets.
    pub fn similarity(&self, other: &Fingerprint) -> f64 {
        let equal = self
            .minhash
            .iter()
            .zip(&other.minhash)
            .filter(|(a, b)| a == b)
            .count();
        equal as f64 / self.minhash.len().max(1) as f64
    }
}

/// The words of `text` — runs of alphanumeric characters, case-folded — as 64-bit hashes:
/// what duplicate detection and n-gram overlap checks compare.
pub fn word_hashes(text: &str) -> Vec<u64> {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(hash_word_folded)
        .collect()
}

/// FNV-1a of the word's lower-cased UTF-8 (without allocating), then a finaliser so that
/// similar words spread over the whole range.
fn hash_word_folded(word: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut feed = |b: u8| {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    };
    if word.is_ascii() {
        word.bytes().for_each(|b| feed(b.to_ascii_lowercase()));
    } else {
        let mut buf = [0u8; 4];
        for c in word.chars().flat_map(char::to_lowercase) {
            c.encode_utf8(&mut buf).bytes().for_each(&mut feed);
        }
    }
    splitmix(h)
}

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

fn minhash(words: &[u64]) -> Vec<u32> {
    let mut signature = [u32::MAX; PERMUTATIONS];
    let shingles = words.len().saturating_sub(SHINGLE_WORDS - 1).max(1);
    for start in 0..shingles.min(words.len()) {
        let end = (start + SHINGLE_WORDS).min(words.len());
        let shingle = splitmix(
            words[start..end]
                .iter()
                .fold(0u64, |acc, &w| acc.rotate_left(17) ^ w),
        );
        // Permutation i: the high half of a·x + b (mod 2^64) with odd a — a multiply-add per
        // permutation on an already mixed hash. Repeated shingles leave the minima unchanged.
        for ((slot, &a), &b) in signature.iter_mut().zip(&PERMUTATION_A).zip(&PERMUTATION_B) {
            let h = (shingle.wrapping_mul(a).wrapping_add(b) >> 32) as u32;
            *slot = (*slot).min(h);
        }
    }
    signature.to_vec()
}

const fn seeds(mut state: u64, odd: bool) -> [u64; PERMUTATIONS] {
    let mut seeds = [0u64; PERMUTATIONS];
    let mut i = 0;
    while i < PERMUTATIONS {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        seeds[i] = if odd { z | 1 } else { z };
        i += 1;
    }
    seeds
}

const PERMUTATION_A: [u64; PERMUTATIONS] = seeds(0x5eed_0fc0_ffee, true);
const PERMUTATION_B: [u64; PERMUTATIONS] = seeds(0xb1a5_ed5e_ed00, false);

/// The running index of kept documents.
pub struct Deduplicator {
    exact: bool,
    near_threshold: Option<f64>,
    ids: HashSet<String>,
    hashes: HashSet<[u8; 16]>,
    signatures: Vec<Vec<u32>>,
    bands: HashMap<(u8, u64), Vec<u32>>,
}

impl Deduplicator {
    pub fn new(exact: bool, near_threshold: Option<f64>) -> Self {
        Deduplicator {
            exact,
            near_threshold,
            ids: HashSet::new(),
            hashes: HashSet::new(),
            signatures: Vec::new(),
            bands: HashMap::new(),
        }
    }

    /// Decide one document; a kept document joins the index. `pmcid` is the paper's PMCID
    /// (the same paper shipped twice, e.g. in two bulk packages).
    pub fn check(
        &mut self,
        pmcid: Option<&str>,
        fingerprint: &Fingerprint,
    ) -> Result<(), DropReason> {
        if self.exact {
            if let Some(id) = pmcid
                && self.ids.contains(id)
            {
                return Err(DropReason::DuplicateId);
            }
            if self.hashes.contains(&fingerprint.exact) {
                return Err(DropReason::ExactDuplicate);
            }
        }
        let mut band_keys = Vec::new();
        if let Some(threshold) = self.near_threshold {
            for (band, rows) in fingerprint.minhash.chunks(ROWS).enumerate() {
                let key = rows
                    .iter()
                    .fold(band as u64, |acc, &r| splitmix(acc ^ u64::from(r)));
                band_keys.push((band as u8, key));
            }
            let mut checked = HashSet::new();
            for key in &band_keys {
                for &candidate in self.bands.get(key).into_iter().flatten() {
                    if checked.insert(candidate) {
                        let other = &self.signatures[candidate as usize];
                        let equal = other
                            .iter()
                            .zip(&fingerprint.minhash)
                            .filter(|(a, b)| a == b)
                            .count();
                        if equal as f64 / PERMUTATIONS as f64 >= threshold {
                            return Err(DropReason::NearDuplicate);
                        }
                    }
                }
            }
        }
        if self.exact {
            if let Some(id) = pmcid {
                self.ids.insert(id.to_string());
            }
            self.hashes.insert(fingerprint.exact);
        }
        if self.near_threshold.is_some() {
            let index = self.signatures.len() as u32;
            self.signatures.push(fingerprint.minhash.clone());
            for key in band_keys {
                self.bands.entry(key).or_default().push(index);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(n: usize, seed: u64) -> Vec<String> {
        (0..n)
            .map(|i| format!("w{}", splitmix(seed * 1_000_003 + i as u64) % 5000))
            .collect()
    }

    #[test]
    fn minhash_estimates_jaccard() {
        let base = words(2000, 1);
        // Change every 25th word: each change touches 5 shingles, J ≈ 0.67.
        let mut edited = base.clone();
        for i in (0..edited.len()).step_by(25) {
            edited[i] = format!("x{i}");
        }
        let a = Fingerprint::of(&base.join(" "), true);
        let b = Fingerprint::of(&edited.join(" "), true);
        let shingles =
            |w: &[String]| -> HashSet<String> { w.windows(5).map(|s| s.join(" ")).collect() };
        let (sa, sb) = (shingles(&base), shingles(&edited));
        let truth = sa.intersection(&sb).count() as f64 / sa.union(&sb).count() as f64;
        assert!(
            (a.similarity(&b) - truth).abs() < 0.1,
            "estimate {} vs {truth}",
            a.similarity(&b)
        );
    }

    #[test]
    fn decisions_exact_near_and_distinct() {
        let mut dedup = Deduplicator::new(true, Some(0.8));
        let text = words(3000, 7).join(" ");
        let fp = Fingerprint::of(&text, true);
        assert_eq!(dedup.check(Some("PMC1"), &fp), Ok(()));
        assert_eq!(
            dedup.check(Some("PMC1"), &Fingerprint::of("other", true)),
            Err(DropReason::DuplicateId)
        );
        // Same words, other case and spacing: an exact duplicate.
        let shouted = text.to_uppercase().replace(' ', "  \n");
        assert_eq!(
            dedup.check(None, &Fingerprint::of(&shouted, true)),
            Err(DropReason::ExactDuplicate)
        );
        // One word in 200 changed: J ≈ 0.95, a near duplicate.
        let mut near = words(3000, 7);
        for i in (0..near.len()).step_by(200) {
            near[i] = "changed".into();
        }
        assert_eq!(
            dedup.check(None, &Fingerprint::of(&near.join(" "), true)),
            Err(DropReason::NearDuplicate)
        );
        // A different document is kept.
        assert_eq!(
            dedup.check(None, &Fingerprint::of(&words(3000, 8).join(" "), true)),
            Ok(())
        );
    }
}
