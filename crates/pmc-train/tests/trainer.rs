//! The trainer: clipping as torch does it, accumulation equals a larger batch, the loss
//! falls, and a run stopped at a checkpoint and resumed ends bit-identical.

use burn::optim::GradientsParams;
use burn::prelude::*;
use pmc_model::{LlamaConfig, Precision, WeightDType, init_random};
use pmc_train::{
    Checkpointer, CorpusShards, CosineSchedule, TokenWindows, TrainConfig, TrainStep, Trainer,
    TrainingData, clip_global_norm,
};

fn tiny_config() -> LlamaConfig {
    LlamaConfig::from_json(
        &serde_json::json!({"vocab_size": 64, "hidden_size": 32, "intermediate_size": 64,
            "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
            "max_position_embeddings": 64, "rms_norm_eps": 1e-5, "tie_word_embeddings": true}),
        std::path::Path::new("tiny"),
    )
    .unwrap()
}

fn train_config(micro_batch: usize, global_batch: usize) -> TrainConfig {
    TrainConfig {
        schedule: CosineSchedule {
            peak_lr: 3e-3,
            warmup_steps: 2,
            total_steps: 40,
            min_lr_ratio: 0.1,
        },
        beta1: 0.9,
        beta2: 0.95,
        eps: 1e-8,
        weight_decay: 0.01,
        max_grad_norm: Some(1.0),
        micro_batch,
        global_batch,
        seq_len: 16,
        seed: 3,
        precision: Precision::F32,
        parallel_micro_batches: 1,
    }
}

/// A learnable stream: counting sequences modulo the vocabulary, with a different start per
/// window.
fn data(seq_len: usize) -> TokenWindows {
    let tokens: Vec<u32> = (0..64 * seq_len)
        .map(|i| ((i / seq_len * 7 + i) % 64) as u32)
        .collect();
    TokenWindows::new(&tokens, seq_len, 11)
}

fn trainer(micro: usize, global: usize) -> Trainer {
    trainer_with(train_config(micro, global))
}

/// A trainer of the tiny model (same initial weights every time) with `config`.
fn trainer_with(config: TrainConfig) -> Trainer {
    let device = Device::flex().autodiff();
    let model = init_random(&tiny_config(), WeightDType::F32, 42, &device);
    Trainer::new(model, tiny_config(), config, &device).unwrap()
}

/// Every weight of the model, adapters included.
fn weights(t: &Trainer) -> Vec<Vec<f32>> {
    let values = |x: Tensor<2>| x.to_data().convert::<f32>().try_to_vec().unwrap();
    let mut out: Vec<Vec<f32>> = t
        .model
        .named_weights()
        .into_iter()
        .map(|w| values(w.value))
        .collect();
    t.model.visit_linears(|_, lin| {
        if let Some(l) = &lin.lora {
            out.push(values(l.a.val()));
            out.push(values(l.b.val()));
        }
    });
    out
}

#[test]
fn clipping_matches_torch() {
    // torch.nn.utils.clip_grad_norm_([a, b], 5.0) with grads [3, 4] and [12]: norm 13,
    // grads become [1.1538460, 1.5384614] and [4.6153841].
    let device = Device::flex();
    let mut grads = GradientsParams::new();
    let (a, b) = (
        burn::module::ParamId::from(1u64),
        burn::module::ParamId::from(2u64),
    );
    grads.register(a, Tensor::<1>::from_floats([3.0, 4.0], &device));
    grads.register(b, Tensor::<2>::from_floats([[12.0]], &device));
    let norm = clip_global_norm(&mut grads, &[(a, 1), (b, 2)], Some(5.0));
    assert!((norm - 13.0).abs() < 1e-6);
    let ga: Vec<f32> = grads.get::<1>(a).unwrap().into_data().try_to_vec().unwrap();
    let gb: Vec<f32> = grads.get::<2>(b).unwrap().into_data().try_to_vec().unwrap();
    for (got, want) in ga
        .iter()
        .chain(&gb)
        .zip([1.153_846_f32, 1.538_461_4, 4.615_384])
    {
        assert!((got - want).abs() < 1e-6, "{got} vs {want}");
    }
    // Under the limit nothing changes.
    let norm = clip_global_norm(&mut grads, &[(a, 1), (b, 2)], Some(100.0));
    assert!((norm - 5.0).abs() < 1e-4);
}

