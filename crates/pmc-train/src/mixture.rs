//! A mixture of training streams with replay (Meditron's GAP-Replay, PMC papers with a share
//! of general text against forgetting): each sequence's source is drawn with seeded weights.
//!
//! The draw of sequence `k` is a pure function of (seed, k), so the mixture's cursor — the
//! number of sequences drawn — determines how many each source has given and so every
//! source's own cursor: a resumed run reads exactly the stream an uninterrupted one reads.
//! Positions are advanced incrementally from the last batch and recounted from zero only
//! when a run jumps (a resume).

use std::sync::Mutex;

use burn::prelude::*;

use crate::TrainError;
use crate::data::{Batch, Cursor, TrainingData};

/// `name=PATH:WEIGHT`, one source of a mixture as the command line gives it.
#[derive(Debug, Clone, PartialEq)]
pub struct MixSpec {
    /// The source's name in metrics and errors.
    pub name: String,
    /// Papers, a prepared corpus, or a text file.
    pub path: std::path::PathBuf,
    /// Its share of the sequences drawn.
    pub weight: f64,
}

impl std::str::FromStr for MixSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = |why: &str| format!("mixture source {s:?}: {why} (expected NAME=PATH:WEIGHT)");
        let (name, rest) = s.split_once('=').ok_or_else(|| bad("no `=`"))?;
        let (path, weight) = rest.rsplit_once(':').ok_or_else(|| bad("no `:WEIGHT`"))?;
        let weight: f64 = weight
            .parse()
            .map_err(|_| bad(&format!("weight {weight:?} is not a number")))?;
        if name.is_empty() || path.is_empty() {
            return Err(bad("empty name or path"));
        }
        if !(weight > 0.0 && weight.is_finite()) {
            return Err(bad("the weight must be positive"));
        }
        Ok(MixSpec {
            name: name.to_string(),
            path: path.into(),
            weight,
        })
    }
}

/// One stream of a mixture.
pub struct MixSource {
    /// Its name (from the spec).
    pub name: String,
    /// Its share.
    pub weight: f64,
    /// The stream.
    pub data: Box<dyn TrainingData>,
}

/// Streams drawn from with seeded weights, one sequence at a time.
pub struct Mixture {
    sources: Vec<MixSource>,
    /// Cumulative weights, the last 1.
    cumulative: Vec<f64>,
    seed: u64,
    fingerprint: String,
    /// (sequences drawn, each source's sequences given by then) after the last batch.
    positions: Mutex<(u64, Vec<u64>)>,
}

impl Mixture {
    /// Mixes `sources`; their weights must sum to 1 (within 1e-6), their names differ and
    /// their sequences are of one length.
    pub fn new(sources: Vec<MixSource>, seed: u64) -> Result<Self, TrainError> {
        let invalid = |message: String| Err(TrainError::Config(message));
        check_names_and_weights(sources.iter().map(|s| (s.name.as_str(), s.weight)))?;
        let first = &sources[0];
        let total: f64 = sources.iter().map(|s| s.weight).sum();
        for s in &sources {
            if s.data.seq_len() != first.data.seq_len() {
                return invalid(format!(
                    "mixture source {:?} has {}-token sequences, {:?} has {}",
                    s.name,
                    s.data.seq_len(),
                    first.name,
                    first.data.seq_len()
                ));
            }
            if s.data.sequences() == 0 {
                return invalid(format!("mixture source {:?} has no sequences", s.name));
            }
        }
        let cumulative = sources
            .iter()
            .scan(0.0, |acc, s| {
                *acc += s.weight / total;
                Some(*acc)
            })
            .collect();
        let fingerprint = format!(
            "mix-seed{seed}[{}]",
            sources
                .iter()
                .map(|s| format!("{}={}:{}", s.name, s.weight, s.data.fingerprint()))
                .collect::<Vec<_>>()
                .join(",")
        );
        let n = sources.len();
        Ok(Mixture {
            sources,
            cumulative,
            seed,
            fingerprint,
            positions: Mutex::new((0, vec![0; n])),
        })
    }

