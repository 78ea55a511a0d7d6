//! `prepare-corpus`: papers → cleaned text and packed token shards.

use std::path::PathBuf;

use anyhow::{Result, bail};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use pmc_corpus::{
    Citations, License, Manifest, PrepareConfig, Preset, Progress, Stage, TokenizerSource, prepare,
};

#[derive(Args, Debug)]
pub struct PrepareCorpusArgs {
    /// JATS files (.xml/.nxml), S2ORC .json/.jsonl(.gz), plain {"id","text"} .jsonl, .tar.gz
    /// bundles, or directories holding them.
    #[arg(long, required = true, num_args = 1..)]
    pub input: Vec<PathBuf>,
    /// Output directory (must not hold a prepared corpus yet).
    #[arg(long)]
    pub out: PathBuf,
    /// A tokenizer.json to tokenize with.
    #[arg(long, conflicts_with = "vocab_size")]
    pub tokenizer: Option<PathBuf>,
    /// Train a byte-level BPE of this many tokens on the cleaned corpus instead.
    #[arg(long)]
    pub vocab_size: Option<usize>,
    /// The end-of-text token joining documents (default: the tokenizer's `</s>`,
    /// `<|endoftext|>`, ...).
    #[arg(long)]
    pub eos_token: Option<String>,
    #[arg(long, default_value_t = 512)]
    pub seq_len: usize,
    /// Cleaning preset: pmc-llama | meditron | plain.
    #[arg(long, default_value = "pmc-llama")]
    pub preset: String,
    /// Keep only these licences (comma-separated: cc0, cc-by, cc-by-nc, ..., other, unknown).
    #[arg(long, value_delimiter = ',')]
    pub licenses: Vec<String>,
    /// Keep figure and table captions.
    #[arg(long)]
    pub captions: Option<bool>,
    /// Citations: marker (the preset's or [BIB_REF]) | remove | keep.
    #[arg(long)]
    pub citations: Option<String>,
    /// Markdown headings for title and sections.
    #[arg(long)]
    pub headings: Option<bool>,
    #[arg(long)]
    pub min_chars: Option<usize>,
    #[arg(long)]
    pub max_chars: Option<usize>,
    /// Near-duplicate Jaccard threshold (0 disables near-duplicate removal).
    #[arg(long)]
    pub near_dup: Option<f64>,
    /// Exact-duplicate removal (same PMCID or same folded text).
    #[arg(long)]
    pub exact_dedup: Option<bool>,
    /// Share of documents held out as the validation split.
    #[arg(long, default_value_t = 0.0)]
    pub valid_fraction: f64,
    /// Sequences per token shard.
    #[arg(long, default_value_t = 16_384)]
    pub shard_sequences: usize,
    /// Worker threads (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// No progress bar (for logs).
    #[arg(long)]
    pub quiet: bool,
}

/// Turn the command line into the library's configuration.
pub fn config_from_args(args: &PrepareCorpusArgs) -> Result<PrepareConfig> {
    let Some(preset) = Preset::parse(&args.preset) else {
        bail!(
            "unknown preset {:?}; expected one of {:?}",
            args.preset,
            Preset::NAMES
        );
    };
    let mut clean = preset.options();
    if let Some(v) = args.captions {
        clean.captions = v;
    }
    if let Some(v) = args.headings {
        clean.headings = v;
    }
    if let Some(v) = args.min_chars {
        clean.min_chars = v;
    }
    if let Some(v) = args.max_chars {
        clean.max_chars = v;
    }
    if let Some(v) = args.exact_dedup {
        clean.exact_dedup = v;
    }
    if let Some(t) = args.near_dup {
        if !(0.0..=1.0).contains(&t) {
            bail!("--near-dup must be a Jaccard threshold in [0, 1], got {t}");
        }
        clean.near_dup_threshold = (t > 0.0).then_some(t);
    }
    if let Some(c) = &args.citations {
        clean.citations = match c.as_str() {
            "marker" => match clean.citations {
                Citations::Marker(m) => Citations::Marker(m),
                _ => Citations::Marker("[BIB_REF]".into()),
            },
            "remove" => Citations::Remove,
            "keep" => Citations::Keep,
            other => bail!("--citations must be marker, remove or keep, got {other:?}"),
        };
    }
    for name in &args.licenses {
        match License::parse(name) {
            Some(l) => clean.licenses.push(l),
            None => bail!(
                "unknown licence {name:?}; expected one of {:?}",
                License::NAMES
            ),
        }
    }
    let tokenizer = match (&args.tokenizer, args.vocab_size) {
        (Some(path), None) => TokenizerSource::File(path.clone()),
        (None, Some(vocab_size)) => TokenizerSource::Train { vocab_size },
        _ => bail!("give --tokenizer FILE or --vocab-size N"),
    };
    let mut config = PrepareConfig::new(args.input.clone(), args.out.clone(), tokenizer, clean);
    config.preset = preset.name().into();
    config.eos_token = args.eos_token.clone();
    config.seq_len = args.seq_len;
    config.valid_fraction = args.valid_fraction;
    config.shard_sequences = args.shard_sequences;
    Ok(config)
}

