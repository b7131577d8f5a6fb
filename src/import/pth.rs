//! PyTorch `.pth` checkpoints, read from bytes (no file system, so it runs in the browser too).
//!
//! Two formats: the zip archive `torch.save` writes since PyTorch 1.6 (`<name>/data.pkl`
//! holding the object, one `<name>/data/<key>` entry per storage), and the older raw stream
//! (magic number, protocol, system info and object pickles, the storage keys, then each storage
//! as an i64 element count followed by its bytes). candle's pickle reader (`Stack`) decodes the
//! object; this module checks the pickle first so that malformed input becomes an error rather
//! than a panic or a huge allocation, finds the dict of tensors (the object itself, or a dict
//! nested under `state_dict`, `model`, ...), and rebuilds each floating-point tensor from its
//! storage, offset, size and strides as f32. Integer tensors (`num_batches_tracked`) are
//! dropped, as the safetensors loader drops them.

use std::collections::HashMap;
use std::io::{Cursor, Read};

use candle_core::pickle::{Object, Stack};
use candle_core::{Device, Tensor};
use half::{bf16, f16};

use super::StateDict;
use crate::error::{Error, Result};

/// The first pickle of an old-format checkpoint: the magic number 0x1950a86a20f9469cfc6c.
const LEGACY_MAGIC: &[u8] = b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19.";

/// Keys under which training scripts commonly keep the model's weights, most likely first.
const PREFERRED_KEYS: &[&str] = &[
    "state_dict",
    "model_state_dict",
    "model",
    "net",
    "network",
    "module",
    "weights",
    "params",
];

/// How deep dicts nested in the checkpoint are searched for the state dict.
const MAX_DEPTH: usize = 4;

/// More elements than this in one tensor is not a model this tool can run.
const MAX_ELEMENTS: usize = 1 << 31;

/// `.pth` files are zip archives (PyTorch >= 1.6) or raw pickles. A safetensors file, whose
/// little-endian header length may well start with 0x80 too, is recognised first.
pub fn looks_like_pth(bytes: &[u8]) -> bool {
    !looks_like_safetensors(bytes) && (bytes.starts_with(b"PK\x03\x04") || bytes.starts_with(&[0x80]))
}

/// An 8-byte header length that fits the file, followed by the JSON header's `{`.
fn looks_like_safetensors(bytes: &[u8]) -> bool {
    let Some(len) = bytes
        .get(..8)
        .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
    else {
        return false;
    };
    bytes.get(8) == Some(&b'{') && len.checked_add(8).is_some_and(|end| end <= bytes.len() as u64)
}

/// Reads the state dict of a `torch.save`d checkpoint. `source` names it in error messages.
/// Floating-point tensors (f32, f64, f16, bf16) become f32 tensors on `device`.
pub fn state_dict_from_pth(bytes: &[u8], source: &str, device: &Device) -> Result<StateDict> {
    let invalid = |reason: String| Error::InvalidCheckpoint {
        what: source.to_string(),
        reason,
    };
    let tensors = read_checkpoint(bytes).map_err(invalid)?;
    let mut map = HashMap::with_capacity(tensors.len());
    for (name, shape, values) in tensors {
        let t = Tensor::from_vec(values, shape, device)?;
        map.insert(name, t);
    }
    Ok(StateDict::new(map, source))
}

/// A decoded tensor: name, shape and values in row-major order.
type RawTensor = (String, Vec<usize>, Vec<f32>);

type Reason<T> = std::result::Result<T, String>;

fn read_checkpoint(bytes: &[u8]) -> Reason<Vec<RawTensor>> {
    if bytes.is_empty() {
        return Err("the file is empty (0 bytes)".into());
    }
    if bytes.starts_with(b"PK\x03\x04") {
        read_zip(bytes)
    } else if bytes.starts_with(LEGACY_MAGIC) {
        read_legacy(bytes)
    } else if bytes.starts_with(&[0x80]) {
        Err("it is a Python pickle but not one written by torch.save (no PyTorch magic number)".into())
    } else {
        Err("it is neither a zip archive (torch.save since PyTorch 1.6) nor a pickle (older torch.save)".into())
    }
}

