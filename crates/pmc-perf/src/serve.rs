//! `bench-serve`: the OpenAI-compatible server under 1, 4, 16 … concurrent streaming
//! clients — aggregate generated tokens/s and time to first token (p50, p99) — beside
//! another OpenAI-compatible server on the same model when one is given (llama.cpp's
//! `llama_cpp.server`), in alternating rounds.
//!
//! The clients are plain HTTP/1.0 connections on tokio (a response body then ends when the
//! server closes the connection, so no chunked decoding is needed): cheap enough not to take
//! the CPU from the servers they measure on a 2-core machine.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Args;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::report::median;

#[derive(Args, Debug, Clone)]
pub struct BenchServeArgs {
    /// The model, as `serve` loads it (HF directory, GGUF, `smollm2-135m`).
    #[arg(long, default_value = "smollm2-135m")]
    pub model: PathBuf,
    /// How our server holds the weights.
    #[arg(long, default_value = "f32")]
    pub dtype: pmc_model::WeightFormat,
    /// Numbers of concurrent clients, one level each.
    #[arg(long, value_delimiter = ',', default_value = "1,4,16")]
    pub clients: Vec<usize>,
    /// Tokens each request generates (EOS is not a stop for the benchmark's prompts as
    /// often as possible: plain-text continuation of a paper's sentence).
    #[arg(long, default_value_t = 64)]
    pub max_tokens: usize,
    /// Requests each client sends one after another at each level.
    #[arg(long, default_value_t = 2)]
    pub requests: usize,
    /// Rounds; each measures every level on ours, then on the reference.
    #[arg(long, default_value_t = 2)]
    pub rounds: usize,
    /// A reference server's base URL (`http://127.0.0.1:8000/v1`), e.g. llama.cpp's
    /// `python -m llama_cpp.server --model M.gguf --n_threads 2` on the same GGUF.
    #[arg(long)]
    pub reference_url: Option<String>,
}

/// One level measured once.
#[derive(Debug, Clone, Copy)]
struct Level {
    tokens_per_s: f64,
    ttft_p50: f64,
    ttft_p99: f64,
}

/// What a streamed request saw.
struct Stream {
    first_token: Option<Duration>,
    tokens: usize,
}

const PROMPTS: [&str; 4] = [
    "Metformin is a first-line treatment for type 2 diabetes because",
    "In the randomized controlled trial, patients receiving the intervention",
    "The pathophysiology of heart failure with preserved ejection fraction involves",
    "Antibiotic resistance in Staphylococcus aureus arises when",
];

/// Sends one streaming completion to `address` (path prefix `base`) and reads it to the end.
async fn stream_once(address: SocketAddr, base: &str, body: &Value) -> Result<Stream> {
    let body = body.to_string();
    let request = format!(
        "POST {base}/completions HTTP/1.0\r\nHost: {address}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let started = Instant::now();
    let mut socket = tokio::net::TcpStream::connect(address).await?;
    socket.write_all(request.as_bytes()).await?;
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 8192];
    let mut first_token = None;
    let mut tokens = 0;
    let mut usage_tokens = None;
    let mut scanned = 0;
    loop {
        let n = socket.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        buffer.extend_from_slice(&chunk[..n]);
        // Events are `data: …` lines; count those with text as they arrive.
        while let Some(end) = buffer[scanned..].iter().position(|&b| b == b'\n') {
            let line = String::from_utf8_lossy(&buffer[scanned..scanned + end]).into_owned();
            scanned += end + 1;
            let Some(data) = line.trim_end().strip_prefix("data: ") else {
                continue;
            };
            if data == "[DONE]" {
                continue;
            }
            let event: Value = serde_json::from_str(data)
                .with_context(|| format!("an event that is not JSON: {data}"))?;
            if event.get("error").is_some() {
                bail!("the server sent an error: {data}");
            }
            if let Some(n) = event["usage"]["completion_tokens"].as_u64() {
                usage_tokens = Some(n as usize);
            }
            let text = event["choices"][0]["text"].as_str().unwrap_or_default();
            if !text.is_empty() {
                tokens += 1;
                first_token.get_or_insert_with(|| started.elapsed());
            }
        }
    }
    let head = String::from_utf8_lossy(&buffer[..buffer.len().min(64)]).into_owned();
    if !head.starts_with("HTTP/1.") || !head[9..].starts_with("200") {
        bail!("{base}/completions answered: {head}");
    }
    Ok(Stream {
        first_token,
        tokens: usage_tokens.unwrap_or(tokens),
    })
}

