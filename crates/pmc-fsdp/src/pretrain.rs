//! A (continued) pretraining run assembled from its settings, in three steps a front end can
//! put a progress bar around: [`Pretraining::begin`] (the checkpoint resumed, or the base
//! model loaded: its tokenizer decides the data's tokens), [`Pretraining::source`] (papers
//! prepared into token shards once and reused, a prepared corpus, or text files), and
//! [`Pretraining::run`] (the training stream and held-out sequences, the trainer's config,
//! then a [`Job`]: one process or sharded).

use std::path::PathBuf;

use pmc_model::{LlamaConfig, LoadedModel, Precision, Tokenizer};
use pmc_train::run::{self, RunOptions, RunSummary};
use pmc_train::source::Source;
use pmc_train::{
    Checkpointer, CorpusShards, CosineSchedule, MixSource, MixSpec, Mixture, Sampling,
    TokenWindows, TrainConfig, TrainError, TrainingData,
};

use crate::job::{Job, Sharding, Start, choose_lanes, resume_point, with_extra};
use crate::launch::launcher_rank;

/// Everything a pretraining run is configured with (the `pretrain` command's options).
#[derive(Debug, Clone)]
pub struct Pretraining {
    /// The model continued from (HF directory, GGUF file, or a model name); `None`: a fresh
    /// model of `preset` with a tokenizer learnt on the corpus.
    pub base: Option<PathBuf>,
    /// Size of a fresh model (`tiny`, `small`, `7b`).
    pub preset: String,
    /// Vocabulary of the tokenizer learnt for a fresh model.
    pub vocab_size: usize,
    /// Papers, one prepared corpus directory, or text files.
    pub corpus: Vec<PathBuf>,
    /// A mixture instead of `corpus`: named sources (papers, a prepared corpus, a text file)
    /// drawn from with seeded weights; needs a base model, whose tokenizer reads them all.
    pub mix: Vec<MixSpec>,
    /// Held-out text files (with papers: used only when the corpus has no held-out split).
    pub valid: Vec<PathBuf>,
    /// With papers: the share of whole papers held out.
    pub valid_fraction: f64,
    /// With papers: where prepared corpora are kept and reused.
    pub corpus_cache: PathBuf,
    /// Optimizer steps in total.
    pub steps: usize,
    /// Tokens per sequence (`None`: 128, or a prepared corpus's packing length).
    pub seq_len: Option<usize>,
    /// Sequences per forward pass.
    pub micro_batch: usize,
    /// Sequences per optimizer step.
    pub global_batch: usize,
    /// Peak learning rate.
    pub lr: f64,
    /// Warmup steps.
    pub warmup: usize,
    /// Final learning rate as a fraction of the peak.
    pub min_lr_ratio: f64,
    /// Decoupled weight decay.
    pub weight_decay: f32,
    /// Global gradient-norm clip (0: none).
    pub max_grad_norm: f64,
    /// Seed of initialisation and data order.
    pub seed: u64,
    /// With a prepared corpus: every packed sequence, or one window per paper.
    pub sampling: Sampling,
    /// The run directory.
    pub out: PathBuf,
    /// Continue from this run directory or checkpoint.
    pub resume: Option<PathBuf>,
    /// Steps between loss lines.
    pub log_every: usize,
    /// Steps between held-out perplexities (0: before and after only).
    pub eval_every: usize,
    /// Steps between checkpoints.
    pub checkpoint_every: usize,
    /// Checkpoints kept.
    pub keep: usize,
    /// Held-out sequences in each perplexity evaluation.
    pub eval_sequences: usize,
    /// What the projections multiply in.
    pub precision: Precision,
    /// Micro-batches computed at once (`None`: chosen for the model and this machine).
    pub parallel_micro_batches: Option<usize>,
    /// Recompute activations in the backward pass instead of keeping them.
    pub gradient_checkpointing: bool,
    /// `None`: one process; otherwise sharded.
    pub sharding: Option<Sharding>,
}

/// The text a run trains on: one source, or a mixture of named ones.
pub enum TrainingText {
    /// Papers, a prepared corpus or text files.
    One(Source),
    /// Each source of the mixture with its spec.
    Mixture(Vec<(MixSpec, Source)>),
}

