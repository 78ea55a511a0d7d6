//! `candle-decode MODEL.gguf PROMPT_IDS NEW_TOKENS`: greedy decoding with candle's
//! quantized LLaMA (weights kept in the file's block formats, or dequantised to f32 with
//! candle's own `CANDLE_DEQUANTIZE_ALL=1`), printing one JSON line with new tokens/s (the
//! prompt's forward pass included) and peak RSS.

use std::time::Instant;

use candle_core::quantized::gguf_file;
use candle_core::{Device, Tensor};
use candle_transformers::models::quantized_llama::ModelWeights;

fn peak_rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            let line = s.lines().find(|l| l.starts_with("VmHWM:"))?.to_string();
            line.split_whitespace().nth(1)?.parse::<u64>().ok()
        })
        .map_or(0, |kb| kb * 1024)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let [_, path, prompt, new_tokens] = args.as_slice() else {
        return Err("usage: candle-decode MODEL.gguf PROMPT_IDS(comma-separated) NEW_TOKENS".into());
    };
    let prompt: Vec<u32> = prompt
        .split(',')
        .map(|t| t.parse())
        .collect::<Result<_, _>>()?;
    let new_tokens: usize = new_tokens.parse()?;
    let device = Device::Cpu;
    let mut file = std::fs::File::open(path)?;
    let content = gguf_file::Content::read(&mut file).map_err(|e| e.with_path(path))?;
    let mut model = ModelWeights::from_gguf(content, &mut file, &device)?;

    let argmax = |logits: &Tensor| -> candle_core::Result<u32> {
        logits.squeeze(0)?.argmax(0)?.to_scalar::<u32>()
    };
    // Timed as bench-model times ours and transformers' `generate`: the prompt's forward
    // pass and every new token.
    let started = Instant::now();
    let input = Tensor::new(prompt.as_slice(), &device)?.unsqueeze(0)?;
    let mut next = argmax(&model.forward(&input, 0)?)?;
    let mut generated = vec![next];
    for index in 0..new_tokens.saturating_sub(1) {
        let input = Tensor::new(&[next], &device)?.unsqueeze(0)?;
        next = argmax(&model.forward(&input, prompt.len() + index)?)?;
        generated.push(next);
    }
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "{}",
        serde_json::json!({
            "decode_tokens_per_s": generated.len() as f64 / seconds,
            "tokens": generated,
            "peak_rss_bytes": peak_rss_bytes(),
        })
    );
    Ok(())
}