pub fn prepare_corpus(args: PrepareCorpusArgs) -> Result<()> {
    let config = config_from_args(&args)?;
    if let Some(threads) = args.threads {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build_global()?;
    }
    let manifest = if args.quiet {
        prepare(&config, |_| {})?
    } else {
        with_progress_bar(&config.inputs, |progress| prepare(&config, progress))?
    };
    print_summary(&manifest);
    Ok(())
}

/// Runs `work` (a corpus preparation of `inputs`) with a progress bar over the input bytes
/// that shows the stage and the documents and sequences so far.
pub fn with_progress_bar<T, E>(
    inputs: &[PathBuf],
    work: impl FnOnce(&mut dyn FnMut(Progress)) -> Result<T, E>,
) -> Result<T>
where
    anyhow::Error: From<E>,
{
    let total = pmc_corpus::input::total_bytes(&pmc_corpus::input::list_files(inputs)?);
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} {msg:40} [{bar:30}] {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec} ETA {eta}",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    let result = work(&mut |p: Progress| {
        bar.set_position(p.input_bytes);
        let stage = match p.stage {
            Stage::Cleaning => "cleaning",
            Stage::TrainingTokenizer => "training tokenizer",
            Stage::Tokenizing => "tokenizing",
        };
        bar.set_message(format!(
            "{stage}: {} docs, {} kept, {} seqs",
            p.documents, p.kept, p.sequences
        ));
    });
    bar.finish_and_clear();
    Ok(result?)
}

fn print_summary(m: &Manifest) {
    let mb = m.input_bytes as f64 / 1e6;
    println!(
        "prepared {} in {:.1} s ({:.1} MB/s of input)",
        m.config.out.display(),
        m.elapsed_s,
        mb / m.elapsed_s.max(1e-9)
    );
    println!();
    println!("| | count |");
    println!("|---|---:|");
    println!("| input files | {} |", m.input_files);
    println!("| records read | {} |", m.documents.input);
    for (reason, n) in &m.documents.dropped {
        println!("| dropped: {reason} | {n} |");
    }
    println!("| documents kept | {} |", m.documents.kept);
    println!("| unsupported files | {} |", m.documents.unsupported_files);
    println!("| tokens (with EOS) | {} |", m.tokens);
    println!("| sequences × {} (train) | {} |", m.seq_len, m.sequences);
    if m.valid_sequences > 0 || !m.valid_shards.is_empty() {
        println!(
            "| sequences × {} (valid) | {} |",
            m.seq_len, m.valid_sequences
        );
    }
    println!("| tail tokens not packed | {} |", m.tail_tokens);
    println!(
        "| token shards | {} |",
        m.token_shards.len() + m.valid_shards.len()
    );
    println!("| text shards | {} |", m.text_shards.len());
    println!();
    println!(
        "tokenizer: {} ({} tokens, EOS {:?} = {})",
        m.tokenizer_file, m.vocab_size, m.eos_token, m.eos_id
    );
    pmc_perf::rss::print_peak_rss();
    println!(
        "every dropped record is listed with its reason in {}",
        m.config.out.join("dropped.jsonl").display()
    );
}