// ---------------------------------------------------------------------------------------------
// The two container formats.

fn read_zip(bytes: &[u8]) -> Reason<Vec<RawTensor>> {
    let mut archive =
        zip::ZipArchive::new(Cursor::new(bytes)).map_err(|e| format!("broken zip archive (truncated?): {e}"))?;
    let names: Vec<String> = archive
        .file_names()
        .filter_map(|n| n.ok())
        .map(|n| n.into_owned())
        .collect();
    let Some(pickle_name) = names
        .iter()
        .filter(|n| n.ends_with("data.pkl") && n.matches('/').count() <= 1)
        .min_by_key(|n| n.len())
    else {
        if names
            .iter()
            .any(|n| n.ends_with("constants.pkl") || n.contains("/code/"))
        {
            return Err(
                "it is a TorchScript archive (torch.jit.save); save the model's state_dict() with torch.save instead"
                    .into(),
            );
        }
        return Err("a zip archive without data.pkl: not a PyTorch checkpoint".into());
    };
    let prefix = pickle_name.strip_suffix("data.pkl").unwrap_or_default().to_string();
    let byteorder = format!("{prefix}byteorder");
    if names.contains(&byteorder) {
        let order = read_entry(&mut archive, &byteorder)?;
        if order.trim_ascii() != b"little" {
            return Err(format!(
                "its tensors are stored {}-endian; only little-endian is supported",
                String::from_utf8_lossy(&order).trim()
            ));
        }
    }
    let pickle = read_entry(&mut archive, pickle_name)?;
    let (object, _) = unpickle(&pickle)?;
    let tensors = find_state_dict(&object)?;
    let mut storages: HashMap<String, Vec<u8>> = HashMap::new();
    for (_, t) in &tensors {
        if !storages.contains_key(&t.storage.key) {
            let data = read_entry(&mut archive, &format!("{prefix}data/{}", t.storage.key))?;
            storages.insert(t.storage.key.clone(), data);
        }
    }
    decode_all(tensors, &storages)
}

fn read_entry(archive: &mut zip::ZipArchive<Cursor<&[u8]>>, name: &str) -> Reason<Vec<u8>> {
    let mut file = archive.by_name(name).map_err(|e| format!("zip entry `{name}`: {e}"))?;
    let method = match file.compression() {
        zip::CompressionMethod::STORE => None,
        zip::CompressionMethod::DEFLATE => Some("Deflate".to_string()),
        other => Some(format!("{other:?}")),
    };
    if let Some(method) = method {
        return Err(format!(
            "zip entry `{name}` is compressed ({method}); torch.save stores entries uncompressed, and \
             candle-xai reads only such checkpoints (load and save it again with torch.save)"
        ));
    }
    let mut data = Vec::new();
    file.read_to_end(&mut data)
        .map_err(|e| format!("zip entry `{name}` cannot be read (truncated or corrupt?): {e}"))?;
    Ok(data)
}

