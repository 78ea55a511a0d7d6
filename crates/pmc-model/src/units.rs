//! The model as a sequence of units, in forward order — the token embedding, each decoder
//! layer, the final norm with the LM head — each built from the parameters a driver supplies
//! and run on its own. [`Llama`](crate::Llama) is built from these units, and a sharded
//! trainer (FSDP `full_shard`, PyTorch's wrapping of each `LlamaDecoderLayer`) gathers one
//! unit's parameters at a time and runs it. The tied-embedding rule lives here: a tied head
//! multiplies by the embedding unit's matrix, whose gradient then belongs to that unit.

use burn::module::Param;
use burn::prelude::*;

use crate::config::LlamaConfig;
use crate::loss::{HeadBackward, head_loss_backward};
use crate::model::{
    DecoderLayer, Llama, Precision, RmsNorm, WeightRef, embed, head_logits, matrix,
};

const EMBEDDING: &str = "model.embed_tokens.weight";
const LM_HEAD: &str = "lm_head.weight";
const FINAL_NORM: &str = "model.norm";

/// One unit of the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    /// The token embedding.
    Embedding,
    /// Decoder layer `i`.
    Layer(usize),
    /// The final norm and the LM head (`lm_head.weight`, unless tied to the embedding).
    Head,
}

impl Unit {
    /// The units of a model of `config`, in forward order.
    pub fn all(config: &LlamaConfig) -> Vec<Unit> {
        std::iter::once(Unit::Embedding)
            .chain((0..config.num_hidden_layers).map(Unit::Layer))
            .chain(std::iter::once(Unit::Head))
            .collect()
    }

    /// Its short name: `embed`, `layer.N`, `head`.
    pub fn name(&self) -> String {
        match self {
            Unit::Embedding => "embed".into(),
            Unit::Layer(i) => format!("layer.{i}"),
            Unit::Head => "head".into(),
        }
    }

    /// The HF name and checkpoint shape (1-D for norms and biases) of each parameter the unit
    /// holds, in the order its builder asks for them, without allocating the weights. A tied
    /// head holds the final norm only.
    pub fn parameter_shapes(&self, config: &LlamaConfig) -> Vec<(String, Vec<usize>)> {
        let device = Device::flex();
        let mut shapes = Vec::new();
        // Vectors travel as [1, n] rows and are reshaped by the builders, so they must have
        // their n elements (norms and biases are small); matrices are only named, so an
        // empty stand-in serves.
        let mut record = |name: &str, shape: &[usize]| {
            let checkpoint_shape = if shape[0] == 1 {
                vec![shape[1]]
            } else {
                shape.to_vec()
            };
            shapes.push((name.to_string(), checkpoint_shape));
            let stand_in = if shape[0] == 1 { shape[1] } else { 0 };
            Ok::<_, std::convert::Infallible>(Tensor::from_data(
                TensorData::new(vec![0f32; stand_in], [shape[0].min(1), stand_in]),
                &device,
            ))
        };
        let built = match self {
            Unit::Embedding => Embedding::build(config, &mut record).map(drop),
            Unit::Layer(i) => DecoderLayer::build(config, *i, &mut record).map(drop),
            Unit::Head => Head::build(config, &mut record, || {
                Ok(Embedding::stand_in(config, &device))
            })
            .map(drop),
        };
        built.unwrap_or_else(|never| match never {});
        shapes
    }
}

/// The token embedding unit.
#[derive(Debug, Clone)]
pub struct Embedding {
    /// `[vocab, hidden]`.
    pub weight: Param<Tensor<2>>,
}

impl Embedding {
    /// The embedding of `config`, filled by `init(name, shape)`.
    pub fn build<E>(
        config: &LlamaConfig,
        init: &mut impl FnMut(&str, &[usize]) -> Result<Tensor<2>, E>,
    ) -> Result<Self, E> {
        let shape = [config.vocab_size, config.hidden_size];
        Ok(Embedding {
            weight: matrix(init, EMBEDDING, shape)?,
        })
    }

    /// An empty matrix under the embedding's name (for naming a tied head's weight).
    fn stand_in(config: &LlamaConfig, device: &Device) -> Self {
        let empty = Tensor::from_data(TensorData::new(Vec::<f32>::new(), [0, 0]), device);
        let mut init = |_: &str, _: &[usize]| Ok::<_, std::convert::Infallible>(empty.clone());
        Self::build(config, &mut init).unwrap_or_else(|never| match never {})
    }

    /// Token embeddings `[batch, seq, hidden]` of `tokens` `[batch, seq]`: layer 0's input.
    pub fn forward(&self, tokens: Tensor<2, Int>) -> Tensor<3> {
        embed(&self.weight, tokens)
    }

