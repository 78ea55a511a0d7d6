//! # pmc-serve
//!
//! An OpenAI-compatible HTTP server for a pmc-llama model, so that chat front-ends, scripts
//! written against the `openai` client and lm-evaluation-harness's `local-completions` /
//! `local-chat-completions` use a model trained here without converting it:
//!
//! - `GET /v1/models`, `GET /health`;
//! - `POST /v1/chat/completions` — the model's own chat template, sampling, stop strings,
//!   streaming as server-sent events;
//! - `POST /v1/completions` — prompts as text or token ids, one or several, with `echo` and
//!   `logprobs` returning the prompt tokens' log-probabilities (the way lm-evaluation-harness
//!   scores multiple choice);
//! - vLLM's `POST /tokenize`, `POST /detokenize` and `GET /tokenizer_info` ([`tokenize`]), which
//!   lm-evaluation-harness uses instead of a local tokenizer.
//!
//! Errors are OpenAI's error object with the matching status. Requests are decoded together
//! by one engine thread ([`engine`]): continuous batching over per-sequence KV caches.
//!
//! ```no_run
//! # async fn run() -> Result<(), pmc_serve::ServeError> {
//! let device = pmc_model::default_device();
//! let loaded = pmc_model::load_model("smollm2-135m".as_ref(), &Default::default(), &device)?;
//! let server = pmc_serve::Server::bind(loaded, pmc_serve::ServeOptions::default(), device).await?;
//! println!("listening on http://{}", server.local_addr());
//! server.run(pmc_serve::shutdown_signal()).await
//! # }
//! ```

pub mod api;
pub mod engine;
pub mod error;
pub mod routes;
pub mod text;
pub mod tokenize;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

pub use engine::{Engine, EngineLimits};
pub use error::{ApiError, ServeError};
use pmc_model::LoadedModel;
use pmc_model::burn::prelude::Device;

/// How the server listens and how much it takes on.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Loopback unless told otherwise: the server has no TLS.
    pub host: IpAddr,
    /// 0 picks a free port (see [`Server::local_addr`]).
    pub port: u16,
    /// When set, `/v1/*` requires `Authorization: Bearer KEY`.
    pub api_key: Option<String>,
    /// Requests decoded together.
    pub max_concurrent: usize,
    /// Requests waiting for a decoding place; beyond that a request gets 503.
    pub max_waiting: usize,
    /// Positions a request may use (prompt and reply); `None`: the model's
    /// `max_position_embeddings`.
    pub max_context: Option<usize>,
    /// Largest request body accepted (413 beyond).
    pub body_limit: usize,
    /// The model's name in `/v1/models` and in responses; `None`: the file or directory name.
    pub model_id: Option<String>,
}

impl Default for ServeOptions {
    fn default() -> Self {
        Self {
            host: IpAddr::V4(Ipv4Addr::LOCALHOST),
            port: 8080,
            api_key: None,
            max_concurrent: 16,
            max_waiting: 64,
            max_context: None,
            body_limit: 4 << 20,
            model_id: None,
        }
    }
}

/// A server bound to its address, its model loaded into the engine thread.
pub struct Server {
    listener: tokio::net::TcpListener,
    router: axum::Router,
    engine_thread: std::thread::JoinHandle<()>,
    model_id: String,
}

impl Server {
    /// Binds `options`' address and starts the engine with `loaded` on `device`.
    pub async fn bind(
        loaded: LoadedModel,
        options: ServeOptions,
        device: Device,
    ) -> Result<Server, ServeError> {
        let tokenizer = loaded.require_tokenizer()?.clone();
        // A base model has no template: chat requests are then refused with a 400.
        let template = pmc_model::ChatTemplate::of(&tokenizer, &loaded.source).ok();
        let model_id = options.model_id.clone().unwrap_or_else(|| {
            loaded
                .source
                .file_name()
                .map_or("model".into(), |n| n.to_string_lossy().into_owned())
        });
        let max_context = options
            .max_context
            .unwrap_or(loaded.config.max_position_embeddings)
            .min(loaded.config.max_position_embeddings);
        let limits = EngineLimits {
            max_batch: options.max_concurrent.max(1),
            max_waiting: options.max_waiting,
            max_context,
        };
        let address = SocketAddr::new(options.host, options.port);
        let listener = tokio::net::TcpListener::bind(address)
            .await
            .map_err(|source| ServeError::Bind { address, source })?;
        let (engine, engine_thread) =
            Engine::start(loaded.model, tokenizer.clone(), device, limits);
        let shared = routes::Shared {
            engine,
            tokenizer,
            template,
            model_id: model_id.clone(),
            created: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            api_key: options.api_key.clone(),
        };
        Ok(Server {
            listener,
            router: routes::router(shared, options.body_limit),
            engine_thread,
            model_id,
        })
    }

    /// The address bound (with the port chosen when 0 was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// The name the model is served under.
    pub fn model_id(&self) -> &str {
        &self.model_id
    }

    /// Serves until `shutdown` completes; then stops accepting connections, lets the
    /// requests in progress finish, and stops the engine.
    pub async fn run(
        self,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServeError> {
        axum::serve(self.listener, self.router)
            .with_graceful_shutdown(shutdown)
            .await?;
        // The router (and with it every engine handle) is gone: the engine thread finishes
        // what is running and ends.
        let thread = self.engine_thread;
        tokio::task::spawn_blocking(move || thread.join())
            .await
            .map_err(std::io::Error::other)?
            .map_err(|_| std::io::Error::other("the engine thread panicked"))?;
        Ok(())
    }
}

/// Completes on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = terminate => {}
    }
    tracing::info!("shutting down: no new connections; finishing the requests in progress");
}

/// The server's command-line flags (`cargo xtask serve`); the model flags are the caller's.
#[derive(clap::Args, Debug, Clone)]
pub struct ServerFlags {
    /// Address to listen on: loopback by default (the server has no TLS).
    #[arg(long, default_value = "127.0.0.1")]
    pub host: IpAddr,
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// Require `Authorization: Bearer KEY` on /v1/*.
    #[arg(long)]
    pub api_key: Option<String>,
    /// Requests decoded together (continuous batching); 4 × as many more may wait, beyond
    /// that a request gets 503.
    #[arg(long, default_value_t = 16)]
    pub max_concurrent: usize,
    /// Positions a request may use, prompt and reply (default: the model's maximum).
    #[arg(long)]
    pub max_context: Option<usize>,
}

impl From<ServerFlags> for ServeOptions {
    fn from(flags: ServerFlags) -> Self {
        ServeOptions {
            host: flags.host,
            port: flags.port,
            api_key: flags.api_key,
            max_concurrent: flags.max_concurrent,
            max_waiting: 4 * flags.max_concurrent,
            max_context: flags.max_context,
            ..Default::default()
        }
    }
}

/// Binds, calls `ready` (to announce the address), and serves until Ctrl-C or SIGTERM, on
/// a runtime of its own.
pub fn serve_until_signal(
    loaded: LoadedModel,
    options: ServeOptions,
    device: Device,
    ready: impl FnOnce(&Server),
) -> Result<(), ServeError> {
    runtime()?.block_on(async {
        let server = Server::bind(loaded, options, device).await?;
        ready(&server);
        server.run(shutdown_signal()).await
    })
}

/// A tokio runtime for the server: two threads for HTTP, which only parses, queues and
/// writes; the model's work runs on the engine thread and rayon's pool.
pub fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
}
