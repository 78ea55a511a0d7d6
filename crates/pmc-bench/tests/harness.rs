//! Loaders on the real benchmark files (skipped with a reason when ../shared is absent),
//! templates byte for byte, answer extraction, and bad records.

use std::path::PathBuf;

use pmc_bench::data::{self, Question, Split, Task};
use pmc_bench::prompt::{self, extract_answer};

fn shared_data() -> Option<PathBuf> {
    let dir = std::env::var_os("PMC_SHARED")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared"))
        .join("data");
    if dir.join("pubmedqa/ori_pqal.json").exists() {
        Some(dir)
    } else {
        println!("SKIP: ../shared/data is absent (set PMC_SHARED)");
        None
    }
}

#[test]
fn loader_counts_match_the_releases() {
    let Some(data) = shared_data() else { return };
    let test = data::load(Task::PubMedQa, Split::Eval, &data).unwrap();
    let pool = data::load(Task::PubMedQa, Split::Train, &data).unwrap();
    assert_eq!((test.len(), pool.len()), (500, 500));
    let count = |label: usize| test.iter().filter(|q| q.gold == label).count();
    assert_eq!(
        (count(0), count(1), count(2)),
        (276, 169, 55),
        "yes/no/maybe of the official test"
    );
    assert_eq!(
        test[0].id, "12377809",
        "test order is test_ground_truth.json's"
    );
    assert!(test.iter().all(|q| !pool.iter().any(|p| p.id == q.id)));

    let medqa = data::load(Task::MedQa, Split::Eval, &data).unwrap();
    assert_eq!(medqa.len(), 1273);
    assert!(medqa.iter().all(|q| q.options.len() == 4 && q.gold < 4));
    assert_eq!(medqa[0].id, "0");
    let five = data::load(
        Task::MedQa,
        Split::Eval,
        &data.join("medqa/test_5options.jsonl"),
    )
    .unwrap();
    assert!(five.len() == 1273 && five.iter().all(|q| q.options.len() == 5));

    // The shared data has MedMCQA's dev split only: a seeded 1,000 of its 4,183 questions
    // are the fine-tuning pool and the other 3,183 the evaluation set, the same every time.
    assert!(data::carves_pool(Task::MedMcqa, &data));
    assert!(data::split_note(Task::MedMcqa, &data).is_some());
    assert!(data::split_note(Task::MedQa, &data).is_none());
    let medmcqa = data::load(Task::MedMcqa, Split::Eval, &data).unwrap();
    let carved = data::load(Task::MedMcqa, Split::Train, &data).unwrap();
    assert_eq!((medmcqa.len(), carved.len()), (3183, 1000));
    assert!(carved.iter().all(|p| !medmcqa.iter().any(|q| q.id == p.id)));
    let whole = data::load(Task::MedMcqa, Split::Eval, &data.join("medmcqa/dev.jsonl")).unwrap();
    assert_eq!(whole.len(), 4183, "a file named directly is taken whole");
    assert_eq!(
        data::load(Task::MedMcqa, Split::Train, &data).unwrap()[..5],
        carved[..5],
        "the draw is seeded"
    );
    assert!(
        carved.iter().zip(&carved[1..]).all(|(a, b)| {
            let position = |q: &data::Question| whole.iter().position(|w| w.id == q.id);
            position(a) < position(b)
        }),
        "the pool keeps the file's order"
    );
    assert!(
        !medmcqa[0].options[0].starts_with("A. "),
        "letters are stripped from choices"
    );
    // The unlabelled test file is refused, naming file and line.
    let err = data::load(
        Task::MedMcqa,
        Split::Eval,
        &data.join("medmcqa/test_nolabels.jsonl"),
    )
    .unwrap_err();
    let err = err.to_string();
    assert!(
        err.contains("test_nolabels.jsonl: line 1") && err.contains("unlabelled"),
        "{err}"
    );
}

fn question(options: &[&str], contexts: &[&str]) -> Question {
    Question {
        id: "q".into(),
        question: "Which nerve is injured in wrist drop?".into(),
        contexts: contexts.iter().map(|s| s.to_string()).collect(),
        options: options.iter().map(|s| s.to_string()).collect(),
        gold: 0,
        subject: None,
        long_answer: None,
    }
}

#[test]
fn lm_eval_templates_byte_for_byte() {
    // Written from lm-evaluation-harness's task YAMLs (doc_to_text / doc_to_choice).
    let q = question(&["Radial", "Ulnar", "Median", "Axillary"], &[]);
    assert_eq!(
        prompt::lm_eval_context(Task::MedQa, &q),
        "Question: Which nerve is injured in wrist drop?\nA. Radial\nB. Ulnar\nC. Median\nD. Axillary\nAnswer:"
    );
    assert_eq!(
        prompt::lm_eval_context(Task::MedMcqa, &q),
        "Question: Which nerve is injured in wrist drop?\nChoices:\nA. Radial\nB. Ulnar\nC. Median\nD. Axillary\nAnswer:"
    );
    assert_eq!(
        prompt::lm_eval_choices(Task::MedQa, &q),
        ["A", "B", "C", "D"]
    );
    let p = question(
        &["yes", "no", "maybe"],
        &["First section.", "Second section."],
    );
    assert_eq!(
        prompt::lm_eval_context(Task::PubMedQa, &p),
        "Abstract: First section.\nSecond section.\nQuestion: Which nerve is injured in wrist drop?\nAnswer:"
    );
    assert_eq!(
        prompt::lm_eval_choices(Task::PubMedQa, &p),
        ["yes", "no", "maybe"]
    );
    let mut shot = q.clone();
    shot.gold = 0;
    let with = prompt::with_shots(Task::MedQa, &q, &[shot]);
    assert!(
        with.starts_with("Question: Which nerve") && with.contains("\nAnswer: A\n\nQuestion: "),
        "{with}"
    );
}