impl TrainingText {
    /// Every source.
    fn sources(&self) -> Vec<&Source> {
        match self {
            TrainingText::One(source) => vec![source],
            TrainingText::Mixture(parts) => parts.iter().map(|(_, s)| s).collect(),
        }
    }
}

/// What a run reads: the training stream, the held-out sequences, and each mixture
/// source's name and held-out sequences.
struct Streams {
    train: Box<dyn TrainingData>,
    held_out: Vec<Vec<u32>>,
    held_out_by_source: Vec<(String, Vec<Vec<u32>>)>,
}

/// What a run starts from, known before its data is prepared.
pub enum Beginning {
    /// A checkpoint and its tokenizer.
    Resumed(PathBuf, Tokenizer),
    /// The base model and its tokenizer.
    Base(Box<LoadedModel>, Tokenizer),
    /// A fresh model of the preset (its tokenizer comes from the corpus).
    Fresh,
}

/// The training stream and the held-out sequences of a run.
type Stream = (Box<dyn TrainingData>, Vec<Vec<u32>>);

/// A finished pretraining run (on the process that reports it).
#[derive(Debug)]
pub struct Pretrained {
    /// Perplexities before and after, steps, tokens, time.
    pub summary: RunSummary,
    /// Where its metrics, curves and checkpoints are.
    pub run_dir: PathBuf,
}

/// Prints on the first process of an MPI job only (every rank prepares the same data).
pub(crate) fn say(text: String) {
    if launcher_rank().unwrap_or(0) == 0 {
        eprintln!("{text}");
    }
}

impl Pretraining {
    /// Resolves `resume`, or refuses a used run directory and loads the base model.
    pub fn begin(&self) -> Result<Beginning, TrainError> {
        if let Some(path) = &self.resume {
            let (ckpt, tokenizer) = resume_point(path)?;
            say(format!("resuming {}", ckpt.display()));
            return Ok(Beginning::Resumed(ckpt, tokenizer));
        }
        // Before the corpus is prepared: a used run directory is refused at once.
        pmc_train::run_dir::check_unused(&self.out)?;
        let Some(base) = &self.base else {
            return Ok(Beginning::Fresh);
        };
        let device = pmc_train::autodiff_device(self.gradient_checkpointing);
        let loaded = pmc_model::load_model(base, &Default::default(), &device)?;
        let tokenizer = loaded.tokenizer.clone().ok_or_else(|| {
            TrainError::Config(format!("{} has no tokenizer", loaded.source.display()))
        })?;
        Ok(Beginning::Base(Box::new(loaded), tokenizer))
    }

    /// The training text: papers prepared (with `progress` called as they are) into token
    /// shards with the base model's tokenizer (also on resume, when `base` is given again)
    /// or a tokenizer learnt on them; a prepared corpus; or text files — or, with `mix`,
    /// each source of the mixture so.
    pub fn source(
        &self,
        beginning: &Beginning,
        mut progress: impl FnMut(pmc_corpus::Progress),
    ) -> Result<TrainingText, TrainError> {
        let tokenizer = match beginning {
            Beginning::Base(_, tokenizer) => Some(tokenizer),
            Beginning::Resumed(_, tokenizer) if self.base.is_some() => Some(tokenizer),
            _ => None,
        };
        if self.mix.is_empty() {
            let source = self.source_of(&self.corpus, &self.valid, tokenizer, &mut progress)?;
            return Ok(TrainingText::One(source));
        }
        pmc_train::mixture::check_specs(&self.mix)?;
        if tokenizer.is_none() {
            return Err(TrainError::Config(
                "a mixture continues a base model (--base, given again on --resume): its tokenizer reads every source".into(),
            ));
        }
        let mut parts = Vec::new();
        for spec in &self.mix {
            if !spec.path.exists() {
                return Err(TrainError::Config(format!(
                    "mixture source {:?}: {} does not exist",
                    spec.name,
                    spec.path.display()
                )));
            }
            let paths = std::slice::from_ref(&spec.path);
            parts.push((
                spec.clone(),
                self.source_of(paths, &[], tokenizer, &mut progress)?,
            ));
        }
        Ok(TrainingText::Mixture(parts))
    }