    /// The source of sequence `k`: a uniform number from (seed, k) against the cumulative
    /// weights.
    fn draw(&self, k: u64) -> usize {
        let u = (splitmix64(self.seed ^ splitmix64(k)) >> 11) as f64 / (1u64 << 53) as f64;
        self.cumulative
            .iter()
            .position(|&c| u < c)
            .unwrap_or(self.sources.len() - 1)
    }

    /// Each source's sequences given once `k` have been drawn.
    fn positions_at(&self, k: u64) -> Vec<u64> {
        let mut guard = self.positions.lock().unwrap_or_else(|e| e.into_inner());
        let (at, counts) = &mut *guard;
        if *at > k {
            *at = 0;
            counts.iter_mut().for_each(|c| *c = 0);
        }
        while *at < k {
            counts[self.draw(*at)] += 1;
            *at += 1;
        }
        counts.clone()
    }

    /// Sequences drawn of each source, by name, once the run stands at `cursor`.
    pub fn composition(&self, cursor: &Cursor) -> Vec<(String, u64)> {
        let counts = self.positions_at(self.index(cursor));
        self.sources
            .iter()
            .zip(counts)
            .map(|(s, c)| (s.name.clone(), c))
            .collect()
    }

    fn index(&self, cursor: &Cursor) -> u64 {
        cursor.epoch * self.sequences() as u64 + cursor.consumed
    }
}

/// Refuses a mixture without sources, with two of one name, or whose weights do not sum
/// to 1 (within 1e-6) — before any source is prepared.
pub fn check_specs(specs: &[MixSpec]) -> Result<(), TrainError> {
    check_names_and_weights(specs.iter().map(|s| (s.name.as_str(), s.weight)))
}

fn check_names_and_weights<'a>(
    sources: impl Iterator<Item = (&'a str, f64)>,
) -> Result<(), TrainError> {
    let sources: Vec<(&str, f64)> = sources.collect();
    let invalid = |message: String| Err(TrainError::Config(message));
    if sources.is_empty() {
        return invalid("a mixture needs at least one source".into());
    }
    for (i, (name, _)) in sources.iter().enumerate() {
        if sources[..i].iter().any(|(other, _)| other == name) {
            return invalid(format!("two mixture sources are named {name:?}"));
        }
    }
    let total: f64 = sources.iter().map(|(_, w)| w).sum();
    if (total - 1.0).abs() > 1e-6 {
        let listed: Vec<String> = sources.iter().map(|(n, w)| format!("{n} {w}")).collect();
        return invalid(format!(
            "the mixture's weights sum to {}, not 1 ({})",
            (total * 1e9).round() / 1e9,
            listed.join(", ")
        ));
    }
    Ok(())
}

