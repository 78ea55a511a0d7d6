//! Starting a sharded run on an engine: N worker threads in this process, or this process's
//! rank of an MPI job — relaunching under `mpiexec -n N` first when started outside one, as
//! `torchrun` does for PyTorch.

use std::time::Duration;

use pmc_train::TrainError;

use crate::FsdpError;
use crate::collective::{Collective, CollectiveError};

/// This process's rank as its MPI launcher announced it (MPICH's Hydra, PMIx, Open MPI), or
/// `None` outside an MPI job — known before MPI is initialised, so that a command can keep
/// the other ranks quiet from its first line.
pub fn launcher_rank() -> Option<usize> {
    ["PMI_RANK", "PMIX_RANK", "OMPI_COMM_WORLD_RANK"]
        .iter()
        .find_map(|v| std::env::var(v).ok()?.parse().ok())
}

/// Which engine moves the bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    /// In-process worker threads sharing memory.
    Threads,
    /// One process per rank under MPI (feature `mpi`).
    Mpi,
}

impl std::str::FromStr for Engine {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "threads" => Ok(Engine::Threads),
            "mpi" => Ok(Engine::Mpi),
            other => Err(format!("unknown engine {other:?} (threads or mpi)")),
        }
    }
}

/// How a run was carried out on this process.
pub enum Launched<R> {
    /// The ranks ran here; rank 0's result (threads), or this process's rank and result (MPI).
    Ran {
        /// The rank whose result this is.
        rank: usize,
        /// Its result.
        result: R,
    },
    /// This process started `mpiexec`, which ran the job and exited with this code.
    Relaunched(i32),
}

/// Runs `work` on every rank of a world of `world_size` (`None`: as large as the MPI job) on
/// `engine`, each collective waiting at most `timeout`.
///
/// With [`Engine::Mpi`] outside an MPI job, this process relaunches itself — the same
/// program and arguments — under `mpiexec -n world_size` and returns its exit code.
pub fn launch<R: Send>(
    engine: Engine,
    world_size: Option<usize>,
    timeout: Duration,
    work: impl Fn(&dyn Collective) -> Result<R, TrainError> + Sync,
) -> Result<Launched<R>, FsdpError> {
    match engine {
        Engine::Threads => {
            let world = world_size.unwrap_or(1);
            let results =
                crate::threads::run(crate::threads::group(world, timeout), |comm| work(comm));
            let mut first_error = None;
            let mut rank0 = None;
            for (rank, joined) in results.into_iter().enumerate() {
                match joined.unwrap_or_else(|panic| std::panic::resume_unwind(panic)) {
                    Ok(r) if rank == 0 => rank0 = Some(r),
                    Ok(_) => {}
                    // The root cause, not the ranks that only saw a peer leave.
                    Err(e) => {
                        let consequence = matches!(&e, TrainError::Distributed(inner)
                            if matches!(inner.downcast_ref::<CollectiveError>(), Some(CollectiveError::PeerLeft { .. })));
                        if first_error.as_ref().is_none_or(|(c, _)| *c && !consequence) {
                            first_error = Some((consequence, e));
                        }
                    }
                }
            }
            match (first_error, rank0) {
                (Some((_, e)), _) => Err(e.into()),
                (None, Some(result)) => Ok(Launched::Ran { rank: 0, result }),
                (None, None) => unreachable!("rank 0 either succeeded or failed"),
            }
        }
        Engine::Mpi => launch_mpi(world_size, timeout, work),
    }
}

/// With [`Engine::Mpi`] in a process started outside an MPI job: runs this program again,
/// with the same arguments, under `mpiexec -n world_size`, and returns its exit code. `None`
/// when there is nothing to relaunch (threads, or already inside a job). Call it first, before
/// any expensive preparation.
pub fn relaunch_outside_job(
    engine: Engine,
    world_size: Option<usize>,
) -> Result<Option<i32>, FsdpError> {
    match engine {
        Engine::Threads => Ok(None),
        Engine::Mpi => relaunch_mpi(world_size),
    }
}

#[cfg(feature = "mpi")]
fn relaunch_mpi(world_size: Option<usize>) -> Result<Option<i32>, FsdpError> {
    // Started by an MPI launcher (MPICH's Hydra or Open MPI's mpirun): already in the job.
    if launcher_rank().is_some() {
        return Ok(None);
    }
    let n = world_size.unwrap_or(1);
    let exe =
        std::env::current_exe().map_err(|e| engine_err(format!("this program's path: {e}")))?;
    let status = std::process::Command::new("mpiexec")
        .arg("-n")
        .arg(n.to_string())
        .arg(exe)
        .args(std::env::args_os().skip(1))
        .status()
        .map_err(|e| {
            engine_err(format!(
                "starting `mpiexec -n {n}`: {e} (install MPI, e.g. Debian's mpich, or start the job with mpiexec yourself)"
            ))
        })?;
    Ok(Some(status.code().unwrap_or(1)))
}

#[cfg(not(feature = "mpi"))]
fn relaunch_mpi(_: Option<usize>) -> Result<Option<i32>, FsdpError> {
    Err(no_mpi())
}

#[cfg(feature = "mpi")]
fn launch_mpi<R>(
    world_size: Option<usize>,
    timeout: Duration,
    work: impl Fn(&dyn Collective) -> Result<R, TrainError>,
) -> Result<Launched<R>, FsdpError> {
    if let Some(code) = relaunch_mpi(world_size)? {
        return Ok(Launched::Relaunched(code));
    }
    let comm = crate::mpi::MpiComm::init(timeout)?;
    if let Some(n) = world_size
        && n != comm.world_size()
    {
        return Err(engine_err(format!(
            "--world-size {n}, but the MPI job has {} ranks",
            comm.world_size()
        )));
    }
    let rank = comm.rank();
    let result = work(&comm)?;
    Ok(Launched::Ran { rank, result })
}

#[cfg(not(feature = "mpi"))]
fn launch_mpi<R>(
    _: Option<usize>,
    _: Duration,
    _: impl Fn(&dyn Collective) -> Result<R, TrainError>,
) -> Result<Launched<R>, FsdpError> {
    Err(no_mpi())
}

#[cfg(not(feature = "mpi"))]
fn no_mpi() -> FsdpError {
    engine_err(
        "this build has no MPI engine: build with `cargo build -p xtask --features mpi` (needs an MPI library: Debian's `mpich libmpich-dev`, plus `libclang-dev pkgconf`)".into(),
    )
}

fn engine_err(message: String) -> FsdpError {
    FsdpError::Collective(CollectiveError::Engine(message))
}