    /// One source: `corpus` prepared or read, with `valid` held out for text files.
    fn source_of(
        &self,
        corpus: &[PathBuf],
        valid: &[PathBuf],
        tokenizer: Option<&Tokenizer>,
        progress: impl FnMut(pmc_corpus::Progress),
    ) -> Result<Source, TrainError> {
        if !pmc_corpus::are_papers(corpus) {
            return Source::read(corpus, valid);
        }
        let how = pmc_train::source::PaperPreparation {
            seq_len: self.seq_len.unwrap_or(128),
            tokenizer,
            vocab_size: self.vocab_size,
            valid_fraction: self.valid_fraction,
            cache: &self.corpus_cache,
        };
        let source = Source::prepare_papers(corpus, &how, progress)?;
        if let Source::Shards { dir, manifest } = &source {
            say(format!(
                "papers: {} read, {} kept → {} training and {} held-out sequences (held-out papers), in {}",
                manifest.documents.input,
                manifest.documents.kept,
                manifest.sequences,
                manifest.valid_sequences,
                dir.display()
            ));
        }
        Ok(source)
    }

    /// Tokens per sequence of `source`: a prepared corpus's packing length (which a set
    /// `seq_len` must equal), else `seq_len` or 128.
    fn seq_len_of(&self, source: &Source) -> Result<usize, TrainError> {
        match source {
            Source::Shards { manifest, dir } => match self.seq_len {
                Some(n) if n != manifest.seq_len => Err(TrainError::Config(format!(
                    "{} is packed in {}-token sequences, not {n}: prepare it with that length or leave the length unset",
                    dir.display(),
                    manifest.seq_len
                ))),
                _ => Ok(manifest.seq_len),
            },
            Source::Text { .. } => Ok(self.seq_len.unwrap_or(128)),
        }
    }

    /// The run's start, tokenizer and trainer config for `source` from `beginning` (a fresh
    /// model's tokenizer is learnt here when the text brings none).
    pub fn prepare(
        &self,
        beginning: Beginning,
        source: TrainingText,
    ) -> Result<Prepared<'_>, TrainError> {
        let seq_len = match &source {
            TrainingText::One(source) => self.seq_len_of(source)?,
            TrainingText::Mixture(parts) => {
                let lengths = parts
                    .iter()
                    .map(|(_, source)| self.seq_len_of(source))
                    .collect::<Result<Vec<_>, _>>()?;
                if let Some(i) = lengths.iter().position(|&n| n != lengths[0]) {
                    return Err(TrainError::Config(format!(
                        "mixture sources {:?} and {:?} are packed in {}- and {}-token sequences",
                        parts[0].0.name, parts[i].0.name, lengths[0], lengths[i]
                    )));
                }
                lengths[0]
            }
        };
        let (start, tokenizer, train_config) = match beginning {
            Beginning::Resumed(ckpt, tokenizer) => {
                let config = pmc_train::checkpoint::SavedState::read(&ckpt)?.config;
                (Start::Resume(ckpt), tokenizer, config)
            }
            beginning => self.fresh_start(beginning, &source, seq_len)?,
        };
        Ok(Prepared {
            settings: self,
            source,
            seq_len,
            start,
            tokenizer,
            train_config,
        })
    }
}

/// A run ready to train: what [`Pretraining::prepare`] resolved.
pub struct Prepared<'a> {
    settings: &'a Pretraining,
    source: TrainingText,
    seq_len: usize,
    start: Start,
    tokenizer: Tokenizer,
    train_config: TrainConfig,
}

