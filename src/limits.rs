//! Bounds on what a file may make candle-xai do, beyond those of each format's own reader.

/// The most bytes read from one file: the largest torchvision checkpoint (ViT-H/14) is 2.5 GB.
pub const MAX_FILE_BYTES: u64 = 4 << 30;
/// The most pixels a model input (and so a photo's crop) may have.
pub const MAX_INPUT_PIXELS: usize = 4096 * 4096;
/// The most bytes read from a device or a pipe, whose size is not known beforehand.
pub const MAX_STREAM_BYTES: u64 = 512 << 20;

/// The bytes of the file at `path`, refusing one over [`MAX_FILE_BYTES`] before reading it.
/// Devices and pipes are read up to [`MAX_STREAM_BYTES`] and no further, so an endless
/// stream (`/dev/zero`) is an error rather than a machine out of memory.
#[cfg(not(target_arch = "wasm32"))]
pub fn read_file(path: &std::path::Path) -> crate::Result<Vec<u8>> {
    use crate::Error;
    use std::io::Read;
    let io = |source| Error::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::open(path).map_err(io)?;
    let metadata = file.metadata().map_err(io)?;
    let limit = if metadata.is_file() {
        MAX_FILE_BYTES
    } else {
        MAX_STREAM_BYTES
    };
    let too_large = || Error::FileTooLarge {
        what: path.display().to_string(),
        limit_mib: limit >> 20,
    };
    if metadata.len() > limit {
        return Err(too_large());
    }
    let mut bytes = Vec::new();
    file.take(limit + 1).read_to_end(&mut bytes).map_err(io)?;
    if bytes.len() as u64 > limit {
        return Err(too_large());
    }
    Ok(bytes)
}

/// The memory one explanation may hold at once on the CPU when its request sets no limit:
/// three quarters of what the machine has available (Linux's `MemAvailable`), 4 GiB where
/// that is unknown, 2 GiB in the browser (wasm32's 4 GiB address space also holds the model,
/// the photo and the page's copies of them).
pub fn default_memory_budget() -> u64 {
    #[cfg(target_arch = "wasm32")]
    return 2 << 30;
    #[cfg(not(target_arch = "wasm32"))]
    {
        let available = std::fs::read_to_string("/proc/meminfo").ok().and_then(|info| {
            let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
            let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
            Some(kib.saturating_mul(1024))
        });
        available.map_or(4 << 30, |bytes| bytes / 4 * 3)
    }
}
