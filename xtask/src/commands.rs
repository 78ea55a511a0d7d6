//! `score` and `generate`.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use pmc_model::{
    ContextCache, GenerationConfig, LoadOptions, LoadedModel, WeightDType, WeightFormat,
};

/// Where the model comes from and how it is held.
#[derive(Args, Debug)]
pub struct ModelArgs {
    /// An HF model directory (config.json, safetensors, tokenizer.json) or a .gguf file.
    #[arg(long)]
    pub model: PathBuf,
    /// A LoRA adapter directory in the HF PEFT format.
    #[arg(long)]
    pub adapter: Option<PathBuf>,
    /// How weights are held in memory: f32, bf16 or f16, or quantized in ggml's block
    /// formats q8_0, q4_0 or q4_1 and multiplied without widening (CPU inference; activations
    /// are f32 either way).
    #[arg(long, default_value = "f32")]
    pub dtype: WeightFormat,
}

impl ModelArgs {
    pub fn load(&self, device: &pmc_model::burn::prelude::Device) -> Result<LoadedModel> {
        let options = LoadOptions::from(self.dtype);
        let adapter = self.adapter.as_deref();
        pmc_peft::load_model_with_adapter(&self.model, adapter, &options, device)
            .with_context(|| format!("--model {}", self.model.display()))
    }
}

#[derive(Args, Debug)]
pub struct ScoreArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// JSONL requests: `context_ids` + `continuation_ids`, or `context` + `continuation`.
    #[arg(long)]
    pub input: PathBuf,
}

pub fn score(args: ScoreArgs) -> Result<()> {
    let device = pmc_model::default_device();
    let loaded = args.model.load(&device)?;
    let requests = pmc_model::ScoreRequest::read_jsonl(&args.input, loaded.tokenizer.as_ref())?;
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    // Consecutive requests with the same context (the options of one question) share one
    // context pass.
    let mut contexts = ContextCache::default();
    for (line, request) in &requests {
        let ctx = contexts
            .prepare(&loaded.model, &request.context, &device)
            .with_context(|| format!("{}: line {line}", args.input.display()))?;
        let score = ctx
            .score(&loaded.model, &request.continuation)
            .with_context(|| format!("{}: line {line}", args.input.display()))?;
        serde_json::to_writer(&mut out, &score)?;
        writeln!(out)?;
    }
    out.flush()?;
    Ok(())
}

#[derive(Args, Debug)]
pub struct GenerateArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// The prompt text (with --chat: the user's message).
    #[arg(long)]
    pub prompt: String,
    /// Wrap the prompt in the model's own chat template as a user turn, and stop at the
    /// template's end-of-turn token (for instruct models: without it they tend to copy the
    /// input). Refused for models without a template.
    #[arg(long)]
    pub chat: bool,
    /// With --chat: a system message before the user's.
    #[arg(long, requires = "chat")]
    pub system: Option<String>,
    /// Maximum number of new tokens.
    #[arg(long, default_value_t = 64)]
    pub max_new_tokens: usize,
    /// Sampling temperature; 0 (the default) is greedy decoding.
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f64,
    /// Nucleus sampling threshold.
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f64,
    /// Seed of the sampler.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

pub fn generate(args: GenerateArgs) -> Result<()> {
    let device = pmc_model::default_device();
    let loaded = args.model.load(&device)?;
    let tokenizer = loaded.require_tokenizer()?;
    let (prompt, stop_ids) = if args.chat {
        let template = pmc_model::ChatTemplate::of(tokenizer, &loaded.source)?;
        let mut messages: Vec<pmc_model::Message> = args
            .system
            .iter()
            .map(|s| pmc_model::Message::new("system", s))
            .collect();
        messages.push(pmc_model::Message::new("user", &args.prompt));
        template.prompt_ids(tokenizer, &messages)?
    } else {
        (tokenizer.encode(&args.prompt)?, tokenizer.eos_ids.clone())
    };
    let config = GenerationConfig {
        max_new_tokens: args.max_new_tokens,
        temperature: args.temperature,
        top_p: args.top_p,
        seed: args.seed,
    };
    let mut stream = tokenizer.stream();
    let stdout = std::io::stdout();
    let started = std::time::Instant::now();
    let tokens = pmc_model::generate(&loaded.model, &prompt, &config, &stop_ids, &device, |id| {
        let piece = stream.push(id)?;
        let mut out = stdout.lock();
        let _ = out.write_all(piece.as_bytes()).and_then(|_| out.flush());
        Ok(true)
    })?;
    println!();
    let seconds = started.elapsed().as_secs_f64();
    tracing::info!(
        tokens = tokens.len(),
        tokens_per_s = tokens.len() as f64 / seconds,
        "generated"
    );
    Ok(())
}