    /// Calls `f` with the unit's parameter and its HF name.
    pub fn visit_weights(&self, f: &mut impl FnMut(String, WeightRef<'_>)) {
        f(EMBEDDING.into(), WeightRef::Matrix(&self.weight));
    }
}

/// The final norm and the LM head.
#[derive(Debug, Clone)]
pub struct Head {
    /// The final norm.
    pub norm: RmsNorm,
    /// `[vocab, hidden]`: `lm_head.weight`, or the embedding's matrix when tied.
    pub weight: Param<Tensor<2>>,
    tied: bool,
    precision: Precision,
}

impl Head {
    /// The head of `config`: its own parameters filled by `init(name, shape)`; when the config
    /// ties the head to the embedding, the matrix is the embedding unit's, which
    /// `tied_embedding` is called for (and only then).
    pub fn build<E>(
        config: &LlamaConfig,
        init: &mut impl FnMut(&str, &[usize]) -> Result<Tensor<2>, E>,
        tied_embedding: impl FnOnce() -> Result<Embedding, E>,
    ) -> Result<Self, E> {
        let norm = RmsNorm::build(config, FINAL_NORM, init)?;
        let tied = config.tie_word_embeddings;
        let weight = if tied {
            tied_embedding()?.weight
        } else {
            matrix(init, LM_HEAD, [config.vocab_size, config.hidden_size])?
        };
        Ok(Head {
            norm,
            weight,
            tied,
            precision: Precision::F32,
        })
    }

    /// Multiplies in `precision` from now on.
    pub fn set_precision(&mut self, precision: Precision) {
        self.precision = precision;
    }

    /// Logits `[batch, seq, vocab]` of the last layer's output.
    pub fn logits(&self, hidden: Tensor<3>) -> Tensor<3> {
        head_logits(&self.norm, &self.weight, self.precision, hidden)
    }

    /// The mean next-token loss of `tokens` from the last layer's output `hidden` (an
    /// autodiff tensor), back-propagated through the norm; the head's matrix gradient comes
    /// separately (fused with the loss: the logits of the whole batch never exist at once).
    pub fn loss_backward(
        &self,
        hidden: Tensor<3>,
        tokens: Tensor<2, Int>,
        target_mask: Option<Tensor<2>>,
    ) -> HeadBackward {
        head_loss_backward(
            self.norm.forward(hidden),
            &self.weight,
            self.precision,
            tokens,
            target_mask,
        )
    }

    /// Calls `f` with each parameter of the head unit and its HF name: the final norm, and
    /// `lm_head.weight` unless tied (a tied matrix is the embedding unit's).
    pub fn visit_weights(&self, f: &mut impl FnMut(String, WeightRef<'_>)) {
        f(
            format!("{FINAL_NORM}.weight"),
            WeightRef::Vector(&self.norm.weight),
        );
        if !self.tied {
            f(LM_HEAD.into(), WeightRef::Matrix(&self.weight));
        }
    }

    /// The HF name of the matrix the head multiplies by, and the unit that holds it: where
    /// its gradient goes.
    pub fn weight_owner(&self) -> (&'static str, Unit) {
        if self.tied {
            (EMBEDDING, Unit::Embedding)
        } else {
            (LM_HEAD, Unit::Head)
        }
    }
}

/// A whole model is its units.
impl Llama {
    /// A model with all weights filled by `init(name, shape)`, in HF tensor names
    /// (`model.layers.0.self_attn.q_proj.weight`, ...). Loading and random initialisation
    /// both go through here, so the names exist in one place.
    pub fn build<E>(
        config: &LlamaConfig,
        mut init: impl FnMut(&str, &[usize]) -> Result<Tensor<2>, E>,
    ) -> Result<Self, E> {
        let embedding = Embedding::build(config, &mut init)?;
        let layers = (0..config.num_hidden_layers)
            .map(|i| DecoderLayer::build(config, i, &mut init))
            .collect::<Result<Vec<_>, E>>()?;
        let head = Head::build(config, &mut init, || Ok(embedding.clone()))?;
        let tied = head.weight_owner().1 == Unit::Embedding;
        Ok(Self::from_parts(
            config,
            embedding.weight,
            layers,
            head.norm,
            (!tied).then_some(head.weight),
        ))
    }

    /// The HF name and checkpoint shape of every parameter of a model of `config`, unit by
    /// unit in the order [`Llama::build`] creates them, without allocating the weights.
    pub fn parameter_shapes(config: &LlamaConfig) -> Vec<(String, Vec<usize>)> {
        Unit::all(config)
            .iter()
            .flat_map(|u| u.parameter_shapes(config))
            .collect()
    }

    /// The embedding unit (the model's own parameter).
    pub fn embedding_unit(&self) -> Embedding {
        Embedding {
            weight: self.embed_tokens.clone(),
        }
    }

    /// The head unit: the final norm and the LM head (the embedding when tied), in the
    /// model's precision.
    pub fn head_unit(&self) -> Head {
        Head {
            norm: self.norm.clone(),
            weight: self.head().clone(),
            tied: self.lm_head.is_none(),
            precision: self.precision(),
        }
    }
}
