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
    crate::bench::print_peak_rss();
    println!(
        "every dropped record is listed with its reason in {}",
        m.config.out.join("dropped.jsonl").display()
    );
}

#[derive(Args, Debug)]
pub struct BenchCorpusArgs {
    /// JATS papers to prepare (default: ../shared/data/pmc-jats).
    #[arg(long)]
    pub input: Option<PathBuf>,
    /// Tokenizer for both pipelines (default: the shared LLaMA-2 tokenizer.json).
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    /// How many times the input is replicated for the memory figure.
    #[arg(long, default_value_t = 10)]
    pub replicate: usize,
    /// Timed repetitions of each pipeline (the best is reported).
    #[arg(long, default_value_t = 3)]
    pub repeat: usize,
}

/// Run this program's own `prepare-corpus` as a child process; wall seconds and the summary.
fn run_prepare_child(
    input: &std::path::Path,
    out: &std::path::Path,
    tokenizer: &std::path::Path,
    extra: &[&str],
) -> Result<(f64, String)> {
    let _ = std::fs::remove_dir_all(out);
    let started = std::time::Instant::now();
    let output = std::process::Command::new(std::env::current_exe()?)
        .args(["prepare-corpus", "--quiet", "--input"])
        .arg(input)
        .arg("--out")
        .arg(out)
        .arg("--tokenizer")
        .arg(tokenizer)
        .args(extra)
        .output()?;
    let seconds = started.elapsed().as_secs_f64();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    if !output.status.success() {
        bail!(
            "prepare-corpus failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok((seconds, stdout))
}

/// `bench-corpus`: end-to-end MB/s against the Python reference pipeline, tokenization
/// against raw `encode_batch`, and peak RSS with the input replicated.
pub fn bench_corpus(args: BenchCorpusArgs) -> Result<()> {
    use rayon::prelude::*;
    let shared = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data");
    let input = args.input.unwrap_or_else(|| shared.join("pmc-jats"));
    let tokenizer = args
        .tokenizer
        .unwrap_or_else(|| shared.join("tokenizers/llama2/tokenizer.json"));
    if !input.exists() || !tokenizer.exists() {
        bail!(
            "need {} and {} (see ../shared/README.md)",
            input.display(),
            tokenizer.display()
        );
    }
    let threads = rayon::current_num_threads();
    let scratch = tempfile::tempdir()?;
    let files = pmc_corpus::input::list_files(std::slice::from_ref(&input))?;
    let mb = pmc_corpus::input::total_bytes(&files) as f64 / 1e6;
    println!("input: {} ({mb:.1} MB), {threads} threads", input.display());

    // 1. End to end, ours and the Python reference, alternating, best of `repeat`.
    let ours_out = scratch.path().join("ours");
    let python_out = scratch.path().join("python");
    let (mut ours, mut python) = (f64::INFINITY, f64::INFINITY);
    let (mut ours_rss, mut python_rss) = (0.0, 0.0);
    let mut python_json = serde_json::Value::Null;
    for _ in 0..args.repeat.max(1) {
        let (s, summary) = run_prepare_child(&input, &ours_out, &tokenizer, &[])?;
        ours = ours.min(s);
        ours_rss = crate::bench::parse_peak_rss(&summary).unwrap_or(0.0);
        let _ = std::fs::remove_dir_all(&python_out);
        let started = std::time::Instant::now();
        let lines = crate::bench::run_python_reference(
            "corpus_reference.py",
            &[
                "--input".as_ref(),
                input.as_os_str(),
                "--tokenizer".as_ref(),
                tokenizer.as_os_str(),
                "--out".as_ref(),
                python_out.as_os_str(),
            ],
        )?;
        python = python.min(started.elapsed().as_secs_f64());
        python_json = lines.into_iter().next().unwrap_or_default();
        python_rss = python_json["peak_rss"].as_f64().unwrap_or(0.0) / (1 << 20) as f64;
    }
    let manifest = pmc_corpus::read_manifest(&ours_out)?;
    println!();
    println!("| pipeline | wall s | MB/s | documents | sequences | peak RSS |");
    println!("|---|---:|---:|---:|---:|---:|");
    println!(
        "| pmc-corpus (Rust) | {ours:.2} | {:.1} | {} | {} | {ours_rss:.0} MiB |",
        mb / ours,
        manifest.documents.kept,
        manifest.sequences
    );
    println!(
        "| Python (ElementTree + tokenizers + pyarrow) | {python:.2} | {:.1} | {} | {} | {python_rss:.0} MiB |",
        mb / python,
        python_json["documents"],
        python_json["sequences"]
    );
    println!("speed-up: {:.2} × (target ≥ 3 ×)", python / ours);

    // 2. Tokenization: our per-document path with packing against raw encode_batch.
    let tok = pmc_corpus::tokens::load_tokenizer(&tokenizer)?;
    let mut texts = Vec::new();
    for shard in &manifest.text_shards {
        texts.extend(pmc_corpus::shards::read_text_shard(
            &ours_out.join(&shard.file),
        )?);
    }
    let plain: Vec<String> = texts.iter().map(|(_, t)| t.clone()).collect();
    let (mut raw, mut ours_tok) = (f64::INFINITY, f64::INFINITY);
    let mut tokens = 0usize;
    for _ in 0..args.repeat.max(1) {
        let started = std::time::Instant::now();
        let encodings = tok
            .encode_batch(plain.clone(), false)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        raw = raw.min(started.elapsed().as_secs_f64());
        tokens = encodings.iter().map(|e| e.len()).sum();
        let started = std::time::Instant::now();
        let ids: Vec<Vec<u32>> = texts
            .par_iter()
            .map(|(_, t)| pmc_corpus::tokens::encode(&tok, t))
            .collect::<Result<_, _>>()?;
        let mut packer = pmc_corpus::tokens::Packer::new(manifest.seq_len, manifest.eos_id);
        let mut sequences = 0usize;
        for ((id, _), ids) in texts.iter().zip(&ids) {
            packer.push(id, ids, |_| {
                sequences += 1;
                Ok(())
            })?;
        }
        ours_tok = ours_tok.min(started.elapsed().as_secs_f64());
    }
    println!();
    println!("| tokenization ({tokens} tokens) | s | tokens/s |");
    println!("|---|---:|---:|");
    println!(
        "| tokenizers `encode_batch` (raw) | {raw:.3} | {:.0} |",
        tokens as f64 / raw
    );
    println!(
        "| pmc-corpus encode + pack | {ours_tok:.3} | {:.0} |",
        tokens as f64 / ours_tok
    );
    println!(
        "tokenization speed: {:.0} % of raw encode_batch (target ≥ 90 %)",
        100.0 * raw / ours_tok
    );

    // 3. Memory against corpus size: the input replicated, deduplication off so that every
    // copy goes all the way through to the shards.
    let replicated = scratch.path().join("replicated");
    std::fs::create_dir(&replicated)?;
    for i in 0..args.replicate {
        std::os::unix::fs::symlink(
            std::fs::canonicalize(&input)?,
            replicated.join(format!("copy{i:02}")),
        )?;
    }
    let no_dedup = ["--exact-dedup", "false", "--near-dup", "0"];
    let (s1, one) = run_prepare_child(&input, &scratch.path().join("x1"), &tokenizer, &no_dedup)?;
    let (sn, many) = run_prepare_child(
        &replicated,
        &scratch.path().join("xn"),
        &tokenizer,
        &no_dedup,
    )?;
    let (r1, rn) = (
        crate::bench::parse_peak_rss(&one).unwrap_or(0.0),
        crate::bench::parse_peak_rss(&many).unwrap_or(0.0),
    );
    println!();
    println!("| input (dedup off) | MB | wall s | peak RSS |");
    println!("|---|---:|---:|---:|");
    println!("| 1 × | {mb:.0} | {s1:.2} | {r1:.0} MiB |");
    println!(
        "| {} × | {:.0} | {sn:.2} | {rn:.0} MiB |",
        args.replicate,
        mb * args.replicate as f64
    );
    println!(
        "peak RSS ratio {} × / 1 ×: {:.2}",
        args.replicate,
        rn / r1.max(1e-9)
    );
    Ok(())
}