#[test]
fn accumulation_equals_a_larger_batch() {
    let d = data(16);
    let mut one = trainer(4, 4);
    let mut four = trainer(1, 4);
    let s1 = one.step(&d).unwrap();
    let s4 = four.step(&d).unwrap();
    assert!(
        (s1.loss - s4.loss).abs() < 1e-5,
        "{} vs {}",
        s1.loss,
        s4.loss
    );
    assert!((s1.grad_norm - s4.grad_norm).abs() < 1e-4 * s1.grad_norm);
    // Step 0 runs at lr 0 (warmup); compare after the second step.
    one.step(&d).unwrap();
    four.step(&d).unwrap();
    for (a, b) in weights(&one).iter().zip(weights(&four).iter()) {
        for (x, y) in a.iter().zip(b) {
            assert!((x - y).abs() < 1e-5, "{x} vs {y}");
        }
    }
}

#[test]
fn loss_falls() {
    let d = data(16);
    let mut t = trainer(4, 8);
    let first = t.step(&d).unwrap().loss;
    let mut last = first;
    for _ in 0..24 {
        last = t.step(&d).unwrap().loss;
    }
    // ln 64 = 4.16 is the loss of knowing nothing; a working trainer learns the pattern.
    assert!(last < first - 1.0, "loss {first} -> {last}");
}

/// Mixed precision: bf16 products, f32 master weights. The model learns, its parameters stay
/// f32, it takes other steps than f32 training (the products really are bf16), and a resumed
/// run continues in bf16 from the saved config, bit-exact.
#[test]
fn bf16_products_train_f32_master_weights() {
    let d = data(16);
    let make = |precision| {
        trainer_with(TrainConfig {
            precision,
            ..train_config(4, 8)
        })
    };
    let mut mixed = make(Precision::Bf16);
    let mut full = make(Precision::F32);
    let (first, first_f32) = (mixed.step(&d).unwrap().loss, full.step(&d).unwrap().loss);
    assert!(
        (first - first_f32).abs() < 0.02 && first != first_f32,
        "first loss {first} (bf16) vs {first_f32} (f32)"
    );
    let mut last = first;
    for _ in 0..24 {
        last = mixed.step(&d).unwrap().loss;
    }
    assert!(last < first - 1.0, "bf16: loss {first} -> {last}");
    mixed.model.visit_weights(|name, w| {
        let dtype = match w {
            pmc_model::WeightRef::Matrix(p) => p.val().dtype(),
            pmc_model::WeightRef::Vector(p) => p.val().dtype(),
        };
        assert_eq!(dtype, burn::tensor::DType::F32, "{name} is a master weight");
    });
    assert_resume_bit_exact(&d, || make(Precision::Bf16), 2, 4);
}

/// Micro-batches computed side by side on threads give the same bits as one after another.
#[test]
fn parallel_micro_batches_are_bit_identical() {
    let d = data(16);
    let run = |lanes| {
        let mut t = trainer_with(TrainConfig {
            parallel_micro_batches: lanes,
            ..train_config(2, 8)
        });
        let losses: Vec<u64> = (0..3).map(|_| t.step(&d).unwrap().loss.to_bits()).collect();
        let bits: Vec<Vec<u32>> = weights(&t)
            .iter()
            .map(|w| w.iter().map(|v| v.to_bits()).collect())
            .collect();
        (losses, bits, t.state)
    };
    let one_by_one = run(1);
    for lanes in [2, 4] {
        let side_by_side = run(lanes);
        assert_eq!(side_by_side.0, one_by_one.0, "{lanes} lanes: losses differ");
        assert_eq!(side_by_side.2, one_by_one.2, "{lanes} lanes: state differs");
        assert!(
            side_by_side.1 == one_by_one.1,
            "{lanes} lanes: weights differ"
        );
    }
}