fn read_legacy(bytes: &[u8]) -> Reason<Vec<RawTensor>> {
    let mut pos = LEGACY_MAGIC.len();
    let mut next = |what: &str| -> Reason<Object> {
        let rest = &bytes[pos..];
        let (object, used) = unpickle(rest).map_err(|e| format!("{what}: {e}"))?;
        pos += used;
        Ok(object)
    };
    match next("protocol version")? {
        Object::Int(1001) | Object::Long(1001) => {}
        other => return Err(format!("unknown legacy protocol version {other:?}")),
    }
    if let Object::Dict(info) = next("system info")? {
        let little = info
            .iter()
            .find(|(k, _)| *k == Object::Unicode("little_endian".into()))
            .map(|(_, v)| v.clone());
        if little == Some(Object::Bool(false)) {
            return Err("its tensors are stored big-endian; only little-endian is supported".into());
        }
    }
    let object = next("checkpoint object")?;
    let keys = match next("storage keys")? {
        Object::List(keys) => keys
            .into_iter()
            .map(|k| k.unicode().map_err(|k| format!("storage key {k:?} is not a string")))
            .collect::<Reason<Vec<_>>>()?,
        other => return Err(format!("expected the list of storage keys, found {other:?}")),
    };
    // Every storage the object refers to, also those of tensors that are not kept: their
    // element size is needed to step over them.
    let mut element_sizes = HashMap::new();
    collect_storages(&object, &mut element_sizes, 0)?;
    let mut storages = HashMap::new();
    for key in keys {
        let size = *element_sizes
            .get(&key)
            .ok_or_else(|| format!("storage `{key}` is listed but no tensor uses it"))?;
        let count = bytes
            .get(pos..pos + 8)
            .ok_or("the file ends before all storages (truncated)")?;
        let count = u64::from_le_bytes(count.try_into().expect("8 bytes"));
        let len = usize::try_from(count)
            .ok()
            .and_then(|c| c.checked_mul(size))
            .ok_or("a storage size overflows")?;
        let start = pos + 8;
        let data = start
            .checked_add(len)
            .and_then(|end| bytes.get(start..end))
            .ok_or("the file ends before all storages (truncated)")?;
        storages.insert(key, data.to_vec());
        pos = start + len;
    }
    let tensors = find_state_dict(&object)?;
    decode_all(tensors, &storages)
}

// ---------------------------------------------------------------------------------------------
// Pickles.

/// Checks that `bytes` starts with a pickle candle's reader can decode (known op-codes, every
/// argument inside the data) and decodes it. Returns the object and the pickle's length.
fn unpickle(bytes: &[u8]) -> Reason<(Object, usize)> {
    let len = scan_pickle(bytes)?;
    let decoded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let mut stack = Stack::empty();
        let mut cursor = Cursor::new(&bytes[..len]);
        stack.read_loop(&mut cursor)?;
        stack.finalize()
    }));
    match decoded {
        Ok(Ok(object)) => Ok((object, len)),
        Ok(Err(e)) => Err(format!("malformed pickle: {}", crate::error::candle_message(&e))),
        Err(_) => Err("malformed pickle (the reader gave up)".into()),
    }
}

/// Nesting deeper than this is refused: candle's reader, its error messages and the object's
/// `Drop` all recurse once per level, so a deep pickle would overflow the stack.
const MAX_PICKLE_DEPTH: u32 = 1000;
/// candle's reader copies an object whenever the pickle memoises or recalls it. More copied
/// nodes than this (a pickle that doubles an object at each step) is refused; a real
/// checkpoint copies a few per tensor.
const MAX_PICKLE_COPIES: u64 = 10_000_000;

/// What the scan knows of an object on the pickle's stack: how deeply it nests and how many
/// nodes it holds (what a copy of it costs).
#[derive(Clone, Copy)]
struct Extent {
    depth: u32,
    nodes: u64,
}

impl Extent {
    const LEAF: Extent = Extent { depth: 1, nodes: 1 };
}

/// The pickle's stack as the scan follows it: an extent per object, None for a MARK.
#[derive(Default)]
struct ScanStack {
    items: Vec<Option<Extent>>,
    memo: HashMap<u32, Extent>,
    copies: u64,
}

impl ScanStack {
    fn pop(&mut self) -> Reason<Extent> {
        match self.items.pop() {
            Some(Some(extent)) => Ok(extent),
            _ => Err("malformed pickle: an op-code takes an object the stack does not hold".into()),
        }
    }

    fn pop_to_mark(&mut self) -> Reason<Vec<Extent>> {
        let mark = self
            .items
            .iter()
            .rposition(Option::is_none)
            .ok_or("malformed pickle: no MARK before an op-code that needs one")?;
        let items = self.items.split_off(mark + 1);
        self.items.pop();
        Ok(items.into_iter().flatten().collect())
    }

