//! The model's own chat template: the Jinja source shipped in `tokenizer_config.json`
//! (`chat_template`, or `chat_template.jinja` beside it) or in GGUF metadata
//! (`tokenizer.chat_template`), rendered the way transformers' `apply_chat_template` does
//! (minijinja with Python's string methods, `trim_blocks` and `lstrip_blocks`), and the
//! end-of-turn tokens generation stops at.

use minijinja::{Environment, Error, ErrorKind, context};
use serde::Serialize;

use crate::error::{ModelError, Result};
use crate::tokenizer::Tokenizer;

/// One turn of a conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Message {
    /// `system`, `user` or `assistant`.
    pub role: String,
    pub content: String,
}

impl Message {
    pub fn new(role: &str, content: &str) -> Self {
        Message {
            role: role.into(),
            content: content.into(),
        }
    }
}

/// A compiled chat template with the special tokens it may refer to.
pub struct ChatTemplate {
    env: Environment<'static>,
    bos_token: String,
    eos_token: String,
}

const NAME: &str = "chat_template";

impl ChatTemplate {
    /// The chat template of `tokenizer`'s model; `model` (its file or directory) names it in
    /// the error when it has none.
    pub fn of(tokenizer: &Tokenizer, model: &std::path::Path) -> Result<Self> {
        let source = tokenizer.chat_template.clone().ok_or_else(|| {
            ModelError::ChatTemplate(format!(
                "{} has no chat template (no `chat_template` in tokenizer_config.json, no chat_template.jinja, no `tokenizer.chat_template` in GGUF metadata); it is a base model: prompt it with plain text, without --chat",
                model.display()
            ))
        })?;
        let token = |id: Option<u32>| {
            id.and_then(|id| tokenizer.inner().id_to_token(id))
                .unwrap_or_default()
        };
        Self::new(
            source,
            token(tokenizer.bos_id),
            token(tokenizer.eos_ids.first().copied()),
        )
    }

    /// Compiles `source`.
    pub fn new(source: String, bos_token: String, eos_token: String) -> Result<Self> {
        let mut env = Environment::new();
        // As transformers' sandboxed Jinja environment.
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function(
            "raise_exception",
            |message: String| -> std::result::Result<String, Error> {
                Err(Error::new(ErrorKind::InvalidOperation, message))
            },
        );
        env.add_function("strftime_now", |format: String| {
            // Templates put today's date into system prompts; a fixed date keeps prompts
            // reproducible.
            format
                .replace("%d", "01")
                .replace("%B", "January")
                .replace("%b", "Jan")
                .replace("%Y", "2026")
                .replace("%m", "01")
        });
        env.add_template_owned(NAME, source).map_err(|e| {
            ModelError::ChatTemplate(format!("the chat template does not compile: {e:#}"))
        })?;
        Ok(ChatTemplate {
            env,
            bos_token,
            eos_token,
        })
    }

    /// The prompt text of `messages`; with `add_generation_prompt` it ends where the
    /// assistant's reply begins.
    pub fn render(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String> {
        let template = self.env.get_template(NAME).expect("added in new");
        template
            .render(context! {
                messages => messages,
                add_generation_prompt => add_generation_prompt,
                bos_token => self.bos_token,
                eos_token => self.eos_token,
            })
            .map_err(|e| ModelError::ChatTemplate(format!("rendering the chat template: {e:#}")))
    }

    /// The token ids of `messages` rendered with the generation prompt, and the ids that end
    /// the reply ([`ChatTemplate::end_of_turn_ids`]). The template writes the special tokens
    /// itself (as transformers' `apply_chat_template`), so the text is encoded without adding
    /// BOS.
    pub fn prompt_ids(
        &self,
        tokenizer: &Tokenizer,
        messages: &[Message],
    ) -> Result<(Vec<u32>, Vec<u32>)> {
        let text = self.render(messages, true)?;
        Ok((
            tokenizer.encode_plain(&text)?,
            self.end_of_turn_ids(tokenizer)?,
        ))
    }

    /// The tokens that close an assistant turn: what the template writes right after a reply
    /// when it is a single special token (`<|im_end|>`, `<|eot_id|>`, `<end_of_turn>`,
    /// `</s>`), plus the model's EOS ids.
    pub fn end_of_turn_ids(&self, tokenizer: &Tokenizer) -> Result<Vec<u32>> {
        const REPLY: &str = "pmc-llama-reply-marker";
        let text = self.render(
            &[
                Message::new("user", "Hello"),
                Message::new("assistant", REPLY),
            ],
            false,
        )?;
        let mut ids = tokenizer.eos_ids.clone();
        if let Some(at) = text.find(REPLY) {
            let after = text[at + REPLY.len()..].trim_start();
            let closing = after.split(char::is_whitespace).next().unwrap_or_default();
            if let Some(id) = tokenizer.inner().token_to_id(closing)
                && !closing.is_empty()
                && !ids.contains(&id)
            {
                ids.push(id);
            }
        }
        Ok(ids)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// SmolLM2-Instruct's template (ChatML), as its tokenizer_config.json ships it.
    const CHATML: &str = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

    #[test]
    fn chatml_renders_as_transformers_does() {
        let t = ChatTemplate::new(CHATML.into(), String::new(), "<|im_end|>".into()).unwrap();
        let text = t
            .render(&[Message::new("user", "What is 2+2?")], true)
            .unwrap();
        assert_eq!(
            text,
            "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n"
        );
    }

    #[test]
    fn python_string_methods_and_raise_exception_work() {
        let source = "{% if messages[0]['role'] == 'system' %}{{ raise_exception('no system role') }}{% endif %}[INST] {{ messages[0]['content'].strip() }} [/INST]";
        let t = ChatTemplate::new(source.into(), "<s>".into(), "</s>".into()).unwrap();
        assert_eq!(
            t.render(&[Message::new("user", "  hi  ")], true).unwrap(),
            "[INST] hi [/INST]"
        );
        let err = t.render(&[Message::new("system", "x")], true).unwrap_err();
        assert!(err.to_string().contains("no system role"), "{err}");
    }

    #[test]
    fn a_broken_template_is_a_clear_error() {
        let err = ChatTemplate::new("{% for %}".into(), String::new(), String::new())
            .err()
            .unwrap();
        assert!(err.to_string().contains("does not compile"), "{err}");
    }
}
