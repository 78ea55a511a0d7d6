//! `cargo xtask serve` as a user runs it: it prints its URL and `ready`, answers, and on
//! SIGTERM lets the stream in progress finish (finish reason, usage, `[DONE]`) before it exits with status 0.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Command, Stdio};

#[test]
fn serve_prints_ready_answers_and_finishes_its_stream_on_sigterm() {
    let model = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../crates/pmc-model/tests/fixtures/gqa_tied");
    let mut server = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(["serve", "--port", "0", "--model"])
        .arg(&model)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(server.stdout.take().unwrap()).lines();
    let announced = lines.next().unwrap().unwrap();
    let address = announced
        .split("http://")
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .unwrap_or_else(|| panic!("no URL in {announced:?}"))
        .to_string();
    assert_eq!(lines.next().unwrap().unwrap(), "ready");

    // The fixture's context is 64 positions: 3 prompt tokens and 60 new ones fit.
    let body = r#"{"prompt": [5, 6, 7], "max_tokens": 60, "temperature": 0, "stream": true, "stream_options": {"include_usage": true}}"#;
    let mut socket = TcpStream::connect(&address).unwrap();
    write!(
        socket,
        "POST /v1/completions HTTP/1.0\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut reader = BufReader::new(socket);
    let mut first_event = String::new();
    while !first_event.starts_with("data: ") {
        first_event.clear();
        assert!(reader.read_line(&mut first_event).unwrap() > 0, "no event");
    }
    let status = Command::new("kill")
        .args(["-TERM", &server.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let mut rest = String::new();
    reader.read_to_string(&mut rest).unwrap();
    assert!(
        rest.trim_end().ends_with("data: [DONE]"),
        "the stream was cut by SIGTERM: {rest}"
    );
    // Up to 60 tokens: the random fixture may end at its EOS first.
    assert!(
        rest.contains(r#""finish_reason":"#) && rest.contains(r#""completion_tokens":"#),
        "the stream did not finish with its reason and usage: {rest}"
    );
    let exit = server.wait().unwrap();
    assert!(exit.success(), "serve exited with {exit} after SIGTERM");
    assert!(
        TcpStream::connect(&address).is_err(),
        "still listening after exit"
    );
}
