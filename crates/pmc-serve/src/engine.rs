//! The decoding engine: one thread owns the model and advances every running request
//! together (continuous batching, as llama.cpp's server slots and vLLM do).
//!
//! Each step it admits waiting requests up to `max_batch` (a new request's prompt is run
//! alone, filling its own KV cache), then runs one decoding step for all running sequences at
//! once with [`pmc_model::Llama::decode_rows`]: the weights are read once per step whatever
//! the number of sequences, which is what makes throughput grow with concurrency on a CPU.
//! A request whose client has gone (its event receiver dropped) is dropped before the next
//! step; when the job channel closes, the running requests finish and the thread ends.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError};

use pmc_model::burn::prelude::*;
use pmc_model::generate::{argmax, sample};
use pmc_model::{KvCache, Llama, Tokenizer};
use rand::SeedableRng;
use rand::rngs::StdRng;
use tokio::sync::mpsc::UnboundedSender;

use crate::api::Usage;
use crate::error::ApiError;
use crate::text::{StopScanner, logprobs};

/// What a client asked to be generated, checked and tokenized.
#[derive(Debug, Clone)]
pub struct Request {
    pub prompt: Vec<u32>,
    /// New tokens at most (0: only the prompt is scored).
    pub max_tokens: usize,
    /// 0 is greedy.
    pub temperature: f64,
    pub top_p: f64,
    pub seed: u64,
    /// Token ids that end the reply (EOS, the template's end of turn); not part of the text.
    pub stop_ids: Vec<u32>,
    /// Strings that end the reply; not part of the text.
    pub stop_texts: Vec<String>,
    /// Log-probabilities of the prompt's tokens with this many alternatives each.
    pub prompt_logprobs: Option<usize>,
    /// Log-probabilities of the generated tokens with this many alternatives each.
    pub logprobs: Option<usize>,
}

/// A token with its log-probability and the most probable alternatives at its position.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenLogprob {
    pub id: u32,
    pub logprob: f64,
    pub top: Vec<(u32, f64)>,
}

/// Why generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finish {
    /// An end-of-turn token or a stop string.
    Stop,
    /// `max_tokens` or the context length.
    Length,
}

impl Finish {
    pub fn as_str(self) -> &'static str {
        match self {
            Finish::Stop => "stop",
            Finish::Length => "length",
        }
    }
}

/// What the engine sends back for one request, in this order: `Prompt` (when asked for),
/// any number of `Text`, then `Done` or `Failed`.
#[derive(Debug, Clone)]
pub enum Event {
    /// Log-probabilities of prompt tokens 1.. (the first has no context).
    Prompt(Vec<TokenLogprob>),
    /// New text, and the generated tokens it came from (with log-probabilities when asked).
    Text {
        text: String,
        tokens: Vec<TokenLogprob>,
    },
    Done {
        finish: Finish,
        usage: Usage,
    },
    Failed(ApiError),
}

/// A request on its way to the engine; dropping it frees its place in the queue.
struct Job {
    request: Request,
    events: UnboundedSender<Event>,
    _place: Place,
}

/// One of the engine's places (running or waiting), given back when dropped.
struct Place(Arc<AtomicUsize>);

impl Drop for Place {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Limits of the engine.
#[derive(Debug, Clone, Copy)]
pub struct EngineLimits {
    /// Sequences decoded together.
    pub max_batch: usize,
    /// Requests waiting beyond those; more are refused (503).
    pub max_waiting: usize,
    /// Positions a sequence may reach (prompt and reply).
    pub max_context: usize,
}

/// A handle to submit requests to the engine thread; cheap to clone.
#[derive(Clone)]
pub struct Engine {
    jobs: SyncSender<Job>,
    places: Arc<AtomicUsize>,
    limits: EngineLimits,
}

impl Engine {
    /// Starts the engine thread with `model` on `device`. The thread ends once every
    /// [`Engine`] handle is dropped and the running requests have finished; join the returned
    /// handle to wait for that.
    pub fn start(
        model: Llama,
        tokenizer: Tokenizer,
        device: Device,
        limits: EngineLimits,
    ) -> (Engine, std::thread::JoinHandle<()>) {
        let capacity = limits.max_batch + limits.max_waiting;
        let (jobs, receiver) = std::sync::mpsc::sync_channel(capacity.max(1));
        let thread = std::thread::Builder::new()
            .name("pmc-serve-engine".into())
            .spawn(move || Worker::new(&model, &tokenizer, &device, limits).run(receiver))
            .expect("spawning the engine thread");
        let engine = Engine {
            jobs,
            places: Arc::new(AtomicUsize::new(0)),
            limits,
        };
        (engine, thread)
    }

