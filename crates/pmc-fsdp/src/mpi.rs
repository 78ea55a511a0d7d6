//! The MPI engine (feature `mpi`): rsmpi over the system's MPI library, one process per rank,
//! launched by `mpiexec` on one host or across hosts.
//!
//! MPI never times out on its own, so every operation is started non-blocking and polled
//! against the deadline; when it expires the rank prints which operation it was waiting in
//! and aborts the whole job (`MPI_Abort`), so a dead or stuck worker ends the job with a
//! message instead of a hang. A worker that dies outright is noticed by `mpiexec`, which ends
//! the others.

use std::cell::Cell;
use std::time::{Duration, Instant};

use mpi::collective::{CommunicatorCollectives, Root, SystemOperation};
use mpi::environment::Universe;
use mpi::request::{Request, Scope};
use mpi::topology::{Communicator, SimpleCommunicator};

use crate::collective::{Collective, CollectiveError, Traffic, check_split};

/// This process's rank in the MPI job.
pub struct MpiComm {
    world: SimpleCommunicator,
    timeout: Duration,
    calls: Cell<u64>,
    traffic: Cell<Traffic>,
    // Finalises MPI when dropped; kept last so the communicator goes first.
    _universe: Universe,
}

impl MpiComm {
    /// Joins the job this process was started in (`mpiexec -n N …`); a process started
    /// without `mpiexec` is a world of one.
    pub fn init(timeout: Duration) -> Result<Self, CollectiveError> {
        let universe = mpi::initialize()
            .ok_or_else(|| CollectiveError::Engine("MPI was already initialised".into()))?;
        Ok(MpiComm {
            world: universe.world(),
            timeout,
            calls: Cell::new(0),
            traffic: Cell::new(Traffic::default()),
            _universe: universe,
        })
    }

    /// Waits for `request`, polling; past the deadline the job is aborted.
    fn wait<'a, D: ?Sized, S: Scope<'a>>(&self, op: &'static str, mut request: Request<'a, D, S>) {
        let call = self.calls.get();
        self.calls.set(call + 1);
        let started = Instant::now();
        let mut pause = Duration::from_micros(1);
        loop {
            match request.test() {
                Ok(_) => return,
                Err(pending) => request = pending,
            }
            let waited = started.elapsed();
            if waited >= self.timeout {
                let err = CollectiveError::Timeout {
                    op,
                    call,
                    rank: self.rank(),
                    waited,
                    // MPI does not say which ranks have not joined a collective.
                    missing: Vec::new(),
                };
                // One write of the whole line: `eprintln!` writes a formatted message piece by
                // piece, and the abort can end the job between two pieces, losing the rest.
                let line = format!(
                    "error: {err}: of {} ranks, one never joined (dead, stuck, or on another code path); aborting the MPI job\n",
                    self.world_size()
                );
                let mut stderr = std::io::stderr().lock();
                let _ = std::io::Write::write_all(&mut stderr, line.as_bytes());
                let _ = std::io::Write::flush(&mut stderr);
                drop(stderr);
                // mpiexec's proxy forwards our stderr; the abort ends it with the job, so give
                // it a moment to pass the line on first.
                std::thread::sleep(Duration::from_millis(300));
                self.world.abort(3);
            }
            // Spin briefly, then back off to at most a millisecond between polls.
            if waited > Duration::from_millis(2) {
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(1));
            } else {
                std::hint::spin_loop();
            }
        }
    }

    fn count(&self, f: impl FnOnce(&mut Traffic)) {
        let mut t = self.traffic.get();
        f(&mut t);
        self.traffic.set(t);
    }
}

impl Collective for MpiComm {
    fn rank(&self) -> usize {
        self.world.rank() as usize
    }

    fn world_size(&self) -> usize {
        self.world.size() as usize
    }

    fn all_reduce_sum(&self, buf: &mut [f32]) -> Result<(), CollectiveError> {
        let send = buf.to_vec();
        mpi::request::scope(|scope| {
            let req =
                self.world
                    .immediate_all_reduce_into(scope, &send[..], buf, SystemOperation::sum());
            self.wait("all_reduce", req);
        });
        self.count(|t| t.all_reduce += 2 * send.len() as u64);
        Ok(())
    }

    fn all_reduce_sum_f64(&self, buf: &mut [f64]) -> Result<(), CollectiveError> {
        let send = buf.to_vec();
        mpi::request::scope(|scope| {
            let req =
                self.world
                    .immediate_all_reduce_into(scope, &send[..], buf, SystemOperation::sum());
            self.wait("all_reduce_f64", req);
        });
        Ok(())
    }

    fn reduce_scatter_sum(&self, input: &[f32], output: &mut [f32]) -> Result<(), CollectiveError> {
        check_split(
            "reduce_scatter",
            input.len(),
            output.len(),
            self.world_size(),
        )?;
        mpi::request::scope(|scope| {
            let req = self.world.immediate_reduce_scatter_block_into(
                scope,
                input,
                output,
                SystemOperation::sum(),
            );
            self.wait("reduce_scatter", req);
        });
        self.count(|t| t.reduce_scatter += input.len() as u64);
        Ok(())
    }

    fn all_gather(&self, input: &[f32], output: &mut [f32]) -> Result<(), CollectiveError> {
        check_split("all_gather", output.len(), input.len(), self.world_size())?;
        mpi::request::scope(|scope| {
            let req = self.world.immediate_all_gather_into(scope, input, output);
            self.wait("all_gather", req);
        });
        self.count(|t| t.all_gather += output.len() as u64);
        Ok(())
    }

    fn broadcast(&self, buf: &mut [f32], root: usize) -> Result<(), CollectiveError> {
        let process = self.world.process_at_rank(root as i32);
        mpi::request::scope(|scope| {
            let req = process.immediate_broadcast_into(scope, buf);
            self.wait("broadcast", req);
        });
        Ok(())
    }

    fn barrier(&self) -> Result<(), CollectiveError> {
        self.wait("barrier", self.world.immediate_barrier());
        Ok(())
    }

    fn traffic(&self) -> Traffic {
        self.traffic.get()
    }
}