/// Trains `total` steps straight, and `stop` steps + checkpoint + resume + the rest; the
/// final weights and states must be bit-identical.
fn assert_resume_bit_exact(
    d: &dyn TrainingData,
    make: impl Fn() -> Trainer,
    stop: usize,
    total: usize,
) {
    let mut straight = make();
    for _ in 0..total {
        straight.step(d).unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let mut first = make();
    for _ in 0..stop {
        first.step(d).unwrap();
    }
    let ckpt = Checkpointer::new(dir.path(), 2).save(&first).unwrap();
    drop(first);
    // The run directory names its newest complete checkpoint.
    assert_eq!(pmc_train::checkpoint::resolve(dir.path()).unwrap(), ckpt);
    let mut resumed = Trainer::resume(&ckpt, &Device::flex().autodiff()).unwrap();
    assert_eq!(resumed.state.step, stop);
    for _ in stop..total {
        resumed.step(d).unwrap();
    }
    assert_eq!(resumed.state, straight.state);
    let (a, b) = (weights(&resumed), weights(&straight));
    for (x, y) in a.iter().zip(&b) {
        let xb: Vec<u32> = x.iter().map(|v| v.to_bits()).collect();
        let yb: Vec<u32> = y.iter().map(|v| v.to_bits()).collect();
        assert_eq!(xb, yb, "weights differ after resume");
    }
}

#[test]
fn resume_is_bit_exact() {
    assert_resume_bit_exact(&data(16), || trainer(2, 4), 3, 6);
}

/// The cursor of a checkpoint indexes into its own data: resuming on other data is refused
/// by the trainer itself, naming the checkpoint; the same data is accepted.
#[test]
fn resume_on_other_data_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut t = trainer(2, 4);
    t.step(&data(16)).unwrap();
    let ckpt = Checkpointer::new(dir.path(), 1).save(&t).unwrap();
    let device = Device::flex().autodiff();
    let other = TokenWindows::new(
        &(0..64 * 16).map(|i| (i % 61) as u32).collect::<Vec<_>>(),
        16,
        11,
    );
    let err = Trainer::resume(&ckpt, &device)
        .unwrap()
        .step(&other)
        .unwrap_err();
    assert!(
        matches!(&err, pmc_train::TrainError::OtherData { checkpoint, .. } if *checkpoint == ckpt),
        "{err}"
    );
    assert!(err.to_string().contains("other data"), "{err}");
    // Another seed is another stream, too.
    let reseeded = TokenWindows::new(
        &(0..64 * 16)
            .map(|i| ((i / 16 * 7 + i) % 64) as u32)
            .collect::<Vec<_>>(),
        16,
        12,
    );
    assert!(
        Trainer::resume(&ckpt, &device)
            .unwrap()
            .step(&reseeded)
            .is_err()
    );
    Trainer::resume(&ckpt, &device)
        .unwrap()
        .step(&data(16))
        .unwrap();
}

/// Keep-last-K, and an interrupted save (`step-N.tmp`) is never taken for a checkpoint.
#[test]
fn checkpointer_keeps_the_last_k_and_never_takes_a_tmp_dir() {
    let dir = tempfile::tempdir().unwrap();
    let checkpointer = Checkpointer::new(dir.path(), 2);
    let mut t = trainer(2, 4);
    for _ in 0..3 {
        t.step(&data(16)).unwrap();
        checkpointer.save(&t).unwrap();
    }
    let kept = pmc_train::checkpoint::list(dir.path()).unwrap();
    assert_eq!(
        kept,
        [2, 3].map(|s| pmc_train::checkpoint_dir(dir.path(), s))
    );
    // A half-written newer checkpoint is ignored, and refused when named.
    let tmp = pmc_train::checkpoint_dir(dir.path(), 4).with_extension("tmp");
    std::fs::create_dir_all(&tmp).unwrap();
    std::fs::write(tmp.join("trainer_state.json"), "{").unwrap();
    assert_eq!(
        pmc_train::checkpoint::resolve(dir.path()).unwrap(),
        pmc_train::checkpoint_dir(dir.path(), 3)
    );
    assert!(pmc_train::checkpoint::resolve(&tmp).is_err());
    let empty = tempfile::tempdir().unwrap();
    let err = pmc_train::checkpoint::resolve(empty.path()).unwrap_err();
    assert!(err.to_string().contains("no checkpoint"), "{err}");
}

/// The same on packed parquet shards from pmc-corpus, across an epoch boundary.
#[test]
fn resume_on_corpus_shards_is_bit_exact() {
    let dir = tempfile::tempdir().unwrap();
    let docs: String = (0..6)
        .map(|i| {
            let text: Vec<String> = (0..10)
                .map(|j| format!("cell{} gene{}", (i * 7 + j) % 13, (i + j * 3) % 11))
                .collect();
            serde_json::json!({"id": format!("doc{i}"), "text": text.join(" ")}).to_string() + "\n"
        })
        .collect();
    std::fs::write(dir.path().join("docs.jsonl"), docs).unwrap();
    let mut config = pmc_corpus::PrepareConfig::new(
        vec![dir.path().join("docs.jsonl")],
        dir.path().join("corpus"),
        pmc_corpus::TokenizerSource::Train { vocab_size: 300 },
        pmc_corpus::Preset::Plain.options(),
    );
    config.seq_len = 16;
    config.shard_sequences = 8;
    let manifest = pmc_corpus::prepare(&config, |_| {}).unwrap();
    let shards = CorpusShards::open(&dir.path().join("corpus"), 5).unwrap();
    let sequences = shards.sequences();
    assert!(
        manifest.token_shards.len() >= 2 && sequences < 48,
        "{sequences} sequences"
    );
    let make = || {
        let device = Device::flex().autodiff();
        let mut model_config = tiny_config();
        model_config.vocab_size = manifest.vocab_size;
        let model = init_random(&model_config, WeightDType::F32, 42, &device);
        Trainer::new(model, model_config, train_config(2, 4), &device).unwrap()
    };
    // 12 steps of 4 sequences pass the end of an epoch.
    assert_resume_bit_exact(&shards, make, 7, 12);
    // PMC-LLaMA's sampling (one random window per paper per epoch) resumes as exactly.
    let papers = CorpusShards::open_with(
        &dir.path().join("corpus"),
        5,
        pmc_train::Sampling::PaperWindows,
    )
    .unwrap();
    assert_eq!(papers.sequences(), 6);
    assert_resume_bit_exact(&papers, make, 5, 9);
}