impl Prepared<'_> {
    /// The tokenizer the run's data and checkpoints use.
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// Trains, scoring `probes` at every evaluation. `record` goes into `run_config.json`
    /// beside the trainer's and the model's configs. `Ok(None)` on MPI ranks other than 0;
    /// a job relaunched under `mpiexec` exits with its code.
    pub fn run(
        self,
        probes: Vec<pmc_train::probe::Probe>,
        record: serde_json::Value,
    ) -> Result<Option<Pretrained>, TrainError> {
        let Prepared {
            settings,
            source,
            seq_len,
            start,
            tokenizer,
            train_config,
        } = self;
        let Streams {
            train,
            held_out,
            held_out_by_source,
        } = settings.training_stream(&source, &tokenizer, seq_len, train_config.seed)?;
        say(format!(
            "data: {} training sequences, {} held-out sequences of {seq_len} tokens; global batch {} sequences",
            train.sequences(),
            held_out.len(),
            train_config.global_batch
        ));
        let valid_paths = match &source {
            TrainingText::One(Source::Text { valid_paths, .. }) => valid_paths.clone(),
            TrainingText::One(Source::Shards { .. }) => settings.valid.clone(),
            TrainingText::Mixture(_) => Vec::new(),
        };
        let run_dir = start.run_dir(&settings.out)?;
        let options = RunOptions {
            steps: settings.steps,
            log_every: settings.log_every,
            eval_every: settings.eval_every,
            checkpoint_every: settings.checkpoint_every,
            max_eval_windows: settings.eval_sequences,
            probes,
            held_out_by_source,
        };
        let checkpointer = Checkpointer::new(&run_dir, settings.keep).with_tokenizer(tokenizer);
        let save_config = |config: &TrainConfig, model: &LlamaConfig| {
            let saved = serde_json::json!({"train": config, "model": model.to_json(),
                "corpus": settings.corpus, "valid": valid_paths,
                "mix": settings.mix.iter().map(|m| format!("{}={}:{}", m.name, m.path.display(), m.weight)).collect::<Vec<_>>(), "base": settings.base,
                "steps": settings.steps});
            run::save_run_config(&run_dir, &with_extra(saved, &record))
        };
        let job = Job {
            start,
            lora: None,
            train_config,
            sharding: settings.sharding,
            device: pmc_train::autodiff_device(settings.gradient_checkpointing),
            data: train.as_ref(),
            held_out: &held_out,
            options: &options,
            checkpointer: &checkpointer,
        };
        Ok(job
            .run(save_config)?
            .finished()
            .map(|(summary, _)| Pretrained { summary, run_dir }))
    }
}

impl Pretraining {
    /// A fresh run's start (the base model, or a seeded preset with the corpus's tokenizer or
    /// one learnt on the text), its tokenizer and the trainer's config.
    fn fresh_start(
        &self,
        beginning: Beginning,
        text: &TrainingText,
        seq_len: usize,
    ) -> Result<(Start, Tokenizer, TrainConfig), TrainError> {
        let mut config = TrainConfig {
            schedule: CosineSchedule {
                peak_lr: self.lr,
                warmup_steps: self.warmup,
                total_steps: self.steps,
                min_lr_ratio: self.min_lr_ratio,
            },
            weight_decay: self.weight_decay,
            max_grad_norm: (self.max_grad_norm > 0.0).then_some(self.max_grad_norm),
            micro_batch: self.micro_batch,
            global_batch: self.global_batch,
            seed: self.seed,
            precision: self.precision,
            ..run::default_train_config(seq_len)
        };
        let seeded = |model_config: &LlamaConfig| Start::Seeded {
            model_config: model_config.clone(),
            seed: self.seed,
        };
        let one = match text {
            TrainingText::One(source) => Some(source),
            TrainingText::Mixture(_) => None,
        };
        let (start, model_config, tokenizer) = match (beginning, one) {
            (Beginning::Base(loaded, tokenizer), _) => {
                for source in text.sources() {
                    if let Source::Shards { dir, manifest } = source {
                        pmc_train::source::check_same_tokenizer(
                            &tokenizer,
                            &pmc_train::source::corpus_tokenizer(dir, manifest)?,
                            dir,
                        )?;
                    }
                }
                let model_config = loaded.config.clone();
                let start = Start::Fresh {
                    model: loaded.model,
                    model_config: loaded.config,
                };
                (start, model_config, tokenizer)
            }
            (_, None) => {
                return Err(TrainError::Config(
                    "a mixture continues a base model (--base)".into(),
                ));
            }
            (_, Some(Source::Shards { dir, manifest })) => {
                let tokenizer = pmc_train::source::corpus_tokenizer(dir, manifest)?;
                let config = LlamaConfig::preset(&self.preset, manifest.vocab_size)?;
                (seeded(&config), config, tokenizer)
            }
            (_, Some(Source::Text { docs, .. })) => {
                say(format!(
                    "training a {}-token BPE tokenizer on {} documents",
                    self.vocab_size,
                    docs.len()
                ));
                let tokenizer = run::train_bpe(docs, self.vocab_size)?;
                let vocab = tokenizer.inner().get_vocab_size(true);
                let config = LlamaConfig::preset(&self.preset, vocab)?;
                (seeded(&config), config, tokenizer)
            }
        };
        say(format!(
            "model: {} — {:.2} M parameters, {} layers, hidden {}",
            self.base
                .as_ref()
                .map_or(format!("fresh `{}`", self.preset), |b| b
                    .display()
                    .to_string()),
            model_config.num_parameters() as f64 / 1e6,
            model_config.num_hidden_layers,
            model_config.hidden_size
        ));
        choose_lanes(
            self.sharding,
            self.parallel_micro_batches,
            &model_config,
            &mut config,
        );
        Ok((start, tokenizer, config))
    }