    /// `parts` added to `into` (a new container when None): one level deeper than its deepest part.
    fn contain(&self, into: Option<Extent>, parts: &[Extent]) -> Reason<Extent> {
        let mut extent = into.unwrap_or(Extent::LEAF);
        for part in parts {
            extent.depth = extent.depth.max(part.depth + 1);
            extent.nodes = extent.nodes.saturating_add(part.nodes);
        }
        if extent.depth > MAX_PICKLE_DEPTH {
            return Err(format!(
                "the pickle nests objects more than {MAX_PICKLE_DEPTH} levels deep; no checkpoint does"
            ));
        }
        Ok(extent)
    }

    fn push_container(&mut self, parts: &[Extent]) -> Reason<()> {
        let extent = self.contain(None, parts)?;
        self.items.push(Some(extent));
        Ok(())
    }

    /// Adds `parts` to the object on top of the stack (APPEND, SETITEM and their batches).
    fn add_to_top(&mut self, parts: &[Extent]) -> Reason<()> {
        let top = self.pop()?;
        let extent = self.contain(Some(top), parts)?;
        self.items.push(Some(extent));
        Ok(())
    }

    /// Accounts for candle's reader copying `extent`.
    fn copy(&mut self, extent: Extent) -> Reason<Extent> {
        self.copies = self.copies.saturating_add(extent.nodes);
        if self.copies > MAX_PICKLE_COPIES {
            return Err(format!(
                "the pickle copies more than {MAX_PICKLE_COPIES} objects through its memo (a pickle bomb?)"
            ));
        }
        Ok(extent)
    }

    fn memo_put(&mut self, id: u32) -> Reason<()> {
        let top = match self.items.last() {
            Some(Some(top)) => *top,
            _ => return Err("malformed pickle: memoises an object the stack does not hold".into()),
        };
        let copy = self.copy(top)?;
        self.memo.insert(id, copy);
        Ok(())
    }

    fn memo_get(&mut self, id: u32) -> Reason<()> {
        let stored = *self
            .memo
            .get(&id)
            .ok_or_else(|| format!("malformed pickle: recalls memo entry {id}, which it never stored"))?;
        let copy = self.copy(stored)?;
        self.items.push(Some(copy));
        Ok(())
    }
}

