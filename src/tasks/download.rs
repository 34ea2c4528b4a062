//! `--download`: fetch enwik8 from the Hutter-prize page (enwik8.zip), with a progress
//! bar, unzip it next to the destination and check the result's size and md5 before it
//! takes the destination's name.

use std::fs::File;
use std::io::{Read, Write};
use std::path::Path;

use anyhow::{bail, Context, Result};
use md5::{Digest, Md5};

use super::text::ENWIK8_BYTES;
use crate::progress::Progress;

/// The official archive; `REFORMER_ENWIK8_URL` replaces it (a mirror, or a test server).
pub const ENWIK8_URL: &str = "http://mattmahoney.net/dc/enwik8.zip";
/// md5 of the unzipped 100,000,000 bytes.
const ENWIK8_MD5: &str = "a1fa5ffddb56f4953e226637dabbb36a";
const COPY_BUFFER_BYTES: usize = 1 << 20;

/// Downloads and unzips enwik8 to `dest`; nothing is left at `dest` unless it checks out.
pub fn download_enwik8(dest: &Path) -> Result<()> {
    let url = std::env::var("REFORMER_ENWIK8_URL").unwrap_or_else(|_| ENWIK8_URL.to_string());
    if let Some(parent) = dest.parent() {
        std::fs::create_dir_all(parent).with_context(|| format!("cannot create {}", parent.display()))?;
    }
    let zip_path = dest.with_extension("zip.partial");
    fetch(&url, &zip_path)?;
    let unzipped = dest.with_extension("partial");
    let result = unzip_checked(&zip_path, &unzipped);
    let _ = std::fs::remove_file(&zip_path);
    if let Err(e) = result {
        let _ = std::fs::remove_file(&unzipped);
        return Err(e);
    }
    std::fs::rename(&unzipped, dest).with_context(|| format!("cannot move the data to {}", dest.display()))
}

fn fetch(url: &str, to: &Path) -> Result<()> {
    let response = ureq::get(url)
        .call()
        .with_context(|| format!("cannot download {url} (offline? get it by hand: see data/README.md)"))?;
    let total: u64 = response.header("Content-Length").and_then(|v| v.parse().ok()).unwrap_or(0);
    let mut progress = Progress::new("download", total);
    let mut reader = response.into_reader();
    let mut file = File::create(to).with_context(|| format!("cannot write {}", to.display()))?;
    let mut buffer = vec![0u8; COPY_BUFFER_BYTES];
    let mut received = 0u64;
    loop {
        let n = reader.read(&mut buffer).with_context(|| format!("download of {url} interrupted"))?;
        if n == 0 {
            break;
        }
        file.write_all(&buffer[..n])?;
        received += n as u64;
        progress.update(received, format!("{:.1} MB", received as f64 / 1e6));
    }
    progress.finish();
    if total > 0 && received != total {
        bail!("download of {url} stopped at {received} of {total} bytes");
    }
    Ok(())
}

fn unzip_checked(zip_path: &Path, to: &Path) -> Result<()> {
    let archive = File::open(zip_path)?;
    let mut archive = zip::ZipArchive::new(archive).context("the download is not a zip archive")?;
    let mut entry = archive.by_name("enwik8").context("the archive holds no file named enwik8")?;
    let mut out = File::create(to).with_context(|| format!("cannot write {}", to.display()))?;
    let mut hasher = Md5::new();
    let mut buffer = vec![0u8; COPY_BUFFER_BYTES];
    let mut size = 0usize;
    loop {
        let n = entry.read(&mut buffer).context("the archive is damaged")?;
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
        out.write_all(&buffer[..n])?;
        size += n;
    }
    out.sync_all()?;
    let md5: String = hasher.finalize().iter().map(|b| format!("{b:02x}")).collect();
    if size != ENWIK8_BYTES || md5 != ENWIK8_MD5 {
        bail!("the downloaded enwik8 has {size} bytes and md5 {md5}, not {ENWIK8_BYTES} bytes and md5 {ENWIK8_MD5}");
    }
    Ok(())
}
