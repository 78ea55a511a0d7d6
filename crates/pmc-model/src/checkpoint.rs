//! HF checkpoints: `config.json` + `model.safetensors`, or shards listed by
//! `model.safetensors.index.json`. Files are memory-mapped and each tensor is converted
//! straight into the dtype it is held in, so loading never holds a second copy of the model.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use burn::prelude::*;
use burn::tensor::{DType, TensorCreationOptions};
use half::{bf16, f16};
use memmap2::Mmap;
use safetensors::tensor::{Dtype as StDtype, Metadata, SafeTensors, TensorInfo, View};
use serde_json::{Value, json};

use crate::config::LlamaConfig;
pub use crate::config::WeightDType;
use crate::error::{ModelError, Result};
use crate::model::Llama;

/// The safetensors dtype of weights of `dtype`.
fn safetensors_dtype(dtype: WeightDType) -> StDtype {
    match dtype {
        WeightDType::F32 => StDtype::F32,
        WeightDType::BF16 => StDtype::BF16,
        WeightDType::F16 => StDtype::F16,
    }
}

/// Drops the whole pages of `mmap[offset..offset + len]` from the process's resident set.
///
/// A fully read checkpoint would otherwise stay resident twice, as file pages and as
/// tensors. The page cache keeps the data; touching the range again re-reads it.
pub(crate) fn release_pages(mmap: &Mmap, offset: usize, len: usize) {
    const PAGE: usize = 4096;
    let start = offset.div_ceil(PAGE) * PAGE;
    let end = (offset + len) / PAGE * PAGE;
    if end > start {
        // SAFETY: a read-only file mapping; dropped pages are re-read from the file if needed,
        // so no data that the program holds is lost.
        let _ = unsafe {
            mmap.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, start, end - start)
        };
    }
}

/// Converts little-endian raw tensor bytes of `from` into bytes of `to`.
///
/// Rounding to bf16/f16 is round-to-nearest-even, as torch's `.to()` does.
pub fn convert_bytes(
    raw: &[u8],
    from: StDtype,
    to: WeightDType,
) -> std::result::Result<Vec<u8>, String> {
    let same = matches!(
        (from, to),
        (StDtype::F32, WeightDType::F32)
            | (StDtype::BF16, WeightDType::BF16)
            | (StDtype::F16, WeightDType::F16)
    );
    if same {
        return Ok(raw.to_vec());
    }
    let widened: Box<dyn Iterator<Item = f32> + '_> = match from {
        StDtype::F32 => Box::new(
            raw.chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
        ),
        StDtype::BF16 => Box::new(
            raw.chunks_exact(2)
                .map(|b| bf16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32()),
        ),
        StDtype::F16 => Box::new(
            raw.chunks_exact(2)
                .map(|b| f16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32()),
        ),
        other => {
            return Err(format!(
                "dtype {other:?} is not a floating-point weight type"
            ));
        }
    };
    let mut out = Vec::with_capacity(raw.len() / (from.bitsize() / 8) * to.size());
    match to {
        WeightDType::F32 => widened.for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
        WeightDType::BF16 => {
            widened.for_each(|x| out.extend_from_slice(&bf16::from_f32(x).to_le_bytes()))
        }
        WeightDType::F16 => {
            widened.for_each(|x| out.extend_from_slice(&f16::from_f32(x).to_le_bytes()))
        }
    }
    Ok(out)
}

/// A memory-mapped safetensors file whose header is parsed once, when it is opened.
struct MappedFile {
    path: PathBuf,
    mmap: Mmap,
    /// Where tensor data starts (after the length prefix and the JSON header).
    data_start: usize,
    metadata: Metadata,
}

impl MappedFile {
    fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).map_err(|e| ModelError::io(path, e))?;
        // SAFETY: the mapping is read-only; a checkpoint rewritten while it is being loaded
        // is outside what any loader can guard against.
        let mmap = unsafe { Mmap::map(&file) }.map_err(|e| ModelError::io(path, e))?;
        // Validates the header and that the file holds every byte it promises.
        let (header_len, metadata) = SafeTensors::read_metadata(&mmap).map_err(|e| {
            ModelError::checkpoint(
                path,
                format!("not a valid safetensors file (truncated or corrupt?): {e}"),
            )
        })?;
        Ok(Self {
            path: path.to_path_buf(),
            mmap,
            // The header follows its little-endian u64 length.
            data_start: 8 + header_len,
            metadata,
        })
    }

    /// The bytes of a tensor of this file.
    fn data(&self, info: &TensorInfo) -> &[u8] {
        let (start, end) = info.data_offsets;
        &self.mmap[self.data_start + start..self.data_start + end]
    }

    /// Drops the pages of a tensor from the resident set once they have been copied.
    fn release(&self, info: &TensorInfo) {
        let (start, end) = info.data_offsets;
        release_pages(&self.mmap, self.data_start + start, end - start);
    }
}