#[test]
fn a_diverging_run_stops_with_a_clear_error() {
    let d = data(16);
    let mut t = trainer(4, 4);
    t.config.schedule = CosineSchedule {
        peak_lr: 1e6,
        warmup_steps: 0,
        total_steps: 10,
        min_lr_ratio: 1.0,
    };
    t.config.max_grad_norm = None;
    let err = (0..20)
        .find_map(|_| t.step(&d).err())
        .expect("the loss should blow up");
    let message = err.to_string();
    assert!(
        matches!(err, pmc_train::TrainError::NonFinite { .. })
            && message.contains("last checkpoint is intact"),
        "{message}"
    );
}

/// LoRA: checkpoints hold the adapter only, a resumed run ends bit-identical, and the base
/// weights never move.
#[test]
fn lora_training_resumes_bit_exact_and_leaves_the_base_untouched() {
    let base_dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../pmc-model/tests/fixtures/gqa_tied");
    let make_with = |dropout: f64| {
        let device = Device::flex().autodiff();
        let loaded = pmc_model::load_model(&base_dir, &Default::default(), &device).unwrap();
        let mut model = loaded.model;
        let mut config = pmc_peft::AdapterConfig::new(
            4,
            8.0,
            pmc_peft::TargetModules::Names(vec![
                "q_proj".into(),
                "v_proj".into(),
                "down_proj".into(),
            ]),
        );
        config.lora_dropout = dropout;
        let adapter = pmc_peft::Adapter::init(&mut model, config.clone(), 9, &device).unwrap();
        let model = pmc_peft::prepare_for_training(model, &adapter).unwrap();
        let mut trainer = Trainer::new(model, loaded.config, train_config(2, 4), &device).unwrap();
        trainer.lora = Some(pmc_train::trainer::LoraRun {
            config,
            base: base_dir.clone(),
        });
        trainer
    };
    // With dropout on the adapters' input, so that resuming must also replay the masks.
    let make = || make_with(0.1);
    let trained = |mut t: Trainer, lanes: usize| {
        t.config.parallel_micro_batches = lanes;
        for _ in 0..3 {
            t.step(&data(16)).unwrap();
        }
        weights(&t)
    };
    let one_by_one = trained(make(), 1);
    assert!(
        trained(make(), 2) == one_by_one,
        "micro-batches side by side draw other dropout masks"
    );
    assert!(
        trained(make_with(0.0), 1) != one_by_one,
        "the dropout masks change nothing"
    );
    let before = make();
    let base_before: Vec<Vec<f32>> = weights(&before)
        .into_iter()
        .take(before.model.named_weights().len())
        .collect();
    assert_resume_bit_exact(&data(16), make, 3, 6);

    let mut t = before;
    for _ in 0..4 {
        t.step(&data(16)).unwrap();
    }
    let after = weights(&t);
    let n_base = base_before.len();
    assert_eq!(
        &after[..n_base],
        &base_before[..],
        "a frozen base weight changed"
    );
    // Every B (after the base weights come A, B of each module) has left zero.
    assert!(
        after[n_base..]
            .iter()
            .skip(1)
            .step_by(2)
            .all(|b| b.iter().any(|&v| v != 0.0)),
        "the adapter did not train"
    );
    // Dropout is applied in training: the losses with and without it differ.
    let (mut with, mut without) = (make_with(0.1), make_with(0.0));

    // (The first step has lr 0 in warmup and B starts at zero: compare the third.)
    for _ in 0..2 {
        with.step(&data(16)).unwrap();
        without.step(&data(16)).unwrap();
    }
    assert_ne!(
        with.step(&data(16)).unwrap().loss,
        without.step(&data(16)).unwrap().loss
    );
    // The checkpoint is a PEFT adapter directory, not a model.
    let dir = tempfile::tempdir().unwrap();
    let ckpt = Checkpointer::new(dir.path(), 1).save(&t).unwrap();
    assert!(ckpt.join("adapter_model.safetensors").exists());
    assert!(!ckpt.join("model.safetensors").exists());
}