/// Walks the op-codes of the pickle at the start of `bytes`, following what each does to the
/// stack; returns its length up to STOP. Refuses what candle's reader would choke on: unknown
/// op-codes, arguments past the end, nesting past [`MAX_PICKLE_DEPTH`] and memo copies past
/// [`MAX_PICKLE_COPIES`].
fn scan_pickle(bytes: &[u8]) -> Reason<usize> {
    let truncated = || "the pickle is truncated".to_string();
    let mut stack = ScanStack::default();
    let mut pos = 0;
    let arg = |pos: usize, n: usize| -> Reason<&[u8]> { bytes.get(pos..pos + n).ok_or_else(truncated) };
    let le_u32 = |b: &[u8]| u32::from_le_bytes(b.try_into().expect("4 bytes"));
    loop {
        let op = *bytes.get(pos).ok_or_else(truncated)?;
        pos += 1;
        let skip = match op {
            b'.' => return Ok(pos),
            // PROTO, BININT1, BINPUT, BINGET
            0x80 | b'K' | b'q' | b'h' => 1,
            b'M' => 2,
            b'J' | b'r' | b'j' => 4,
            b'G' => 8,
            b'X' => 4 + le_u32(arg(pos, 4)?) as usize,
            0x8a => {
                let n = arg(pos, 1)?[0] as usize;
                if n > 8 {
                    return Err(format!("an integer of {n} bytes is too large"));
                }
                1 + n
            }
            b'c' => {
                let lines = bytes.get(pos..).ok_or_else(truncated)?;
                let first = lines.iter().position(|&b| b == b'\n').ok_or_else(truncated)?;
                let second = lines[first + 1..].iter().position(|&b| b == b'\n').ok_or_else(truncated)?;
                first + second + 2
            }
            b')' | b'R' | b'(' | b't' | b'Q' | 0x85 | 0x86 | 0x87 | 0x88 | 0x89 | b'N' | b's' | b'u' | b'}' | b'd' | b'b' | 0x81 | b']' | b'a' | b'e' => 0,
            other => {
                return Err(format!(
                    "the pickle uses op-code 0x{other:02x}, which candle's reader does not know (saved with pickle_protocol > 2?)"
                ))
            }
        };
        let args = arg(pos, skip)?;
        pos += skip;
        match op {
            0x80 => {}
            b'(' => stack.items.push(None),
            // TUPLE, DICT
            b't' | b'd' => {
                let parts = stack.pop_to_mark()?;
                stack.push_container(&parts)?;
            }
            // TUPLE1..3
            0x85..=0x87 => {
                let parts = (0..op - 0x84).map(|_| stack.pop()).collect::<Reason<Vec<_>>>()?;
                stack.push_container(&parts)?;
            }
            // REDUCE, NEWOBJ, BUILD: two objects make one.
            b'R' | 0x81 | b'b' => {
                let parts = [stack.pop()?, stack.pop()?];
                stack.push_container(&parts)?;
            }
            // BINPERSID
            b'Q' => {
                let part = stack.pop()?;
                stack.push_container(&[part])?;
            }
            // APPEND, SETITEM, APPENDS, SETITEMS
            b'a' => {
                let part = stack.pop()?;
                stack.add_to_top(&[part])?;
            }
            b's' => {
                let parts = [stack.pop()?, stack.pop()?];
                stack.add_to_top(&parts)?;
            }
            b'e' | b'u' => {
                let parts = stack.pop_to_mark()?;
                stack.add_to_top(&parts)?;
            }
            b'q' => stack.memo_put(u32::from(args[0]))?,
            b'r' => stack.memo_put(le_u32(args))?,
            b'h' => stack.memo_get(u32::from(args[0]))?,
            b'j' => stack.memo_get(le_u32(args))?,
            // Everything else pushes one new object.
            _ => stack.items.push(Some(Extent::LEAF)),
        }
    }
}

fn int(object: &Object, what: &str) -> Reason<usize> {
    match *object {
        Object::Int(v) if v >= 0 => Ok(v as usize),
        Object::Long(v) if v >= 0 => usize::try_from(v).map_err(|_| format!("{what} {v} is too large")),
        ref other => Err(format!("{what} should be a non-negative integer, found {other:?}")),
    }
}

fn ints(object: &Object, what: &str) -> Reason<Vec<usize>> {
    match object {
        Object::Tuple(items) | Object::List(items) => items.iter().map(|i| int(i, what)).collect(),
        other => Err(format!("{what} should be a tuple, found {other:?}")),
    }
}

// ---------------------------------------------------------------------------------------------
// Tensors inside the object.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Element {
    F32,
    F64,
    F16,
    BF16,
    /// Integer, bool or complex storages: kept out of the state dict.
    Other(usize),
}

impl Element {
    fn from_storage_class(class: &str) -> Reason<Self> {
        Ok(match class {
            "FloatStorage" => Element::F32,
            "DoubleStorage" => Element::F64,
            "HalfStorage" => Element::F16,
            "BFloat16Storage" => Element::BF16,
            "LongStorage" | "ComplexFloatStorage" => Element::Other(8),
            "IntStorage" => Element::Other(4),
            "ShortStorage" => Element::Other(2),
            "CharStorage" | "ByteStorage" | "BoolStorage" | "QUInt8Storage" | "QInt8Storage" => Element::Other(1),
            "ComplexDoubleStorage" => Element::Other(16),
            other => return Err(format!("unsupported storage type `{other}`")),
        })
    }

    fn size(self) -> usize {
        match self {
            Element::F32 => 4,
            Element::F64 => 8,
            Element::F16 | Element::BF16 => 2,
            Element::Other(n) => n,
        }
    }
}

#[derive(Debug, Clone)]
struct StorageRef {
    key: String,
    element: Element,
}

#[derive(Debug, Clone)]
struct TensorRef {
    storage: StorageRef,
    offset: usize,
    size: Vec<usize>,
    stride: Vec<usize>,
}