#[derive(Args, Debug)]
pub struct ConvertArgs {
    /// The llama.cpp GGUF file.
    #[arg(long)]
    pub gguf: PathBuf,
    /// The HF directory to write.
    #[arg(long)]
    pub out: PathBuf,
    /// The dtype of the written weights: f32 or bf16 (f16 also works).
    #[arg(long, default_value = "f32")]
    pub dtype: WeightDType,
}

pub fn convert(args: ConvertArgs) -> Result<()> {
    let device = pmc_model::default_device();
    // Held in the output dtype: converting once at load time is exact and halves memory.
    let options = LoadOptions::from(WeightFormat::Dense(args.dtype));
    let loaded = pmc_model::load_gguf(&args.gguf, &options, &device)?;
    let save = pmc_model::SaveOptions {
        dtype: args.dtype,
        ..Default::default()
    };
    pmc_model::save_hf(&loaded.model, &loaded.config, &args.out, save)?;
    loaded.require_tokenizer()?.save(&args.out)?;
    eprintln!(
        "wrote {} ({:.1} M parameters, {:?}) from {}",
        args.out.display(),
        loaded.config.num_parameters() as f64 / 1e6,
        args.dtype,
        args.gguf.display()
    );
    Ok(())
}

#[derive(Args, Debug)]
pub struct MergeArgs {
    /// The base model (HF directory or .gguf) and the adapter to fold in (`--adapter`).
    #[command(flatten)]
    pub model: ModelArgs,
    /// The HF directory to write (config, safetensors, tokenizer).
    #[arg(long)]
    pub out: PathBuf,
}

/// `merge`: fold a LoRA adapter into its base model and save a plain HF checkpoint.
pub fn merge(args: MergeArgs) -> Result<()> {
    let Some(adapter) = &args.model.adapter else {
        anyhow::bail!("merge needs --adapter DIR");
    };
    let device = pmc_model::default_device();
    let mut loaded = args.model.load(&device)?;
    pmc_peft::merge(&mut loaded.model);
    let WeightFormat::Dense(dtype) = args.model.dtype else {
        anyhow::bail!("merge writes dense weights: --dtype f32, bf16 or f16");
    };
    let save = pmc_model::SaveOptions {
        dtype,
        ..Default::default()
    };
    pmc_model::save_hf(&loaded.model, &loaded.config, &args.out, save)?;
    if let Some(tokenizer) = &loaded.tokenizer {
        tokenizer.save(&args.out)?;
    }
    eprintln!(
        "wrote {} ({} merged into {})",
        args.out.display(),
        adapter.display(),
        args.model.model.display()
    );
    Ok(())
}

#[derive(Args, Debug)]
pub struct ServeArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub server: pmc_serve::ServerFlags,
}

/// `serve`: the OpenAI-compatible server until Ctrl-C or SIGTERM.
pub fn serve(args: ServeArgs) -> Result<()> {
    let device = pmc_model::default_device();
    let loaded = args.model.load(&device)?;
    pmc_serve::serve_until_signal(loaded, args.server.into(), device, |server| {
        let (model, address) = (server.model_id(), server.local_addr());
        println!("serving {model} at http://{address}/v1 (chat/completions, completions, models)");
        println!("ready");
    })?;
    Ok(())
}

#[derive(Args, Debug)]
pub struct ExportArgs {
    /// An HF model directory, a .gguf file or `smollm2-135m`.
    #[arg(long)]
    pub model: PathBuf,
    /// A LoRA adapter (HF PEFT format) to merge into the weights first.
    #[arg(long)]
    pub adapter: Option<PathBuf>,
    /// The GGUF file to write.
    #[arg(long)]
    pub gguf: PathBuf,
    /// The matrices' type: f32, f16, or ggml's block formats q8_0, q4_0, q4_1 (norms and
    /// biases stay f32, as llama.cpp's quantize leaves them).
    #[arg(long, default_value = "f16")]
    pub dtype: pmc_model::ExportType,
}

/// `export`: a model (with its adapter merged) as GGUF for llama.cpp, Ollama, LM Studio.
pub fn export(args: ExportArgs) -> Result<()> {
    let device = pmc_model::default_device();
    let adapter = args.adapter.as_deref();
    let mut loaded =
        pmc_peft::load_model_with_adapter(&args.model, adapter, &Default::default(), &device)?;
    pmc_peft::merge(&mut loaded.model);
    let name = args
        .model
        .file_stem()
        .map_or("model".into(), |s| s.to_string_lossy());
    let tokenizer = loaded.require_tokenizer()?;
    let config = &loaded.config;
    let written = pmc_model::write_gguf(
        &loaded.model,
        config,
        tokenizer,
        &name,
        args.dtype,
        &args.gguf,
    )?;
    let mib = written.bytes as f64 / (1 << 20) as f64;
    let path = args.gguf.display();
    eprintln!(
        "wrote {path}: {} tensors, {mib:.1} MiB, {:?}",
        written.tensors, args.dtype
    );
    Ok(())
}