/// The safetensors files of a checkpoint and which file holds which tensor.
pub struct SafetensorsCheckpoint {
    files: Vec<MappedFile>,
    location: HashMap<String, usize>,
    dir: PathBuf,
}

impl SafetensorsCheckpoint {
    /// Opens `dir/model.safetensors`, or the shards named by `dir/model.safetensors.index.json`.
    pub fn open(dir: &Path) -> Result<Self> {
        let index_path = dir.join("model.safetensors.index.json");
        let single = dir.join("model.safetensors");
        let mut files = Vec::new();
        let mut location = HashMap::new();
        if index_path.exists() {
            let text =
                std::fs::read_to_string(&index_path).map_err(|e| ModelError::io(&index_path, e))?;
            let index: Value = serde_json::from_str(&text).map_err(|source| ModelError::Json {
                path: index_path.clone(),
                source,
            })?;
            let map = index
                .get("weight_map")
                .and_then(Value::as_object)
                .ok_or_else(|| {
                    ModelError::config(&index_path, "weight_map", "missing or not an object")
                })?;
            let mut shard_ids: BTreeMap<String, usize> = BTreeMap::new();
            for (tensor, shard) in map {
                let shard = shard.as_str().ok_or_else(|| {
                    ModelError::config(
                        &index_path,
                        format!("weight_map.{tensor}"),
                        "expected a file name",
                    )
                })?;
                let next = shard_ids.len();
                let id = *shard_ids.entry(shard.to_string()).or_insert(next);
                location.insert(tensor.clone(), id);
            }
            let mut names: Vec<(usize, String)> =
                shard_ids.into_iter().map(|(n, i)| (i, n)).collect();
            names.sort();
            for (_, name) in names {
                files.push(MappedFile::open(&dir.join(name))?);
            }
            // The index may lie; trust the files themselves for what they contain.
            for (tensor, &id) in &location {
                if files[id].metadata.info(tensor).is_none() {
                    return Err(ModelError::tensor(
                        &files[id].path,
                        tensor,
                        format!(
                            "listed in {} but absent from this shard",
                            index_path.display()
                        ),
                    ));
                }
            }
        } else if single.exists() {
            let file = MappedFile::open(&single)?;
            for name in file.metadata.tensors().into_keys() {
                location.insert(name, 0);
            }
            files.push(file);
        } else {
            return Err(ModelError::checkpoint(
                dir,
                "no model.safetensors or model.safetensors.index.json in this directory",
            ));
        }
        Ok(Self {
            files,
            location,
            dir: dir.to_path_buf(),
        })
    }

    /// Names of all tensors in the checkpoint.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.location.keys().map(String::as_str)
    }

    /// Reads tensor `name`, checks it has `shape` (a `[1, n]` request also accepts a 1-D
    /// `[n]` tensor), and converts it to `dtype` on `device`.
    pub fn read(
        &self,
        name: &str,
        shape: &[usize],
        dtype: WeightDType,
        device: &Device,
    ) -> Result<Tensor<2>> {
        let id = *self
            .location
            .get(name)
            .ok_or_else(|| ModelError::tensor(&self.dir, name, "missing from the checkpoint"))?;
        let file = &self.files[id];
        let info = file
            .metadata
            .info(name)
            .ok_or_else(|| ModelError::tensor(&file.path, name, "missing from this file"))?;
        let ok = info.shape == shape || (shape[0] == 1 && info.shape == [shape[1]]);
        if !ok {
            return Err(ModelError::tensor(
                &file.path,
                name,
                format!(
                    "shape {:?}, expected {:?} from config.json",
                    info.shape, shape
                ),
            ));
        }
        let bytes = convert_bytes(file.data(info), info.dtype, dtype)
            .map_err(|m| ModelError::tensor(&file.path, name, m))?;
        file.release(info);
        let data = TensorData::from_bytes_vec(bytes, shape.to_vec(), dtype.dtype());
        Ok(Tensor::from_data(
            data,
            TensorCreationOptions::new(device.clone()).with_dtype(dtype.dtype()),
        ))
    }
}