/// The storage a persistent id `('storage', torch.FloatStorage, key, location, numel[, view])` names.
fn storage_ref(pid: &Object) -> Reason<StorageRef> {
    let Object::Tuple(pid) = pid else {
        return Err(format!("unexpected persistent id {pid:?}"));
    };
    match pid.as_slice() {
        [Object::Unicode(kind), Object::Class { class_name, .. }, Object::Unicode(key), _location, _numel, rest @ ..]
            if kind == "storage" =>
        {
            if rest.iter().any(|v| *v != Object::None) {
                return Err(format!(
                    "storage `{key}` is a view of another storage (very old PyTorch); re-save the checkpoint"
                ));
            }
            Ok(StorageRef {
                key: key.clone(),
                element: Element::from_storage_class(class_name)?,
            })
        }
        _ => Err(format!("unexpected persistent id {pid:?}")),
    }
}

/// `Some` when `object` rebuilds a tensor (`torch._utils._rebuild_tensor_v2` and the wrappers
/// around it); `None` for anything else.
fn tensor_ref(object: &Object) -> Option<Reason<TensorRef>> {
    let (callable, args) = match object {
        Object::Reduce { callable, args } => (callable, args),
        Object::Build { callable, .. } => return tensor_ref(callable),
        _ => return None,
    };
    let Object::Class {
        module_name,
        class_name,
    } = &**callable
    else {
        return None;
    };
    let Object::Tuple(args) = &**args else { return None };
    match (module_name.as_str(), class_name.as_str()) {
        ("torch._utils", "_rebuild_tensor_v2" | "_rebuild_tensor" | "_rebuild_tensor_v3") => Some(rebuild_args(args)),
        ("torch._utils", "_rebuild_parameter" | "_rebuild_parameter_with_state") => args.first().and_then(tensor_ref),
        ("torch._tensor", "_rebuild_from_type_v2") => match args.as_slice() {
            [func, _type, inner, ..] => tensor_ref(&Object::Reduce {
                callable: Box::new(func.clone()),
                args: Box::new(inner.clone()),
            }),
            _ => None,
        },
        ("torch._utils", other) if other.starts_with("_rebuild") => Some(Err(format!(
            "tensors rebuilt by `{other}` (quantized, sparse or on a special device) are not supported"
        ))),
        _ => None,
    }
}

/// `_rebuild_tensor_v2(storage, storage_offset, size, stride, ...)`.
fn rebuild_args(args: &[Object]) -> Reason<TensorRef> {
    let [Object::PersistentLoad(pid), offset, size, stride, ..] = args else {
        return Err("a tensor is not stored as PyTorch stores it".into());
    };
    let size = ints(size, "tensor size")?;
    let stride = ints(stride, "tensor stride")?;
    if size.len() != stride.len() {
        return Err(format!("a tensor has size {size:?} but strides {stride:?}"));
    }
    Ok(TensorRef {
        storage: storage_ref(pid)?,
        offset: int(offset, "storage offset")?,
        size,
        stride,
    })
}

/// Every storage the object refers to, with its element size (for the legacy format).
fn collect_storages(object: &Object, sizes: &mut HashMap<String, usize>, depth: usize) -> Reason<()> {
    if depth > 256 {
        return Err("the object is nested too deeply".into());
    }
    match object {
        Object::PersistentLoad(pid) => {
            let storage = storage_ref(pid)?;
            sizes.insert(storage.key, storage.element.size());
        }
        Object::Tuple(items) | Object::List(items) => {
            for item in items {
                collect_storages(item, sizes, depth + 1)?;
            }
        }
        Object::Dict(entries) => {
            for (k, v) in entries {
                collect_storages(k, sizes, depth + 1)?;
                collect_storages(v, sizes, depth + 1)?;
            }
        }
        Object::Reduce { callable, args } | Object::Build { callable, args } => {
            collect_storages(callable, sizes, depth + 1)?;
            collect_storages(args, sizes, depth + 1)?;
        }
        _ => {}
    }
    Ok(())
}

