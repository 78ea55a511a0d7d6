//! Training data until pmc-corpus lands: a token stream cut into fixed-length windows, read
//! in a seeded random order per epoch, with a cursor that resumes exactly.

use burn::prelude::*;
use rand::seq::SliceRandom;
use rand::{SeedableRng, rngs::StdRng};
use serde::{Deserialize, Serialize};

/// A position in the stream: which epoch and how many windows of it were consumed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cursor {
    /// 0-based epoch.
    pub epoch: u64,
    /// Windows of this epoch already consumed.
    pub position: usize,
}

/// Non-overlapping windows of `seq_len` tokens over a token stream.
#[derive(Debug)]
pub struct TokenWindows {
    windows: Vec<Vec<u32>>,
    seed: u64,
    /// The order of the epoch last read: shuffling every window is too much work to redo
    /// for each micro-batch.
    order_cache: std::sync::Mutex<Option<(u64, std::sync::Arc<Vec<usize>>)>>,
}

impl TokenWindows {
    /// Cuts `tokens` into windows of `seq_len` (a shorter tail is dropped).
    pub fn new(tokens: &[u32], seq_len: usize, seed: u64) -> Self {
        Self {
            windows: tokens.chunks_exact(seq_len).map(<[u32]>::to_vec).collect(),
            seed,
            order_cache: std::sync::Mutex::new(None),
        }
    }

    /// Number of windows per epoch.
    pub fn len(&self) -> usize {
        self.windows.len()
    }

    /// Whether there is no full window.
    pub fn is_empty(&self) -> bool {
        self.windows.is_empty()
    }

    /// All windows, in stream order.
    pub fn windows(&self) -> &[Vec<u32>] {
        &self.windows
    }

    /// The order of epoch `epoch`: a permutation seeded by (seed, epoch), computed once per
    /// epoch.
    fn order(&self, epoch: u64) -> std::sync::Arc<Vec<usize>> {
        let mut cache = self.order_cache.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((cached, order)) = cache.as_ref()
            && *cached == epoch
        {
            return order.clone();
        }
        let mut order: Vec<usize> = (0..self.windows.len()).collect();
        let mut rng = StdRng::seed_from_u64(self.seed ^ epoch.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        order.shuffle(&mut rng);
        let order = std::sync::Arc::new(order);
        *cache = Some((epoch, order.clone()));
        order
    }

    /// The `n` windows after `cursor` as a `[n, seq_len]` batch, and the cursor after them.
    pub fn batch(&self, cursor: &Cursor, n: usize, device: &Device) -> (Tensor<2, Int>, Cursor) {
        assert!(!self.windows.is_empty(), "no training windows");
        let mut cursor = *cursor;
        let mut order = self.order(cursor.epoch);
        let mut ids = Vec::new();
        for _ in 0..n {
            if cursor.position == order.len() {
                cursor = Cursor {
                    epoch: cursor.epoch + 1,
                    position: 0,
                };
                order = self.order(cursor.epoch);
            }
            ids.extend(
                self.windows[order[cursor.position]]
                    .iter()
                    .map(|&t| t as i64),
            );
            cursor.position += 1;
        }
        let seq_len = self.windows[0].len();
        (
            Tensor::from_data(TensorData::new(ids, [n, seq_len]), device),
            cursor,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_window_once_per_epoch_and_cursors_resume() {
        let tokens: Vec<u32> = (0..100).collect();
        let data = TokenWindows::new(&tokens, 10, 7);
        let device = Device::flex();
        let (first, mid) = data.batch(&Cursor::default(), 4, &device);
        let (rest, end) = data.batch(&mid, 6, &device);
        assert_eq!(
            end,
            Cursor {
                epoch: 0,
                position: 10
            }
        );
        let mut starts: Vec<i64> = first
            .into_data()
            .iter::<i64>()
            .chain(rest.into_data().iter::<i64>())
            .step_by(10)
            .collect();
        starts.sort();
        assert_eq!(starts, (0..10).map(|i| i * 10).collect::<Vec<_>>());
        // Resuming from `mid` gives what came after it the first time.
        let (again, _) = data.batch(&mid, 6, &device);
        let (rest2, _) = data.batch(&mid, 6, &device);
        assert_eq!(again.into_data(), rest2.into_data());
        // The next epoch is another order.
        let (next, c) = data.batch(&end, 10, &device);
        assert_eq!(
            c,
            Cursor {
                epoch: 1,
                position: 10
            }
        );
        assert_ne!(
            next.into_data()
                .iter::<i64>()
                .step_by(10)
                .collect::<Vec<_>>(),
            starts
        );
    }
}