/// Reads a model from safetensors with the given config.
pub fn load_safetensors(
    dir: &Path,
    config: &LlamaConfig,
    options: &crate::LoadOptions,
    device: &Device,
) -> Result<Llama> {
    let ckpt = SafetensorsCheckpoint::open(dir)?;
    let mut used = std::collections::HashSet::new();
    let model = crate::build_model(config, options, device, dir, |name, shape| {
        used.insert(name.to_string());
        ckpt.read(name, shape, options.dtype, device)
    })?;
    // Old checkpoints carry RoPE buffers; anything else unused is worth a warning.
    for name in ckpt.names() {
        if !used.contains(name) && !name.ends_with("rotary_emb.inv_freq") {
            if config.tie_word_embeddings && name == "lm_head.weight" {
                continue;
            }
            tracing::warn!(tensor = name, dir = %dir.display(), "unused tensor in checkpoint");
        }
    }
    Ok(model)
}

/// Options of [`save_hf`].
#[derive(Debug, Clone, Copy)]
pub struct SaveOptions {
    /// The dtype of the written weights.
    pub dtype: WeightDType,
    /// Shards are cut above this many bytes of tensor data (HF's default is 5 GB).
    pub max_shard_bytes: usize,
}

impl Default for SaveOptions {
    fn default() -> Self {
        Self {
            dtype: WeightDType::F32,
            max_shard_bytes: 2_000_000_000,
        }
    }
}

struct OwnedView {
    dtype: StDtype,
    shape: Vec<usize>,
    data: Vec<u8>,
}

impl View for OwnedView {
    fn dtype(&self) -> StDtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> std::borrow::Cow<'_, [u8]> {
        (&self.data).into()
    }
    fn data_len(&self) -> usize {
        self.data.len()
    }
}

/// Writes `model` as an HF checkpoint into `dir`: `config.json` and `model.safetensors`, or
/// `model-0000k-of-0000n.safetensors` shards plus `model.safetensors.index.json` when the
/// weights exceed `max_shard_bytes`. Each file is written to a temporary name and renamed, so
/// a failed save never leaves a half-written file under a real name.
pub fn save_hf(
    model: &Llama,
    config: &LlamaConfig,
    dir: &Path,
    options: SaveOptions,
) -> Result<()> {
    if model.is_quantized() {
        return Err(ModelError::checkpoint(
            dir,
            "a quantized model cannot be saved as safetensors; load it with a dense --dtype",
        ));
    }
    std::fs::create_dir_all(dir).map_err(|e| ModelError::io(dir, e))?;
    let weights = model.named_weights();
    let elem = options.dtype.size();

    let mut shards: Vec<Vec<usize>> = vec![Vec::new()];
    let mut shard_bytes = 0;
    for (i, w) in weights.iter().enumerate() {
        let bytes = w.shape.iter().product::<usize>() * elem;
        if shard_bytes > 0 && shard_bytes + bytes > options.max_shard_bytes {
            shards.push(Vec::new());
            shard_bytes = 0;
        }
        shards.last_mut().expect("one shard").push(i);
        shard_bytes += bytes;
    }
    let n = shards.len();
    let file_name = |k: usize| {
        if n == 1 {
            "model.safetensors".to_string()
        } else {
            format!("model-{:05}-of-{:05}.safetensors", k + 1, n)
        }
    };

    let mut weight_map = serde_json::Map::new();
    let mut total = 0usize;
    for (k, shard) in shards.iter().enumerate() {
        let mut views = Vec::with_capacity(shard.len());
        for &i in shard {
            let w = &weights[i];
            let data = w.value.to_data();
            let (bytes, _, dtype) = data.into_parts();
            let from = match dtype {
                DType::F32 => StDtype::F32,
                DType::BF16 => StDtype::BF16,
                DType::F16 => StDtype::F16,
                other => {
                    return Err(ModelError::tensor(
                        dir,
                        &w.name,
                        format!("cannot save dtype {other:?}"),
                    ));
                }
            };
            let data = convert_bytes(&bytes, from, options.dtype)
                .map_err(|m| ModelError::tensor(dir, &w.name, m))?;
            total += data.len();
            weight_map.insert(w.name.clone(), json!(file_name(k)));
            views.push((
                w.name.clone(),
                OwnedView {
                    dtype: safetensors_dtype(options.dtype),
                    shape: w.shape.clone(),
                    data,
                },
            ));
        }
        let final_path = dir.join(file_name(k));
        let tmp = temp_path(&final_path);
        let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
        safetensors::tensor::serialize_to_file(views, Some(metadata), &tmp)
            .map_err(|e| ModelError::checkpoint(&tmp, e.to_string()))?;
        rename(&tmp, &final_path)?;
    }
    finish_hf(dir, config, options.dtype, n, weight_map, total)
}