/// Instruction data: the loss mask covers exactly the response and its EOS, never the prompt
/// or the padding; the masked loss equals the mean over those positions computed by hand.
#[test]
fn instruction_batches_mask_prompt_and_padding() {
    use pmc_train::{Example, SftData, Template};
    let base_dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../pmc-model/tests/fixtures/gqa_tied");
    let device = Device::flex();
    let loaded = pmc_model::load_model(&base_dir, &Default::default(), &device).unwrap();
    let tokenizer = loaded.tokenizer.unwrap();
    let examples = vec![
        Example {
            instruction: "Answer yes or no.".into(),
            input: "Is aspirin an NSAID?".into(),
            output: "yes".into(),
        },
        Example {
            instruction: "Name the organ.".into(),
            input: String::new(),
            output: "the liver, which filters blood".into(),
        },
    ];
    let data = SftData::new(&tokenizer, &examples, Template::PmcLlama, 512, 0).unwrap();
    let (batch, _) = data
        .batch(&pmc_train::Cursor::default(), 2, &device)
        .unwrap();
    let mask = batch
        .target_mask
        .clone()
        .unwrap()
        .to_data()
        .convert::<f32>()
        .try_to_vec::<f32>()
        .unwrap();
    let ids = batch
        .tokens
        .to_data()
        .convert::<i64>()
        .try_to_vec::<i64>()
        .unwrap();
    let len = batch.tokens.dims()[1];
    let eos = tokenizer.eos_ids[0] as i64;
    for row in 0..2 {
        let m = &mask[row * len..(row + 1) * len];
        let r = &ids[row * len..(row + 1) * len];
        let first = m.iter().position(|&v| v == 1.0).unwrap();
        let last = m.iter().rposition(|&v| v == 1.0).unwrap();
        assert!(
            m[first..=last].iter().all(|&v| v == 1.0),
            "the response is one contiguous span"
        );
        assert_eq!(r[last], eos, "the last target is EOS");
        let prompt = tokenizer
            .decode(&r[..first].iter().map(|&t| t as u32).collect::<Vec<_>>())
            .unwrap();
        assert!(prompt.contains("### Response:"), "{prompt:?}");
        let response = tokenizer
            .decode(&r[first..last].iter().map(|&t| t as u32).collect::<Vec<_>>())
            .unwrap();
        assert!(
            ["yes", "the liver, which filters blood"].contains(&response.trim()),
            "{response:?}"
        );
    }
    // The masked loss is the mean of -log p over the target positions only.
    let model = loaded.model;
    let loss =
        pmc_model::masked_causal_lm_loss(&model, batch.tokens.clone(), batch.target_mask.unwrap())
            .into_scalar::<f32>() as f64;
    let mut sum = 0.0;
    let mut count = 0;
    for row in 0..2 {
        let r: Vec<u32> = ids[row * len..(row + 1) * len]
            .iter()
            .map(|&t| t as u32)
            .collect();
        for j in 1..len {
            if mask[row * len + j] == 1.0 {
                sum -= pmc_model::score_continuations(&model, &r[..j], &[vec![r[j]]], &device)
                    .unwrap()[0]
                    .loglik;
                count += 1;
            }
        }
    }
    let manual = sum / count as f64;
    assert!(
        (loss - manual).abs() < 1e-4,
        "masked loss {loss} vs {manual}"
    );
}

/// Gradient checkpointing recomputes activations in the backward pass: same training, less
/// memory.
#[test]
fn gradient_checkpointing_trains_the_same() {
    let run = |device: Device| {
        let config = tiny_config();
        let model = init_random(&config, WeightDType::F32, 42, &device);
        let mut t = Trainer::new(model, config, train_config(2, 4), &device).unwrap();
        let d = data(16);
        let losses: Vec<f64> = (0..3).map(|_| t.step(&d).unwrap().loss).collect();
        (losses, weights(&t))
    };
    let (plain_loss, plain) = run(Device::flex().autodiff());
    let checkpointed = Device::flex().autodiff().gradient_checkpointing();
    let (ckpt_loss, ckpt) = run(checkpointed);
    for (a, b) in plain_loss.iter().zip(&ckpt_loss) {
        assert!((a - b).abs() < 1e-6, "{a} vs {b}");
    }
    let worst = plain
        .iter()
        .flatten()
        .zip(ckpt.iter().flatten())
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(worst < 1e-5, "weights differ by {worst}");
}