#[test]
fn pmc_llama_prompt_is_the_papers() {
    let q = question(&["Radial", "Ulnar", "Median", "Axillary"], &[]);
    assert_eq!(
        prompt::pmc_llama_prompt(Task::MedQa, &q),
        "Below is an instruction that describes a task, paired with an input that provides further context. Write a response that appropriately completes the request.\n\n### Instruction:\nYou're a doctor, kindly address the medical queries according to the patient's account. Answer with the best option directly.\n\n### Input:\n###Question: Which nerve is injured in wrist drop? ###Options: A. Radial B. Ulnar C. Median D. Axillary\n\n### Response:"
    );
}

#[test]
fn answer_extraction_table() {
    let opts: Vec<String> = [
        "Radial nerve",
        "Ulnar nerve",
        "Median nerve",
        "Axillary nerve",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let table: &[(&str, Option<usize>)] = &[
        // PMC-LLaMA's own pattern, in the forms its replies take.
        ("OPTION A IS CORRECT.", Some(0)),
        (
            " Option c is correct. The median nerve supplies...",
            Some(2),
        ),
        (
            "The patient likely has a radial nerve palsy. OPTION A IS CORRECT",
            Some(0),
        ),
        ("###Answer: OPTION D IS CORRECT.", Some(3)),
        // Fallbacks.
        ("The answer is B.", Some(1)),
        ("Answer: (C) Median nerve", Some(2)),
        ("B. Ulnar nerve", Some(1)),
        ("(D) Axillary nerve", Some(3)),
        ("D", Some(3)),
        ("Radial nerve injury causes wrist drop.", Some(0)),
        // Real SmolLM2-135M-Instruct replies to the PMC-LLaMA prompt on MedQA.
        (
            "\nA. Renal papillary necrosis\n\n### Question: The patient has a history of diabetes mellitus and has been",
            Some(0),
        ),
        (
            "\nA 39-year-old woman is brought to the emergency department because of fevers, chills, and left",
            None,
        ),
        (
            "\n### Question: A senior orthopedic surgeon is performing a knee replacement surgery.",
            None,
        ),
        // Never guessed.
        ("I am not sure which option is right.", None),
        ("A or B could both be correct", None),
        ("", None),
        ("Option E is correct", None),
        ("As a doctor, I recommend seeing a neurologist.", None),
    ];
    for (text, want) in table {
        assert_eq!(extract_answer(text, &opts), *want, "{text:?}");
    }
}

#[test]
fn bad_records_name_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("medqa.jsonl");
    std::fs::write(
        &path,
        "{\"question\": \"q\", \"options\": {\"A\": \"a\", \"B\": \"b\"}, \"answer_idx\": \"A\"}\n{\"question\": \"q\", \"options\": {\"A\": \"a\"}, \"answer_idx\": \"C\"}\n",
    )
    .unwrap();
    let err = data::load(Task::MedQa, Split::Eval, &path)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("medqa.jsonl: line 2") && err.contains("answer_idx"),
        "{err}"
    );

    let path = dir.path().join("medmcqa.jsonl");
    std::fs::write(&path, "{\"question\": \"q\", \"opa\": \"a\", \"opb\": \"b\", \"opc\": \"c\", \"opd\": \"d\", \"cop\": 4, \"subject_name\": \"Anatomy\"}\nnot json\n").unwrap();
    let err = data::load(Task::MedMcqa, Split::Eval, &path)
        .unwrap_err()
        .to_string();
    assert!(err.contains("medmcqa.jsonl: line 2"), "{err}");

    // The original layout counts `cop` from 1.
    std::fs::write(&path, "{\"question\": \"q\", \"opa\": \"a\", \"opb\": \"b\", \"opc\": \"c\", \"opd\": \"d\", \"cop\": 4, \"subject_name\": \"Anatomy\"}\n").unwrap();
    let q = data::load(Task::MedMcqa, Split::Eval, &path).unwrap();
    assert_eq!((q[0].gold, q[0].subject.as_deref()), (3, Some("Anatomy")));
}

/// The grid's `--limit` draws its questions with a seed, the same for every cell: the first N
/// of PubMedQA's ground-truth file (sorted by label) would all be "yes".
#[test]
fn a_cell_limit_draws_seeded_questions_of_every_label() {
    let Some(data) = shared_data() else { return };
    let settings = pmc_bench::regimes::CellSettings {
        data,
        fraction: 1.0,
        steps: None,
        global_batch: 8,
        limit: Some(100),
        subset_seed: 1234,
    };
    let draw = || pmc_bench::regimes::cell_questions(Task::PubMedQa, &settings).unwrap();
    let (a, b) = (draw(), draw());
    let ids = |q: &pmc_bench::run::TaskQuestions| -> Vec<String> {
        q.questions.iter().map(|q| q.id.clone()).collect()
    };
    assert_eq!(a.questions.len(), 100);
    assert_eq!(ids(&a), ids(&b), "every cell must score the same questions");
    for label in 0..3 {
        assert!(
            a.questions.iter().any(|q| q.gold == label),
            "no question of label {label} among the 100 drawn"
        );
    }
}