/// A pickled dict's (key, value) pairs.
type Entries = [(Object, Object)];

/// Number of string-named tensors in a dict.
fn tensor_count(entries: &Entries) -> usize {
    entries
        .iter()
        .filter(|(k, v)| matches!(k, Object::Unicode(_)) && tensor_ref(v).is_some())
        .count()
}

/// The dict of tensors: the checkpoint itself, or the dict nested in it (up to `MAX_DEPTH`
/// levels) with the most tensors; ties go to `PREFERRED_KEYS`, then to the first found.
/// When every name starts with `module.` (`nn.DataParallel`), the prefix is dropped.
fn find_state_dict(object: &Object) -> Reason<Vec<(String, TensorRef)>> {
    // (tensor count, preference (lower is better), entries)
    let mut best: Option<(usize, usize, &Entries)> = None;
    let mut queue: Vec<(&Object, usize, usize)> = vec![(object, 0, PREFERRED_KEYS.len())];
    let mut i = 0;
    while i < queue.len() {
        let (object, depth, preference) = queue[i];
        i += 1;
        let Object::Dict(entries) = object else { continue };
        let count = tensor_count(entries);
        let better = match best {
            None => count > 0,
            Some((c, p, _)) => count > c || (count == c && preference < p),
        };
        if better {
            best = Some((count, preference, entries));
        }
        if depth < MAX_DEPTH {
            for (key, value) in entries {
                if let (Object::Unicode(key), Object::Dict(_)) = (key, value) {
                    let preference = PREFERRED_KEYS
                        .iter()
                        .position(|p| p == key)
                        .unwrap_or(PREFERRED_KEYS.len());
                    queue.push((value, depth + 1, preference));
                }
            }
        }
    }
    let Some((_, _, entries)) = best else {
        return Err(match object {
            Object::Build { .. } | Object::Reduce { .. } => match class_of(object) {
                Some(class) => format!(
                    "it holds a whole pickled object (`{class}`), not a state dict: save `model.state_dict()` instead"
                ),
                None => "it holds no tensors".to_string(),
            },
            _ => "it holds no tensors (no dict of named tensors found)".to_string(),
        });
    };
    let mut tensors = Vec::new();
    for (key, value) in entries {
        let (Object::Unicode(name), Some(t)) = (key, tensor_ref(value)) else {
            continue;
        };
        let t = t.map_err(|e| format!("tensor `{name}`: {e}"))?;
        tensors.push((name.clone(), t));
    }
    if tensors.iter().all(|(n, _)| n.starts_with("module.")) {
        for (name, _) in &mut tensors {
            name.drain(.."module.".len());
        }
    }
    Ok(tensors)
}

/// `module.Class` of a pickled object, when it names one.
fn class_of(object: &Object) -> Option<String> {
    match object {
        Object::Class {
            module_name,
            class_name,
        } => Some(format!("{module_name}.{class_name}")),
        Object::Reduce { callable, .. } | Object::Build { callable, .. } => class_of(callable),
        _ => None,
    }
}

// ---------------------------------------------------------------------------------------------
// Storage bytes to values.

fn decode_all(tensors: Vec<(String, TensorRef)>, storages: &HashMap<String, Vec<u8>>) -> Reason<Vec<RawTensor>> {
    let mut out = Vec::with_capacity(tensors.len());
    for (name, t) in tensors {
        if matches!(t.storage.element, Element::Other(_)) {
            continue;
        }
        let data = storages
            .get(&t.storage.key)
            .ok_or_else(|| format!("tensor `{name}`: its storage `{}` is missing", t.storage.key))?;
        let values = gather(&t, data).map_err(|e| format!("tensor `{name}`: {e}"))?;
        out.push((name, t.size, values));
    }
    if out.is_empty() {
        return Err("it holds no floating-point tensors".into());
    }
    Ok(out)
}