/// The files of an HF checkpoint besides the weights: the index of a sharded one (and no
/// stale `model.safetensors` beside it, or no stale index beside a single file) and
/// `config.json` declaring the weights' dtype.
fn finish_hf(
    dir: &Path,
    config: &LlamaConfig,
    dtype: WeightDType,
    shards: usize,
    weight_map: serde_json::Map<String, Value>,
    total_bytes: usize,
) -> Result<()> {
    if shards > 1 {
        let index = json!({"metadata": {"total_size": total_bytes}, "weight_map": weight_map});
        write_atomic(&dir.join("model.safetensors.index.json"), &pretty(&index))?;
        remove_if_exists(&dir.join("model.safetensors"))?;
    } else {
        remove_if_exists(&dir.join("model.safetensors.index.json"))?;
    }
    let mut config = config.clone();
    config.dtype = Some(dtype);
    write_atomic(&dir.join("config.json"), &pretty(&config.to_json()))?;
    Ok(())
}

/// Writes an f32 HF checkpoint one shard file at a time, for writers that never hold the
/// whole model (a sharded trainer gathering one unit after another): shard `k` of `n` is
/// `model-0000{k+1}-of-0000n.safetensors` (or `model.safetensors` when `n` is 1), and
/// [`ShardedHfWriter::finish`] writes the index and `config.json`.
pub struct ShardedHfWriter {
    dir: PathBuf,
    shards: usize,
    weight_map: serde_json::Map<String, Value>,
    total_bytes: usize,
}

impl ShardedHfWriter {
    /// A checkpoint of `shards` files in `dir` (created).
    pub fn new(dir: &Path, shards: usize) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|e| ModelError::io(dir, e))?;
        Ok(ShardedHfWriter {
            dir: dir.to_path_buf(),
            shards: shards.max(1),
            weight_map: Default::default(),
            total_bytes: 0,
        })
    }

    fn file_name(&self, k: usize) -> String {
        if self.shards == 1 {
            "model.safetensors".into()
        } else {
            format!("model-{:05}-of-{:05}.safetensors", k + 1, self.shards)
        }
    }

    /// Writes shard `k`: `(HF name, shape, values)` of its tensors.
    pub fn write_shard(&mut self, k: usize, tensors: &[(&str, &[usize], &[f32])]) -> Result<()> {
        let name = self.file_name(k);
        let path = self.dir.join(&name);
        let tmp = temp_path(&path);
        let views = tensors
            .iter()
            .map(|(tensor, shape, values)| {
                self.weight_map.insert(tensor.to_string(), json!(name));
                self.total_bytes += values.len() * 4;
                safetensors::tensor::TensorView::new(
                    StDtype::F32,
                    shape.to_vec(),
                    bytemuck::cast_slice(values),
                )
                .map(|v| (tensor.to_string(), v))
                .map_err(|e| ModelError::tensor(&path, *tensor, e.to_string()))
            })
            .collect::<Result<Vec<_>>>()?;
        let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
        safetensors::tensor::serialize_to_file(views, Some(metadata), &tmp)
            .map_err(|e| ModelError::checkpoint(&tmp, e.to_string()))?;
        rename(&tmp, &path)
    }

    /// The index (when sharded) and `config.json`.
    pub fn finish(self, config: &LlamaConfig) -> Result<()> {
        finish_hf(
            &self.dir,
            config,
            WeightDType::F32,
            self.shards,
            self.weight_map,
            self.total_bytes,
        )
    }
}

fn pretty(value: &Value) -> Vec<u8> {
    let mut text = serde_json::to_vec_pretty(value).expect("JSON values serialise");
    text.push(b'\n');
    text
}

pub(crate) fn temp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".tmp{}", std::process::id()));
    path.with_file_name(name)
}

pub(crate) fn rename(from: &Path, to: &Path) -> Result<()> {
    std::fs::rename(from, to).map_err(|e| ModelError::io(to, e))
}

fn remove_if_exists(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(ModelError::io(path, e)),
        _ => Ok(()),
    }
}

/// Puts the complete directory `tmp` in the place of `dir`. A previous `dir` is first renamed
/// aside and removed only once the new one stands under its name, so at every moment one
/// whole version exists (checkpoints, adapters).
pub fn replace_dir(tmp: &Path, dir: &Path) -> Result<()> {
    if dir.exists() {
        let old = dir.with_extension("old");
        rename(dir, &old)?;
        rename(tmp, dir)?;
        std::fs::remove_dir_all(&old).map_err(|e| ModelError::io(&old, e))
    } else {
        rename(tmp, dir)
    }
}

/// Writes `bytes` to `path` through a temporary file, fsync and rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = temp_path(path);
    let mut file = File::create(&tmp).map_err(|e| ModelError::io(&tmp, e))?;
    file.write_all(bytes)
        .and_then(|_| file.sync_all())
        .map_err(|e| ModelError::io(&tmp, e))?;
    rename(&tmp, path)
}
