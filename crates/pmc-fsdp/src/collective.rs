//! The collective operations sharded training needs, independent of the engine that moves
//! the bytes: in-process threads (the `threads` module) or MPI (`mpi`).
//!
//! Every rank calls the same operations in the same order (SPMD). Each operation has a
//! deadline: MPI itself never times out, and a job whose worker died must end with a message
//! rather than hang.

use std::time::Duration;

/// Why a collective failed.
#[derive(Debug, thiserror::Error)]
pub enum CollectiveError {
    /// Not every rank arrived before the deadline.
    #[error(
        "collective `{op}` (call {call}) on rank {rank} timed out after {waited:.1?} waiting for {}",
        waited_on(.missing)
    )]
    Timeout {
        /// The operation.
        op: &'static str,
        /// Its sequence number on this rank (0-based).
        call: u64,
        /// The rank that gave up.
        rank: usize,
        /// How long it waited.
        waited: Duration,
        /// The ranks that had not arrived (empty when the engine cannot tell).
        missing: Vec<usize>,
    },
    /// Another rank left the job (it failed, panicked or was killed).
    #[error("collective `{op}` on rank {rank}: rank {peer} left the job: {reason}")]
    PeerLeft {
        /// The operation.
        op: &'static str,
        /// The rank that noticed.
        rank: usize,
        /// The rank that left.
        peer: usize,
        /// What it reported.
        reason: String,
    },
    /// The ranks called different operations at the same point: a bug in the caller.
    #[error("rank {rank} called `{op}` where rank {peer} called `{other}` (call {call})")]
    Mismatch {
        /// This rank's operation.
        op: &'static str,
        /// The other rank's operation.
        other: &'static str,
        /// The call number.
        call: u64,
        /// This rank.
        rank: usize,
        /// The rank that disagreed.
        peer: usize,
    },
    /// Buffer lengths do not fit the operation.
    #[error("collective `{op}`: {message}")]
    Shape {
        /// The operation.
        op: &'static str,
        /// What does not fit.
        message: String,
    },
    /// The engine reported an error.
    #[error("{0}")]
    Engine(String),
}

fn waited_on(missing: &[usize]) -> String {
    if missing.is_empty() {
        "another rank (the engine cannot tell which)".into()
    } else {
        format!("ranks {missing:?}")
    }
}

/// Elements moved by one rank, counted as the ZeRO paper counts communication volume: an
/// all-reduce of n elements is 2n (a reduce-scatter then an all-gather), a reduce-scatter or
/// all-gather whose full buffer is n elements is n.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Traffic {
    /// Elements of all-reduces (counted twice, see above).
    pub all_reduce: u64,
    /// Elements of reduce-scatters (full buffer).
    pub reduce_scatter: u64,
    /// Elements of all-gathers (full buffer).
    pub all_gather: u64,
}

impl Traffic {
    /// All of it.
    pub fn total(&self) -> u64 {
        self.all_reduce + self.reduce_scatter + self.all_gather
    }
}

/// The collective operations of one rank in a world of workers.
pub trait Collective: Send {
    /// This worker's rank, `0..world_size`.
    fn rank(&self) -> usize;
    /// The number of workers.
    fn world_size(&self) -> usize;
    /// Sums `buf` element-wise over all ranks, in place (every rank gets the sum).
    fn all_reduce_sum(&self, buf: &mut [f32]) -> Result<(), CollectiveError>;
    /// As [`Collective::all_reduce_sum`], in f64 (losses, norms, counters).
    fn all_reduce_sum_f64(&self, buf: &mut [f64]) -> Result<(), CollectiveError>;
    /// Sums `input` (`world_size × output.len()` elements) over all ranks and gives rank `r`
    /// the `r`-th block of the sum.
    fn reduce_scatter_sum(&self, input: &[f32], output: &mut [f32]) -> Result<(), CollectiveError>;
    /// Concatenates every rank's `input` in rank order into `output`
    /// (`world_size × input.len()` elements).
    fn all_gather(&self, input: &[f32], output: &mut [f32]) -> Result<(), CollectiveError>;
    /// Copies `root`'s `buf` into every rank's `buf`.
    fn broadcast(&self, buf: &mut [f32], root: usize) -> Result<(), CollectiveError>;
    /// Returns when every rank has called it.
    fn barrier(&self) -> Result<(), CollectiveError>;
    /// What this rank has moved so far.
    fn traffic(&self) -> Traffic;
}

/// The default deadline of every collective, as PyTorch's NCCL process group and DeepSpeed
/// use.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(600);

/// Checks the lengths of a reduce-scatter or all-gather: `full` must be `world × part`.
pub(crate) fn check_split(
    op: &'static str,
    full: usize,
    part: usize,
    world: usize,
) -> Result<(), CollectiveError> {
    if full != part * world {
        return Err(CollectiveError::Shape {
            op,
            message: format!("{full} elements are not {world} ranks × {part}"),
        });
    }
    Ok(())
}