/// The tensor's elements in row-major order, read through its offset and strides.
fn gather(t: &TensorRef, data: &[u8]) -> Reason<Vec<f32>> {
    let size = t.storage.element.size();
    let available = data.len() / size;
    let numel = t
        .size
        .iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d))
        .filter(|&n| n <= MAX_ELEMENTS)
        .ok_or("it is too large")?;
    if numel == 0 {
        return Ok(Vec::new());
    }
    let last = t.size.iter().zip(&t.stride).try_fold(t.offset, |acc, (&d, &s)| {
        (d - 1).checked_mul(s).and_then(|x| x.checked_add(acc))
    });
    match last {
        Some(last) if last < available => {}
        _ => {
            return Err(format!(
                "size {:?}, strides {:?} and offset {} reach past its storage of {available} elements",
                t.size, t.stride, t.offset
            ))
        }
    }
    let read = |i: usize| -> f32 {
        let b = &data[i * size..(i + 1) * size];
        match t.storage.element {
            Element::F32 => f32::from_le_bytes(b.try_into().expect("4 bytes")),
            Element::F64 => f64::from_le_bytes(b.try_into().expect("8 bytes")) as f32,
            Element::F16 => f16::from_le_bytes(b.try_into().expect("2 bytes")).to_f32(),
            Element::BF16 => bf16::from_le_bytes(b.try_into().expect("2 bytes")).to_f32(),
            Element::Other(_) => unreachable!("only floating-point tensors are decoded"),
        }
    };
    let mut values = Vec::with_capacity(numel);
    // An odometer over the index, innermost dimension fastest.
    let rank = t.size.len();
    let mut index = vec![0usize; rank];
    let mut position = t.offset;
    for _ in 0..numel {
        values.push(read(position));
        for d in (0..rank).rev() {
            index[d] += 1;
            position = position.wrapping_add(t.stride[d]);
            if index[d] < t.size[d] {
                break;
            }
            position = position.wrapping_sub(t.stride[d].wrapping_mul(t.size[d]));
            index[d] = 0;
        }
    }
    Ok(values)
}

#[cfg(test)]
mod sniffing_tests {
    use super::looks_like_pth;

    #[test]
    fn a_safetensors_header_length_starting_with_0x80_is_not_a_pickle() {
        let mut bytes = 0x280u64.to_le_bytes().to_vec();
        bytes.push(b'{');
        bytes.resize(8 + 0x280, b' ');
        assert_eq!(bytes[0], 0x80);
        assert!(!looks_like_pth(&bytes));
        assert!(looks_like_pth(&[0x80, 0x02, b'}']));
        assert!(looks_like_pth(b"PK\x03\x04rest"));
    }
}

#[cfg(test)]
mod pickle_limit_tests {
    use super::unpickle;

    /// PROTO 2, `body`, STOP.
    fn pickle(body: &[u8]) -> Vec<u8> {
        [&[0x80, 0x02][..], body, b"."].concat()
    }

    #[test]
    fn deep_nesting_is_refused_before_the_reader_recurses() {
        // 200,000 empty lists, each appended into the one below it.
        let depth = 200_000;
        let body = [vec![b']'; depth], vec![b'a'; depth - 1]].concat();
        let err = unpickle(&pickle(&body)).unwrap_err();
        assert!(err.contains("levels deep"), "{err}");
        // Nesting a checkpoint could have is read.
        let body = [vec![b']'; 50], vec![b'a'; 49]].concat();
        assert!(unpickle(&pickle(&body)).is_ok());
    }

    #[test]
    fn memo_copies_that_double_each_step_are_refused() {
        // x = []; then 60 times: x = (x, x), each recalled from the memo.
        let mut body = b"]q\x00".to_vec();
        for _ in 0..60 {
            body.extend_from_slice(b"h\x00h\x00\x86q\x00");
        }
        let err = unpickle(&pickle(&body)).unwrap_err();
        assert!(err.contains("pickle bomb"), "{err}");
    }

    #[test]
    fn stack_misuse_is_an_error() {
        for body in [&b"a"[..], b"t", b"h\x07", b"]u"] {
            assert!(unpickle(&pickle(body)).is_err(), "{body:?}");
        }
    }
}
