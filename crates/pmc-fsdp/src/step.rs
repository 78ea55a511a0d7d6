//! One optimizer step of a rank: pmc-train's step loop ([`take_step`]) over this rank's
//! [`Strategy`] — how the ranks compute, reduce and apply gradients at each ZeRO level — and
//! the rest of the [`TrainStep`] seam (saving, evaluation, agreement between ranks).

use std::path::Path;

use burn::module::Module;
use pmc_model::ScoreRequest;
use pmc_train::data::Batch;
use pmc_train::{
    StepStats, Strategy, TrainConfig, TrainError, TrainState, TrainStep, TrainingData, take_step,
};

use crate::flat;
use crate::trainer::{FsdpTrainer, ShardLevel, comm_err};

/// The ranks: each computes its micro-batches (whole model at levels 0–2, unit by unit at
/// level 3), gradients all-reduced (level 0) or reduce-scattered (levels 1–3), AdamW on the
/// moments and parameters each rank owns, the new parameters gathered where the level keeps
/// them whole.
impl Strategy for FsdpTrainer<'_> {
    /// Whole unit buffers at level 0, this rank's shard of each unit above.
    type Grads = Vec<Vec<f32>>;

    fn rank_and_world(&self) -> (usize, usize) {
        (self.comm.rank(), self.comm.world_size())
    }

    fn gradients(
        &mut self,
        batches: Vec<Batch>,
        _first: usize,
        _step: usize,
    ) -> Result<(f64, Vec<Vec<f32>>), TrainError> {
        self.reduced_gradients(batches)
    }

    fn all_reduce_f64(&self, values: &mut [f64]) -> Result<(), TrainError> {
        self.comm.all_reduce_sum_f64(values).map_err(comm_err)
    }

    /// Each rank's own part: at level 0, where every rank holds the whole sum, its shard
    /// range of it.
    fn squared_norm(&self, grads: &Vec<Vec<f32>>) -> f64 {
        let (rank, world) = (self.comm.rank(), self.comm.world_size());
        grads
            .iter()
            .enumerate()
            .map(|(u, g)| {
                let range = match self.level {
                    ShardLevel::DataParallel => self.layout.units[u].shard_range(rank, world),
                    _ => 0..g.len(),
                };
                g[range]
                    .iter()
                    .map(|&x| f64::from(x) * f64::from(x))
                    .sum::<f64>()
            })
            .sum()
    }

    fn scale(&self, grads: &mut Vec<Vec<f32>>, factor: f64) {
        let factor = factor as f32;
        grads.iter_mut().flatten().for_each(|g| *g *= factor);
    }

    fn update(&mut self, grads: Vec<Vec<f32>>, lr: f64, time: usize) -> Result<(), TrainError> {
        let (rank, world) = (self.comm.rank(), self.comm.world_size());
        let time = time as i32;
        match &self.model {
            // Levels 0–2: update the whole model's buffers (level 0) or this rank's shard of
            // them, whose new values every rank then gathers (levels 1–2); the new values go
            // into the model's own parameters.
            Some(model) => {
                let mut flats = flat::model_flats(model, &self.layout, world);
                for (u, unit) in self.layout.units.iter().enumerate() {
                    let (g, m) = (&grads[u], &mut self.moments[u]);
                    if self.level == ShardLevel::DataParallel {
                        self.adam.step(lr, time, &mut flats[u], g, m);
                    } else {
                        let mut shard = flats[u][unit.shard_range(rank, world)].to_vec();
                        self.adam.step(lr, time, &mut shard, g, m);
                        self.comm
                            .all_gather(&shard, &mut flats[u])
                            .map_err(comm_err)?;
                    }
                }
                let values = flat::param_values(model, &self.layout, &flats);
                self.model = Some(pmc_train::trainer::with_values(model.clone(), values));
            }
            // Level 3: the shards are all there is.
            None => {
                for ((p, g), m) in self.shards.iter_mut().zip(&grads).zip(&mut self.moments) {
                    self.adam.step(lr, time, p, g, m);
                }
            }
        }
        Ok(())
    }
}

impl TrainStep for FsdpTrainer<'_> {
    /// One optimizer step over the next global batch ([`take_step`]).
    fn step(&mut self, data: &dyn TrainingData) -> Result<StepStats, TrainError> {
        self.data.check(data)?;
        let (config, device) = (self.config.clone(), self.device.clone());
        let mut state = self.state.clone();
        let stats = take_step(self, &config, &mut state, data, &device)?;
        self.state = state;
        Ok(stats)
    }

    fn check_data(&mut self, data: &dyn TrainingData) -> Result<(), TrainError> {
        self.data.check(data)
    }

    fn state(&self) -> &TrainState {
        &self.state
    }

    fn config(&self) -> &TrainConfig {
        &self.config
    }

    fn save(&self, dir: &Path) -> Result<(), TrainError> {
        crate::checkpoint::save(self, self.data.record(), dir)
    }

    /// Each rank scores its share of the windows (every `world`-th); the sums are
    /// all-reduced.
    fn eval_loss(&self, windows: &[Vec<u32>]) -> Result<f64, TrainError> {
        let (rank, world) = (self.comm.rank(), self.comm.world_size());
        let mine: Vec<&Vec<u32>> = windows.iter().skip(rank).step_by(world).collect();
        let sum = match &self.model {
            Some(model) => {
                let model = model.valid();
                let inner = self.device.clone().inner();
                let mut sum = 0.0;
                for w in &mine {
                    sum += pmc_model::mean_nll(&model, w, w.len(), &inner)?;
                }
                sum
            }
            None => self.unit_wise_nll_sum(&mine)?,
        };
        let mut total = [sum];
        self.all_reduce_f64(&mut total)?;
        Ok(total[0] / windows.len().max(1) as f64)
    }

    /// Each rank scores its share of the requests (every `world`-th); the values are
    /// gathered on all by a sum over zeros elsewhere.
    fn continuation_logliks(&self, requests: &[ScoreRequest]) -> Result<Vec<f64>, TrainError> {
        let (rank, world) = (self.comm.rank(), self.comm.world_size());
        let mine: Vec<&ScoreRequest> = requests.iter().skip(rank).step_by(world).collect();
        let scores = match &self.model {
            Some(model) => {
                let mine: Vec<ScoreRequest> = mine.into_iter().cloned().collect();
                pmc_model::request_logliks(&model.valid(), &mine, &self.device.clone().inner())?
            }
            None => self.unit_wise_logliks(&mine)?,
        };
        let mut all = vec![0.0; requests.len()];
        for (i, score) in scores.into_iter().enumerate() {
            all[rank + i * world] = score;
        }
        self.all_reduce_f64(&mut all)?;
        Ok(all)
    }

    fn rank(&self) -> usize {
        self.comm.rank()
    }

    fn world_size(&self) -> usize {
        self.comm.world_size()
    }

    fn barrier(&self) -> Result<(), TrainError> {
        self.comm.barrier().map_err(comm_err)
    }

    fn any(&self, flag: bool) -> Result<bool, TrainError> {
        let mut votes = [f64::from(u8::from(flag))];
        self.all_reduce_f64(&mut votes)?;
        Ok(votes[0] > 0.0)
    }
}
