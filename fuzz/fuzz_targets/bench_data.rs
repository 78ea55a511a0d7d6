#![no_main]
//! The benchmark files: PubMedQA (ori_pqal.json + test_ground_truth.json), MedQA JSONL and
//! MedMCQA JSONL (both its layouts), in the eval and train splits; the first byte picks
//! the task.
use libfuzzer_sys::fuzz_target;
use pmc_bench::data::{Split, Task, load};

fuzz_target!(|data: &[u8]| {
    let Some((&pick, rest)) = data.split_first() else { return };
    let root = pmc_llama_fuzz::scratch().join("bench");
    let (task, files): (Task, &[&str]) = match pick % 3 {
        0 => (Task::PubMedQa, &["pubmedqa/ori_pqal.json", "pubmedqa/test_ground_truth.json"]),
        1 => (Task::MedQa, &["medqa/test_4options.jsonl", "medqa/train.jsonl"]),
        _ => (Task::MedMcqa, &["medmcqa/dev.jsonl", "medmcqa/train.jsonl"]),
    };
    let (first, second) = pmc_llama_fuzz::split(rest);
    for (name, bytes) in files.iter().zip([first, second]) {
        let path = root.join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, bytes).unwrap();
    }
    for split in [Split::Eval, Split::Train] {
        if let Ok(questions) = load(task, split, &root) {
            for q in &questions {
                let _ = pmc_bench::prompt::lm_eval_context(task, q);
                let _ = pmc_bench::prompt::pmc_llama_prompt(task, q);
            }
        }
    }
});