    /// The training stream (one source's, or the mixture of all), the held-out sequences
    /// (a mixture's first source's) and, for a mixture, each source's held-out sequences.
    fn training_stream(
        &self,
        text: &TrainingText,
        tokenizer: &Tokenizer,
        seq_len: usize,
        seed: u64,
    ) -> Result<Streams, TrainError> {
        let parts = match text {
            TrainingText::One(source) => {
                let (train, held_out) = self.stream(source, tokenizer, seq_len, seed)?;
                return Ok(Streams {
                    train,
                    held_out,
                    held_out_by_source: Vec::new(),
                });
            }
            TrainingText::Mixture(parts) => parts,
        };
        let mut sources = Vec::new();
        let mut by_source = Vec::new();
        for (spec, source) in parts {
            let (data, held_out) = self.stream(source, tokenizer, seq_len, seed)?;
            say(format!(
                "mixture source {}: weight {}, {} training and {} held-out sequences",
                spec.name,
                spec.weight,
                data.sequences(),
                held_out.len()
            ));
            sources.push(MixSource {
                name: spec.name.clone(),
                weight: spec.weight,
                data,
            });
            by_source.push((spec.name.clone(), held_out));
        }
        let mixture = Mixture::new(sources, seed)?;
        Ok(Streams {
            train: Box::new(mixture),
            held_out: by_source[0].1.clone(),
            held_out_by_source: by_source,
        })
    }

    /// The training stream and the held-out sequences. (The trainer refuses a stream other
    /// than its checkpoint's on resume.)
    fn stream(
        &self,
        source: &Source,
        tokenizer: &Tokenizer,
        seq_len: usize,
        seed: u64,
    ) -> Result<Stream, TrainError> {
        let (train, held_out): Stream = match source {
            Source::Text {
                docs, valid_docs, ..
            } => {
                let train = TokenWindows::new(&run::tokenize(tokenizer, docs)?, seq_len, seed);
                let valid = TokenWindows::new(&run::tokenize(tokenizer, valid_docs)?, seq_len, 0);
                (Box::new(train), valid.windows().to_vec())
            }
            Source::Shards { dir, .. } => {
                let train = CorpusShards::open_with(dir, seed, self.sampling)?;
                let mut held_out = CorpusShards::held_out(dir, self.eval_sequences)?;
                if held_out.is_empty() && !self.valid.is_empty() {
                    let valid_docs = run::read_documents(&self.valid)?;
                    held_out =
                        TokenWindows::new(&run::tokenize(tokenizer, &valid_docs)?, seq_len, 0)
                            .windows()
                            .to_vec();
                }
                if held_out.is_empty() {
                    return Err(TrainError::Config(format!(
                        "{} has no validation split: prepare it with a held-out fraction, or give held-out text files",
                        dir.display()
                    )));
                }
                (Box::new(train), held_out)
            }
        };
        if train.sequences() == 0 || held_out.is_empty() {
            return Err(TrainError::Config(format!(
                "not enough text for one {seq_len}-token window in the training or held-out split"
            )));
        }
        Ok((train, held_out))
    }
}
