//! Stop strings over streamed text, and log-probabilities of a row of logits.

/// Cuts generated text at the first of the request's stop strings while it is streamed:
/// text that may be the beginning of a stop string is held back until the next piece shows
/// whether it is, so a client never receives part of a stop string.
#[derive(Debug, Default)]
pub struct StopScanner {
    stops: Vec<String>,
    pending: String,
}

impl StopScanner {
    pub fn new(stops: Vec<String>) -> Self {
        Self {
            stops: stops.into_iter().filter(|s| !s.is_empty()).collect(),
            pending: String::new(),
        }
    }

    /// Adds `piece`; returns the text that can be sent now and whether a stop string was
    /// reached (the text then ends right before it, and nothing more should be generated).
    pub fn push(&mut self, piece: &str) -> (String, bool) {
        self.pending.push_str(piece);
        let first_stop = self
            .stops
            .iter()
            .filter_map(|stop| self.pending.find(stop.as_str()))
            .min();
        if let Some(at) = first_stop {
            let out = self.pending[..at].to_string();
            self.pending.clear();
            return (out, true);
        }
        let held = self.longest_stop_prefix_at_end();
        let cut = self.pending.len() - held;
        let out = self.pending[..cut].to_string();
        self.pending.drain(..cut);
        (out, false)
    }

    /// What is still held back (at the end of generation it is text, not a stop).
    pub fn flush(&mut self) -> String {
        std::mem::take(&mut self.pending)
    }

    /// Length in bytes of the longest end of the pending text that begins some stop string.
    fn longest_stop_prefix_at_end(&self) -> usize {
        let text = self.pending.as_str();
        self.stops
            .iter()
            .flat_map(|stop| {
                (1..stop.len())
                    .filter(|&k| stop.is_char_boundary(k))
                    .filter(move |&k| text.ends_with(&stop[..k]))
            })
            .max()
            .unwrap_or(0)
    }
}

/// The log-probability of `token` in a row of logits, and the `top` most probable tokens
/// with theirs (largest first; ties by lower id, as `torch.topk` on CPU tends to).
pub fn logprobs(row: &[f32], token: u32, top: usize) -> (f64, Vec<(u32, f64)>) {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let log_total = row
        .iter()
        .map(|&x| (x as f64 - max).exp())
        .sum::<f64>()
        .ln()
        + max;
    let logprob = |id: u32| row[id as usize] as f64 - log_total;
    let mut best: Vec<u32> = Vec::with_capacity(top + 1);
    if top > 0 {
        for id in 0..row.len() as u32 {
            let at = best.partition_point(|&b| row[b as usize] >= row[id as usize]);
            if at < top {
                best.insert(at, id);
                best.truncate(top);
            }
        }
    }
    (
        logprob(token),
        best.into_iter().map(|id| (id, logprob(id))).collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(stops: &[&str], pieces: &[&str]) -> (Vec<String>, bool) {
        let mut scanner = StopScanner::new(stops.iter().map(|s| s.to_string()).collect());
        let mut sent = Vec::new();
        for piece in pieces {
            let (out, stopped) = scanner.push(piece);
            sent.push(out);
            if stopped {
                return (sent, true);
            }
        }
        sent.push(scanner.flush());
        (sent, false)
    }

    #[test]
    fn a_stop_string_split_across_pieces_is_never_sent() {
        let (sent, stopped) = run(&["\n\nQ:"], &["Answer", " yes\n", "\nQ", ": next"]);
        assert!(stopped);
        assert_eq!(sent.concat(), "Answer yes");
        assert_eq!(sent, ["Answer", " yes", "", ""]);
    }

    #[test]
    fn a_false_start_is_released_when_the_text_moves_on() {
        let (sent, stopped) = run(&["END"], &["the E", "ND", "x"]);
        assert!(stopped);
        assert_eq!(sent.concat(), "the ");
        let (sent, stopped) = run(&["END"], &["the E", "nd of it"]);
        assert!(!stopped);
        assert_eq!(sent, ["the ", "End of it", ""]);
    }

    #[test]
    fn the_earliest_of_several_stops_wins_and_multibyte_text_is_cut_on_characters() {
        let (sent, stopped) = run(&["β", "zz"], &["aa zz bb β"]);
        assert!(stopped);
        assert_eq!(sent.concat(), "aa ");
        let (sent, _) = run(&["éa"], &["café", " au lait"]);
        assert_eq!(sent, ["caf", "é au lait", ""]);
    }

    #[test]
    fn logprobs_are_log_softmax_and_top_is_sorted() {
        let row = [1.0f32, 3.0, 2.0, 3.0];
        let (lp, top) = logprobs(&row, 2, 3);
        let total: f64 = row.iter().map(|&x| (x as f64).exp()).sum();
        assert!((lp - (2.0f64.exp() / total).ln()).abs() < 1e-12);
        let ids: Vec<u32> = top.iter().map(|t| t.0).collect();
        assert_eq!(ids, [1, 3, 2]);
        assert!((top[0].1 - (3.0f64.exp() / total).ln()).abs() < 1e-12);
        assert!(logprobs(&row, 0, 0).1.is_empty());
    }
}