    pub fn limits(&self) -> EngineLimits {
        self.limits
    }

    /// Requests running or waiting now.
    pub fn load(&self) -> usize {
        self.places.load(Ordering::SeqCst)
    }

    /// Queues `request`; its events arrive on the returned receiver. Refused with a 503 when
    /// every running and waiting place is taken.
    pub fn submit(
        &self,
        request: Request,
    ) -> Result<tokio::sync::mpsc::UnboundedReceiver<Event>, ApiError> {
        let capacity = self.limits.max_batch + self.limits.max_waiting;
        let taken = self.places.fetch_add(1, Ordering::SeqCst);
        let place = Place(self.places.clone());
        if taken >= capacity {
            return Err(ApiError::busy(format!(
                "all {} places are taken ({} decoding, {} waiting); retry later",
                capacity, self.limits.max_batch, self.limits.max_waiting
            )));
        }
        let (events, receiver) = tokio::sync::mpsc::unbounded_channel();
        let job = Job {
            request,
            events,
            _place: place,
        };
        self.jobs
            .try_send(job)
            .map_err(|_| ApiError::busy("the engine is not accepting requests"))?;
        Ok(receiver)
    }
}

/// A request being decoded.
struct Sequence<'t> {
    job: Job,
    cache: KvCache,
    rng: StdRng,
    /// The last generated token: the next step's input.
    last: u32,
    generated: usize,
    text: pmc_model::tokenizer::TokenStream<'t>,
    stops: StopScanner,
    finished: bool,
}

struct Worker<'m> {
    model: &'m Llama,
    tokenizer: &'m Tokenizer,
    device: &'m Device,
    limits: EngineLimits,
}

/// Logits rows of the prompt read back at a time when its log-probabilities are asked for
/// (a row is vocabulary-sized: 49,152 floats for SmolLM2).
const PROMPT_ROWS_AT_ONCE: usize = 64;

impl<'m> Worker<'m> {
    fn new(
        model: &'m Llama,
        tokenizer: &'m Tokenizer,
        device: &'m Device,
        limits: EngineLimits,
    ) -> Self {
        Self {
            model,
            tokenizer,
            device,
            limits,
        }
    }

    fn run(&self, jobs: Receiver<Job>) {
        let mut running: Vec<Sequence<'m>> = Vec::new();
        let mut open = true;
        loop {
            if running.is_empty() {
                if !open {
                    break;
                }
                match jobs.recv() {
                    Ok(job) => self.admit(job, &mut running),
                    Err(_) => break,
                }
            }
            while open && running.len() < self.limits.max_batch {
                match jobs.try_recv() {
                    Ok(job) => self.admit(job, &mut running),
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => open = false,
                }
            }
            // A client that went away stops its generation.
            running.retain(|s| !s.finished && !s.job.events.is_closed());
            if running.is_empty() {
                continue;
            }
            if let Err(error) = self.step(&mut running) {
                for sequence in &mut running {
                    let _ = sequence.job.events.send(Event::Failed(error.clone()));
                }
                running.clear();
            }
            running.retain(|s| !s.finished);
        }
    }

    /// Runs `job`'s prompt and chooses its first token; the sequence joins `running` unless
    /// it is already finished.
    fn admit(&self, job: Job, running: &mut Vec<Sequence<'m>>) {
        if job.events.is_closed() {
            return;
        }
        let mut sequence = Sequence {
            cache: self.model.new_cache(),
            rng: StdRng::seed_from_u64(job.request.seed),
            last: 0,
            generated: 0,
            text: self.tokenizer.stream(),
            stops: StopScanner::new(job.request.stop_texts.clone()),
            finished: false,
            job,
        };
        match self.prefill(&mut sequence) {
            Ok(()) if sequence.finished => {}
            Ok(()) => running.push(sequence),
            Err(error) => {
                let _ = sequence.job.events.send(Event::Failed(error));
            }
        }
    }

