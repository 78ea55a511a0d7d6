//! What the tests against real clients share: the server on a free port and the skip rule.

use pmc_model::{LoadOptions, load_model};

pub const API_KEY: &str = "test-key";
pub const MAX_CONCURRENT: usize = 8;
pub const MAX_WAITING: usize = 32;
pub const MAX_CONTEXT: usize = 1024;

/// Skips with the reason printed — except under CI (`CI` set), where `.ci/run` installs what
/// the tests need and a skip would hide a failure.
pub fn skip(reason: &str) {
    if std::env::var_os("CI").is_some() {
        panic!("under CI this test must run: {reason}");
    }
    eprintln!("skipped: {reason}");
}

/// SmolLM2-135M's file when it can be fetched and `python3` imports `modules`; otherwise the
/// reason is printed (see [`skip`]) and `None`.
pub fn smollm2_and_python(modules: &str, missing: &str) -> Option<std::path::PathBuf> {
    let model = match pmc_model::hub::resolve(std::path::Path::new("smollm2-135m")) {
        Ok(path) => path,
        Err(e) => {
            skip(&format!("SmolLM2-135M is unavailable: {e}"));
            return None;
        }
    };
    if !python_has(modules) {
        skip(missing);
        return None;
    }
    Some(model)
}

/// Whether `python3` imports every module of `modules` (comma-separated).
pub fn python_has(modules: &str) -> bool {
    std::process::Command::new("python3")
        .args(["-c", &format!("import {modules}")])
        .status()
        .is_ok_and(|s| s.success())
}

/// The server on a free loopback port, on its own thread and runtime.
pub struct TestServer {
    pub address: std::net::SocketAddr,
    stop: tokio::sync::oneshot::Sender<()>,
    thread: std::thread::JoinHandle<()>,
}

impl TestServer {
    pub fn start(model: std::path::PathBuf) -> Self {
        let (address_tx, address_rx) = std::sync::mpsc::channel();
        let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let runtime = pmc_serve::runtime().unwrap();
            runtime.block_on(async {
                let device = pmc_model::default_device();
                let loaded = load_model(&model, &LoadOptions::default(), &device).unwrap();
                let options = pmc_serve::ServeOptions {
                    port: 0,
                    api_key: Some(API_KEY.into()),
                    max_concurrent: MAX_CONCURRENT,
                    max_waiting: MAX_WAITING,
                    max_context: Some(MAX_CONTEXT),
                    model_id: Some("smollm2-135m".into()),
                    ..Default::default()
                };
                let server = pmc_serve::Server::bind(loaded, options, device)
                    .await
                    .unwrap();
                address_tx.send(server.local_addr()).unwrap();
                server
                    .run(async {
                        let _ = stop_rx.await;
                    })
                    .await
                    .unwrap();
            });
        });
        let address = address_rx.recv().expect("the server started");
        Self {
            address,
            stop,
            thread,
        }
    }

    pub fn stop(self) {
        self.stop.send(()).unwrap();
        self.thread.join().unwrap();
    }
}