/// SplitMix64's finaliser: a well-mixed 64-bit hash of `x`.
fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl TrainingData for Mixture {
    fn batch(
        &self,
        cursor: &Cursor,
        n: usize,
        device: &Device,
    ) -> Result<(Batch, Cursor), TrainError> {
        let start = self.index(cursor);
        let mut positions = self.positions_at(start);
        let mut rows = Vec::with_capacity(n);
        for k in start..start + n as u64 {
            let s = self.draw(k);
            let source = &self.sources[s].data;
            let per_epoch = source.sequences() as u64;
            let at = Cursor {
                epoch: positions[s] / per_epoch,
                consumed: positions[s] % per_epoch,
            };
            let (batch, _) = source.batch(&at, 1, device)?;
            rows.push(batch.tokens);
            positions[s] += 1;
        }
        let end = start + n as u64;
        // The next batch starts where this one ended: no recount.
        *self.positions.lock().unwrap_or_else(|e| e.into_inner()) = (end, positions);
        let per_epoch = self.sequences() as u64;
        let next = Cursor {
            epoch: end / per_epoch,
            consumed: end % per_epoch,
        };
        Ok((Batch::packed(Tensor::cat(rows, 0)), next))
    }

    /// A mixture's "epoch" is as many draws as its sources have sequences together.
    fn sequences(&self) -> usize {
        self.sources.iter().map(|s| s.data.sequences()).sum()
    }

    fn seq_len(&self) -> usize {
        self.sources[0].data.seq_len()
    }

    fn fingerprint(&self) -> String {
        self.fingerprint.clone()
    }

    fn composition(&self, cursor: &Cursor) -> Option<Vec<(String, u64)>> {
        Some(Mixture::composition(self, cursor))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::TokenWindows;

    fn source(name: &str, weight: f64, first_token: u32) -> MixSource {
        let tokens: Vec<u32> = (0..40).map(|i| first_token + i).collect();
        MixSource {
            name: name.into(),
            weight,
            data: Box::new(TokenWindows::new(&tokens, 4, 1)),
        }
    }

    fn ids(batch: &Batch) -> Vec<i64> {
        batch
            .tokens
            .to_data()
            .convert::<i64>()
            .try_into_vec::<i64>()
            .unwrap()
    }

    #[test]
    fn draws_follow_the_weights_and_resume_exactly() {
        let device = Device::flex();
        let mix =
            Mixture::new(vec![source("pmc", 0.8, 0), source("general", 0.2, 1000)], 7).unwrap();
        // 50 batches of 4 from the start, in one go.
        let mut cursor = Cursor::default();
        let mut whole = Vec::new();
        for _ in 0..50 {
            let (b, next) = mix.batch(&cursor, 4, &device).unwrap();
            whole.extend(ids(&b));
            cursor = next;
        }
        let composition = mix.composition(&cursor);
        assert_eq!(composition.iter().map(|c| c.1).sum::<u64>(), 200);
        let general = composition[1].1 as f64 / 200.0;
        assert!((general - 0.2).abs() < 0.07, "{composition:?}");
        // Sequences of the second source are recognisable by their token ids.
        let from_general = whole.chunks(4).filter(|s| s[0] >= 1000).count();
        assert_eq!(from_general as u64, composition[1].1);

        // A fresh mixture (a resumed process) asked for batch 30 onwards reads the same.
        let resumed =
            Mixture::new(vec![source("pmc", 0.8, 0), source("general", 0.2, 1000)], 7).unwrap();
        let mut cursor = Cursor {
            epoch: 120 / 20,
            consumed: 120 % 20,
        };
        let mut tail = Vec::new();
        for _ in 30..50 {
            let (b, next) = resumed.batch(&cursor, 4, &device).unwrap();
            tail.extend(ids(&b));
            cursor = next;
        }
        assert_eq!(tail, whole[120 * 4..]);
        // Another seed draws otherwise.
        let other =
            Mixture::new(vec![source("pmc", 0.8, 0), source("general", 0.2, 1000)], 8).unwrap();
        let (b, _) = other.batch(&Cursor::default(), 40, &device).unwrap();
        assert_ne!(ids(&b), whole[..160]);
    }

    #[test]
    fn bad_mixtures_are_refused_with_their_reason() {
        let err = |sources, why: &str| {
            let e = Mixture::new(sources, 0).err().expect("refused").to_string();
            assert!(e.contains(why), "{e}");
        };
        err(
            vec![source("a", 0.5, 0), source("b", 0.4, 0)],
            "weights sum to 0.9",
        );
        err(
            vec![source("a", 0.5, 0), source("a", 0.5, 0)],
            "two mixture sources are named \"a\"",
        );
        err(Vec::new(), "at least one source");
        for (spec, why) in [
            ("pmc", "no `=`"),
            ("pmc=dir", "no `:WEIGHT`"),
            ("pmc=dir:x", "is not a number"),
            ("pmc=dir:-1", "must be positive"),
            ("=dir:1", "empty name"),
        ] {
            let e = spec.parse::<MixSpec>().unwrap_err();
            assert!(e.contains(why), "{spec}: {e}");
        }
        let spec: MixSpec = "general=/data/a:b.txt:0.05".parse().unwrap();
        assert_eq!(spec.path, std::path::PathBuf::from("/data/a:b.txt"));
        assert_eq!(spec.weight, 0.05);
    }
}