    fn prefill(&self, sequence: &mut Sequence<'m>) -> Result<(), ApiError> {
        let request = &sequence.job.request;
        let prompt = request.prompt.clone();
        let ids: Vec<i64> = prompt.iter().map(|&t| i64::from(t)).collect();
        let n = ids.len();
        let tokens = Tensor::<2, Int>::from_data(TensorData::new(ids, [1, n]), self.device);
        let model = self.model;
        let cache = &mut sequence.cache;
        let hidden = pmc_model::pool::on_awake_pool(|| model.forward_hidden(tokens, Some(cache)));
        let hidden_size = hidden.dims()[2];
        let rows = |range: std::ops::Range<usize>| -> Result<Vec<f32>, ApiError> {
            let logits = pmc_model::pool::on_awake_pool(|| {
                model.logits(hidden.clone().slice([0..1, range, 0..hidden_size]))
            });
            read_back(logits.into_data())
        };
        let vocab = model.vocab_size();
        if let Some(top) = request.prompt_logprobs {
            let mut entries = Vec::with_capacity(n.saturating_sub(1));
            for start in (0..n.saturating_sub(1)).step_by(PROMPT_ROWS_AT_ONCE) {
                let end = (start + PROMPT_ROWS_AT_ONCE).min(n - 1);
                let logits = rows(start..end)?;
                for (offset, row) in logits.chunks_exact(vocab).enumerate() {
                    let id = prompt[start + offset + 1];
                    let (logprob, top) = logprobs(row, id, top);
                    entries.push(TokenLogprob { id, logprob, top });
                }
            }
            let _ = sequence.job.events.send(Event::Prompt(entries));
        }
        if request.max_tokens == 0 {
            return self.finish(sequence, Finish::Length);
        }
        let last = rows(n - 1..n)?;
        self.accept(sequence, &last)
    }

    /// One decoding step for every running sequence.
    fn step(&self, running: &mut [Sequence<'m>]) -> Result<(), ApiError> {
        let tokens: Vec<u32> = running.iter().map(|s| s.last).collect();
        let mut caches: Vec<KvCache> = running
            .iter_mut()
            .map(|s| std::mem::replace(&mut s.cache, KvCache::new(0)))
            .collect();
        let model = self.model;
        let device = self.device;
        let logits = pmc_model::pool::on_awake_pool(|| {
            model.decode_rows(&tokens, &mut caches, device).into_data()
        });
        for (sequence, cache) in running.iter_mut().zip(caches) {
            sequence.cache = cache;
        }
        let logits = read_back(logits)?;
        let vocab = model.vocab_size();
        for (sequence, row) in running.iter_mut().zip(logits.chunks_exact(vocab)) {
            self.accept(sequence, row)?;
        }
        Ok(())
    }

    /// Chooses the next token from `row`, sends the text it completes, and decides whether
    /// the sequence is finished.
    fn accept(&self, sequence: &mut Sequence<'m>, row: &[f32]) -> Result<(), ApiError> {
        let request = &sequence.job.request;
        let id = if request.temperature == 0.0 {
            argmax(row)
        } else {
            sample(row, request.temperature, request.top_p, &mut sequence.rng)
        };
        let scored = request.logprobs.map(|top| {
            let (logprob, top) = logprobs(row, id, top);
            TokenLogprob { id, logprob, top }
        });
        let tokens: Vec<TokenLogprob> = scored.into_iter().collect();
        sequence.generated += 1;
        sequence.last = id;
        if request.stop_ids.contains(&id) {
            let text = sequence.stops.flush();
            let _ = sequence.job.events.send(Event::Text { text, tokens });
            return self.finish(sequence, Finish::Stop);
        }
        let piece = sequence.text.push(id)?;
        let (text, stopped) = sequence.stops.push(&piece);
        if !text.is_empty() || !tokens.is_empty() {
            let _ = sequence.job.events.send(Event::Text { text, tokens });
        }
        if stopped {
            return self.finish(sequence, Finish::Stop);
        }
        let full = sequence.cache.len() + 1 >= self.limits.max_context;
        if sequence.generated >= request.max_tokens || full {
            let text = sequence.stops.flush();
            if !text.is_empty() {
                let tokens = Vec::new();
                let _ = sequence.job.events.send(Event::Text { text, tokens });
            }
            return self.finish(sequence, Finish::Length);
        }
        Ok(())
    }

    fn finish(&self, sequence: &mut Sequence<'m>, finish: Finish) -> Result<(), ApiError> {
        sequence.finished = true;
        let usage = Usage::new(sequence.job.request.prompt.len(), sequence.generated);
        let _ = sequence.job.events.send(Event::Done { finish, usage });
        Ok(())
    }
}

fn read_back(data: TensorData) -> Result<Vec<f32>, ApiError> {
    data.try_into_vec_as::<f32>()
        .map_err(|e| ApiError::internal(format!("reading logits back: {e:?}")))
}
