//! Chat templates render as transformers renders them: real templates (SmolLM2-Instruct's
//! from its GGUF file, Llama-2-chat's) against jinja2's output in
//! `fixtures/chat/chat_renders.json` (written by `fixtures/chat/make_chat_fixtures.py`), and a
//! template survives saving a tokenizer and reading it back.

use pmc_model::{ChatTemplate, Message, Tokenizer};

#[derive(serde::Deserialize)]
struct Case {
    template: String,
    source: String,
    bos_token: String,
    eos_token: String,
    messages: Vec<Turn>,
    add_generation_prompt: bool,
    expected: String,
}

#[derive(serde::Deserialize)]
struct Turn {
    role: String,
    content: String,
}

fn cases() -> Vec<Case> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/chat/chat_renders.json"
    );
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn real_templates_render_as_jinja2_renders_them() {
    let cases = cases();
    assert!(cases.len() >= 6);
    for case in cases {
        let template =
            ChatTemplate::new(case.source.clone(), case.bos_token, case.eos_token).unwrap();
        let messages: Vec<Message> = case
            .messages
            .iter()
            .map(|t| Message::new(&t.role, &t.content))
            .collect();
        let ours = template
            .render(&messages, case.add_generation_prompt)
            .unwrap();
        assert_eq!(ours, case.expected, "template {}", case.template);
    }
}

#[test]
fn a_template_is_saved_with_the_tokenizer_and_read_back() {
    let case = cases().into_iter().next().unwrap();
    let mut vocab = std::collections::HashMap::new();
    for (i, token) in ["<unk>", "<|im_start|>", "<|im_end|>", "a"]
        .iter()
        .enumerate()
    {
        vocab.insert(token.to_string(), i as u32);
    }
    let model = tokenizers::models::wordlevel::WordLevel::builder()
        .vocab(vocab.into_iter().collect())
        .unk_token("<unk>".into())
        .build()
        .unwrap();
    let mut inner = tokenizers::Tokenizer::new(model);
    inner
        .add_special_tokens([
            tokenizers::AddedToken::from("<|im_start|>", true),
            tokenizers::AddedToken::from("<|im_end|>", true),
        ])
        .unwrap();
    let tokenizer = Tokenizer::new(inner, Some(1), vec![2], false, false)
        .with_chat_template(Some(case.source.clone()));
    let dir = tempfile::tempdir().unwrap();
    tokenizer.save(dir.path()).unwrap();
    let back = Tokenizer::from_dir(dir.path(), None, &[]).unwrap();
    assert_eq!(back.chat_template.as_deref(), Some(case.source.as_str()));
    // ChatML's turns end with <|im_end|>: generation stops there.
    let template = ChatTemplate::of(&back, dir.path()).unwrap();
    assert!(template.end_of_turn_ids(&back).unwrap().contains(&2));
}

#[test]
fn a_model_without_a_template_is_refused_by_name() {
    let inner = tokenizers::Tokenizer::new(
        tokenizers::models::wordlevel::WordLevel::builder()
            .vocab([("<unk>".to_string(), 0)].into_iter().collect())
            .unk_token("<unk>".into())
            .build()
            .unwrap(),
    );
    let tokenizer = Tokenizer::new(inner, None, vec![], false, false);
    let err = ChatTemplate::of(&tokenizer, std::path::Path::new("runs/base-model"))
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("runs/base-model") && err.contains("no chat template"),
        "{err}"
    );
}