/// `clients` concurrent clients, each sending `requests` streaming completions in turn.
async fn measure(url: &Url, model: &str, clients: usize, args: &BenchServeArgs) -> Result<Level> {
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for client in 0..clients {
        let (address, base) = (url.address, url.base.clone());
        let requests = args.requests;
        let body = json!({
            "model": model,
            "prompt": PROMPTS[client % PROMPTS.len()],
            "max_tokens": args.max_tokens,
            "temperature": 0,
            "stream": true,
            "stream_options": {"include_usage": true},
        });
        tasks.spawn(async move {
            let mut streams = Vec::with_capacity(requests);
            for _ in 0..requests {
                streams.push(stream_once(address, &base, &body).await?);
            }
            anyhow::Ok(streams)
        });
    }
    let mut tokens = 0;
    let mut ttfts = Vec::new();
    while let Some(done) = tasks.join_next().await {
        for stream in done?? {
            tokens += stream.tokens;
            ttfts.extend(stream.first_token.map(|d| d.as_secs_f64()));
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    ttfts.sort_by(f64::total_cmp);
    let p99 = ttfts[((ttfts.len() as f64 * 0.99).ceil() as usize).clamp(1, ttfts.len()) - 1];
    Ok(Level {
        tokens_per_s: tokens as f64 / seconds,
        ttft_p50: median(&ttfts).unwrap_or(f64::NAN),
        ttft_p99: p99,
    })
}

/// A server's address and the path its OpenAI routes hang under (`/v1`).
struct Url {
    address: SocketAddr,
    base: String,
}

impl Url {
    fn parse(url: &str) -> Result<Url> {
        let rest = url
            .strip_prefix("http://")
            .with_context(|| format!("--reference-url {url}: only http:// is supported"))?;
        let (host, base) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        let address = std::net::ToSocketAddrs::to_socket_addrs(host)
            .with_context(|| format!("--reference-url {url}: cannot resolve {host}"))?
            .next()
            .with_context(|| format!("--reference-url {url}: no address for {host}"))?;
        Ok(Url {
            address,
            base: base.trim_end_matches('/').to_string(),
        })
    }
}

pub fn bench_serve(args: BenchServeArgs) -> Result<()> {
    if args.clients.is_empty() || args.clients.contains(&0) || args.requests == 0 {
        bail!("--clients needs positive counts and --requests at least 1");
    }
    let device = pmc_model::default_device();
    let options = pmc_model::LoadOptions::from(args.dtype);
    let loaded = pmc_model::load_model(&args.model, &options, &device)?;
    let model_id = "bench".to_string();
    // Every client decodes at once; a client's next request may arrive a moment before its
    // last one's place is given back, so the queue has room for each once more.
    let most = args.clients.iter().copied().max().unwrap_or(1);
    let options = pmc_serve::ServeOptions {
        port: 0,
        max_concurrent: most,
        max_waiting: most,
        model_id: Some(model_id.clone()),
        ..Default::default()
    };
    let runtime = pmc_serve::runtime()?;
    let server = runtime.block_on(pmc_serve::Server::bind(loaded, options, device))?;
    let ours = Url {
        address: server.local_addr(),
        base: "/v1".into(),
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = runtime.spawn(server.run(async {
        let _ = stopped.await;
    }));
    let reference = args.reference_url.as_deref().map(Url::parse).transpose()?;
    eprintln!(
        "bench-serve: {} ({}), {} tokens per request, {} request(s) per client, levels {:?}, {} round(s); reference: {}",
        args.model.display(),
        args.dtype,
        args.max_tokens,
        args.requests,
        args.clients,
        args.rounds,
        args.reference_url
            .as_deref()
            .unwrap_or("none (pass --reference-url)")
    );
    let mut results: Vec<(&str, usize, Level)> = Vec::new();
    runtime.block_on(async {
        // One request first: page the weights in and warm the caches.
        measure(
            &ours,
            &model_id,
            1,
            &BenchServeArgs {
                requests: 1,
                ..args.clone()
            },
        )
        .await?;
        for round in 1..=args.rounds {
            for &clients in &args.clients {
                let level = measure(&ours, &model_id, clients, &args).await?;
                eprintln!(
                    "round {round}: ours, {clients:>3} clients: {:.1} tokens/s",
                    level.tokens_per_s
                );
                results.push(("ours", clients, level));
                if let Some(reference) = &reference {
                    let level = measure(reference, &model_id, clients, &args).await?;
                    eprintln!(
                        "round {round}: reference, {clients:>3} clients: {:.1} tokens/s",
                        level.tokens_per_s
                    );
                    results.push(("reference", clients, level));
                }
            }
        }
        anyhow::Ok(())
    })?;
    let _ = stop.send(());
    runtime.block_on(serving)??;
    print_table(&args, &results);
    Ok(())
}

fn print_table(args: &BenchServeArgs, results: &[(&str, usize, Level)]) {
    let cpu = pmc_model::cpu::model_name();
    println!(
        "\nbench-serve on {cpu}, {} threads: medians of {} round(s)",
        rayon::current_num_threads(),
        args.rounds
    );
    println!(
        "| server | clients | tokens/s (aggregate) | × ours at 1 client | TTFT p50 | TTFT p99 |"
    );
    println!("|---|---:|---:|---:|---:|---:|");
    let median_of = |side: &str, clients: usize, get: fn(&Level) -> f64| {
        let values: Vec<f64> = results
            .iter()
            .filter(|r| r.0 == side && r.1 == clients)
            .map(|r| get(&r.2))
            .collect();
        median(&values).unwrap_or(f64::NAN)
    };
    let single = median_of("ours", args.clients[0], |l| l.tokens_per_s);
    for side in ["ours", "reference"] {
        for &clients in &args.clients {
            let tps = median_of(side, clients, |l| l.tokens_per_s);
            if tps.is_nan() {
                continue;
            }
            println!(
                "| {side} | {clients} | {tps:.1} | {:.2} × | {:.3} s | {:.3} s |",
                tps / single,
                median_of(side, clients, |l| l.ttft_p50),
                median_of(side, clients, |l| l.ttft_p99),
            );
        }
    }
}
