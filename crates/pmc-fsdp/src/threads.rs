//! The in-process engine: one worker thread per rank, collectives through shared memory.
//!
//! The reference engine of the tests (every sum is taken in rank order, so results do not
//! depend on thread timing) and a way to use several cores with sharded state. Each
//! operation is two meetings of all ranks: after the first every rank's input is published,
//! after the second every rank has read what it needs, so inputs can be replaced.

use std::any::Any;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::collective::{Collective, CollectiveError, Traffic, check_split};

type Slot = Option<Arc<dyn Any + Send + Sync>>;

#[derive(Default)]
struct State {
    /// Completed meetings.
    generation: u64,
    /// Who has arrived at the current meeting, and with which (operation, call).
    arrived: Vec<Option<(&'static str, u64)>>,
    /// What each rank brought to the last completed meeting.
    last_round: Vec<Option<(&'static str, u64)>>,
    /// Each rank's published input of the current operation.
    slots: Vec<Slot>,
    /// Ranks that left the job, with their reason.
    departed: Vec<Option<String>>,
}

struct Shared {
    world: usize,
    timeout: Duration,
    state: Mutex<State>,
    changed: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// One rank's end of a group of in-process workers.
pub struct ThreadComm {
    rank: usize,
    shared: Arc<Shared>,
    calls: std::cell::Cell<u64>,
    traffic: std::cell::Cell<Traffic>,
    /// Why this rank leaves, when it leaves early (reported to the others).
    leaving: std::cell::RefCell<Option<String>>,
}

/// `world` connected ranks, one per worker thread, each collective waiting at most
/// `timeout`.
pub fn group(world: usize, timeout: Duration) -> Vec<ThreadComm> {
    assert!(world >= 1, "a world has at least one rank");
    let shared = Arc::new(Shared {
        world,
        timeout,
        state: Mutex::new(State {
            arrived: vec![None; world],
            last_round: vec![None; world],
            slots: vec![None; world],
            departed: vec![None; world],
            ..Default::default()
        }),
        changed: Condvar::new(),
    });
    (0..world)
        .map(|rank| ThreadComm {
            rank,
            shared: shared.clone(),
            calls: Default::default(),
            traffic: Default::default(),
            leaving: Default::default(),
        })
        .collect()
}

impl ThreadComm {
    /// Records why this rank is about to leave (an error): the ranks still waiting on it are
    /// told, instead of waiting for their deadline.
    pub fn leave_with(&self, reason: impl Into<String>) {
        *self.leaving.borrow_mut() = Some(reason.into());
        self.depart();
    }

    fn depart(&self) {
        let reason = self
            .leaving
            .borrow()
            .clone()
            .unwrap_or_else(|| "it finished".into());
        let mut state = self.shared.lock();
        if state.departed[self.rank].is_none() {
            state.departed[self.rank] = Some(reason);
        }
        drop(state);
        self.shared.changed.notify_all();
    }

    fn next_call(&self) -> u64 {
        let call = self.calls.get();
        self.calls.set(call + 1);
        call
    }

    /// Waits until every rank has arrived at this meeting of `(op, call)`.
    fn meet(&self, op: &'static str, call: u64) -> Result<(), CollectiveError> {
        let shared = &*self.shared;
        let mut state = shared.lock();
        state.arrived[self.rank] = Some((op, call));
        if state.arrived.iter().all(Option::is_some) {
            state.last_round = std::mem::replace(&mut state.arrived, vec![None; shared.world]);
            state.generation += 1;
            shared.changed.notify_all();
        } else {
            let generation = state.generation;
            let started = Instant::now();
            while state.generation == generation {
                let missing: Vec<usize> = (0..shared.world)
                    .filter(|&r| state.arrived[r].is_none())
                    .collect();
                if let Some(&peer) = missing.iter().find(|&&r| state.departed[r].is_some()) {
                    return Err(CollectiveError::PeerLeft {
                        op,
                        rank: self.rank,
                        peer,
                        reason: state.departed[peer].clone().unwrap_or_default(),
                    });
                }
                let waited = started.elapsed();
                if waited >= shared.timeout {
                    let err = CollectiveError::Timeout {
                        op,
                        call,
                        rank: self.rank,
                        waited,
                        missing,
                    };
                    drop(state);
                    self.leave_with(err.to_string());
                    return Err(err);
                }
                state = shared
                    .changed
                    .wait_timeout(state, shared.timeout - waited)
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
            }
        }
        if let Some((peer, (other, _))) = state
            .last_round
            .iter()
            .enumerate()
            .filter_map(|(r, x)| x.map(|x| (r, x)))
            .find(|(_, x)| *x != (op, call))
        {
            return Err(CollectiveError::Mismatch {
                op,
                other,
                call,
                rank: self.rank,
                peer,
            });
        }
        Ok(())
    }

    /// Publishes `data`, and returns every rank's, in rank order.
    fn exchange<T: Send + Sync + 'static>(
        &self,
        op: &'static str,
        data: Vec<T>,
    ) -> Result<Vec<Arc<Vec<T>>>, CollectiveError> {
        let call = self.next_call();
        self.shared.lock().slots[self.rank] = Some(Arc::new(data));
        self.meet(op, call)?;
        let all = self
            .shared
            .lock()
            .slots
            .iter()
            .map(|slot| {
                slot.clone()
                    .and_then(|s| s.downcast::<Vec<T>>().ok())
                    .ok_or_else(|| {
                        CollectiveError::Engine(format!("`{op}`: a rank's input is missing"))
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        self.meet(op, call)?;
        Ok(all)
    }

    fn count(&self, f: impl FnOnce(&mut Traffic)) {
        let mut traffic = self.traffic.get();
        f(&mut traffic);
        self.traffic.set(traffic);
    }
}

/// Sums `parts[k][range]` over `k` in rank order into `out`.
fn sum_in_rank_order<T: Copy + std::ops::Add<Output = T>>(
    parts: &[Arc<Vec<T>>],
    offset: usize,
    out: &mut [T],
) {
    let n = out.len();
    out.copy_from_slice(&parts[0][offset..offset + n]);
    for part in &parts[1..] {
        for (o, &x) in out.iter_mut().zip(&part[offset..offset + n]) {
            *o = *o + x;
        }
    }
}

impl Collective for ThreadComm {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world_size(&self) -> usize {
        self.shared.world
    }

    fn all_reduce_sum(&self, buf: &mut [f32]) -> Result<(), CollectiveError> {
        let parts = self.exchange("all_reduce", buf.to_vec())?;
        sum_in_rank_order(&parts, 0, buf);
        self.count(|t| t.all_reduce += 2 * buf.len() as u64);
        Ok(())
    }

    fn all_reduce_sum_f64(&self, buf: &mut [f64]) -> Result<(), CollectiveError> {
        let parts = self.exchange("all_reduce_f64", buf.to_vec())?;
        sum_in_rank_order(&parts, 0, buf);
        Ok(())
    }

    fn reduce_scatter_sum(&self, input: &[f32], output: &mut [f32]) -> Result<(), CollectiveError> {
        check_split(
            "reduce_scatter",
            input.len(),
            output.len(),
            self.shared.world,
        )?;
        let parts = self.exchange("reduce_scatter", input.to_vec())?;
        sum_in_rank_order(&parts, self.rank * output.len(), output);
        self.count(|t| t.reduce_scatter += input.len() as u64);
        Ok(())
    }

    fn all_gather(&self, input: &[f32], output: &mut [f32]) -> Result<(), CollectiveError> {
        check_split("all_gather", output.len(), input.len(), self.shared.world)?;
        let parts = self.exchange("all_gather", input.to_vec())?;
        for (chunk, part) in output.chunks_mut(input.len().max(1)).zip(&parts) {
            chunk.copy_from_slice(part);
        }
        self.count(|t| t.all_gather += output.len() as u64);
        Ok(())
    }

    fn broadcast(&self, buf: &mut [f32], root: usize) -> Result<(), CollectiveError> {
        let mine = if self.rank == root {
            buf.to_vec()
        } else {
            Vec::new()
        };
        let parts = self.exchange("broadcast", mine)?;
        if self.rank != root {
            if parts[root].len() != buf.len() {
                return Err(CollectiveError::Shape {
                    op: "broadcast",
                    message: format!(
                        "root sent {}, rank {} expects {}",
                        parts[root].len(),
                        self.rank,
                        buf.len()
                    ),
                });
            }
            buf.copy_from_slice(&parts[root]);
        }
        Ok(())
    }

    fn barrier(&self) -> Result<(), CollectiveError> {
        let call = self.next_call();
        self.meet("barrier", call)
    }

    fn traffic(&self) -> Traffic {
        self.traffic.get()
    }
}

impl Drop for ThreadComm {
    fn drop(&mut self) {
        if std::thread::panicking() && self.leaving.borrow().is_none() {
            *self.leaving.borrow_mut() = Some("it panicked".into());
        }
        self.depart();
    }
}

/// Runs `work(comm)` on `comms.len()` threads, one per rank, and returns each rank's result in
/// rank order. A rank that fails or panics is reported to the others, whose collectives then
/// fail instead of waiting.
pub fn run<R: Send, E: std::fmt::Display + Send>(
    comms: Vec<ThreadComm>,
    work: impl Fn(&ThreadComm) -> Result<R, E> + Sync,
) -> Vec<std::thread::Result<Result<R, E>>> {
    let work = &work;
    std::thread::scope(|scope| {
        let handles: Vec<_> = comms
            .into_iter()
            .map(|comm| {
                std::thread::Builder::new()
                    .name(format!("rank-{}", comm.rank))
                    .spawn_scoped(scope, move || {
                        let result = work(&comm);
                        if let Err(e) = &result {
                            comm.leave_with(format!("it failed: {e}"));
                        }
                        result
                    })
                    .expect("spawning a worker thread")
            })
            .collect();
        handles.into_iter().map(|h| h.join()).collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collectives_sum_in_rank_order_and_split_by_rank() {
        let results = run(group(3, Duration::from_secs(10)), |comm| {
            let r = comm.rank() as f32;
            let mut sum = vec![r, 10.0 * r];
            comm.all_reduce_sum(&mut sum)?;
            let input: Vec<f32> = (0..6).map(|i| i as f32 + r).collect();
            let mut part = vec![0.0; 2];
            comm.reduce_scatter_sum(&input, &mut part)?;
            let mut gathered = vec![0.0; 6];
            comm.all_gather(&[r, -r], &mut gathered)?;
            let mut b = if comm.rank() == 2 {
                vec![7.0]
            } else {
                vec![0.0]
            };
            comm.broadcast(&mut b, 2)?;
            comm.barrier()?;
            Ok::<_, CollectiveError>((sum, part, gathered, b, comm.traffic()))
        });
        for (rank, result) in results.into_iter().enumerate() {
            let (sum, part, gathered, b, traffic) = result.unwrap().unwrap();
            assert_eq!(sum, [3.0, 30.0]);
            let first = 2.0 * rank as f32;
            assert_eq!(part, [3.0 * first + 3.0, 3.0 * (first + 1.0) + 3.0]);
            assert_eq!(gathered, [0.0, -0.0, 1.0, -1.0, 2.0, -2.0]);
            assert_eq!(b, [7.0]);
            assert_eq!(traffic.total(), 4 + 6 + 6);
        }
    }

    #[test]
    fn a_failed_rank_ends_the_others_instead_of_leaving_them_waiting() {
        let started = Instant::now();
        let results = run(group(2, Duration::from_secs(60)), |comm| {
            if comm.rank() == 1 {
                return Err(CollectiveError::Engine("out of memory".into()));
            }
            comm.all_reduce_sum(&mut [1.0])
        });
        assert!(started.elapsed() < Duration::from_secs(10));
        let err = results.into_iter().next().unwrap().unwrap().unwrap_err();
        let text = err.to_string();
        assert!(
            matches!(err, CollectiveError::PeerLeft { peer: 1, .. })
                && text.contains("out of memory"),
            "{text}"
        );
    }

    #[test]
    fn a_stuck_rank_times_out_naming_the_collective_and_the_rank() {
        let results = run(group(2, Duration::from_millis(200)), |comm| {
            if comm.rank() == 1 {
                std::thread::sleep(Duration::from_secs(2));
                return Ok(());
            }
            comm.barrier()
        });
        let err = results.into_iter().next().unwrap().unwrap().unwrap_err();
        assert!(
            matches!(&err, CollectiveError::Timeout { op: "barrier", missing, .. } if missing == &[1]),
            "{err}"
        );
        assert!(err.to_string().contains("waiting for ranks [1]"), "{err}");
    }
}
