//! A power loss, simulated for tests: a copy of a ring store as the disk
//! would hold it had the machine lost power now. Every file is copied as
//! it is, except fjall's journal, which keeps only what the last completed
//! fsync covered (`Storage` records it, in test builds, at each sync): the
//! page cache's unsynced tail is lost, as it would be.
//!
//! Assumes no memtable flush and no journal rotation since that sync
//! (tests write far less than a memtable).

use std::os::fd::AsFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// The journal fjall appends to now and what it holds: what a sync that
/// starts after this call covers at least. fjall preallocates its journal
/// as a sparse file; the content ends where the first hole begins.
pub fn active_journal(dir: &Path) -> Option<(PathBuf, Vec<u8>)> {
    let journals = dir.join("ring").join("journals");
    let (_, path) = std::fs::read_dir(journals)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter_map(|p| journal_id(&p).map(|id| (id, p)))
        .max()?;
    let f = std::fs::File::open(&path).ok()?;
    let end = nix::unistd::lseek(f.as_fd(), 0, nix::unistd::Whence::SeekHole).ok()?;
    let mut bytes = vec![0; usize::try_from(end).ok()?];
    f.read_exact_at(&mut bytes, 0).ok()?;
    Some((path, bytes))
}

/// What a power loss at one instant leaves of the active journal.
pub struct Point(pub Option<(PathBuf, Vec<u8>)>);

fn journal_id(path: &Path) -> Option<u64> {
    path.file_name()?.to_str()?.parse().ok()
}

/// Copies the store in `from` to `to`, its active journal replaced by
/// `durable` (what the last sync covered; nothing if there was none).
pub fn copy(from: &Path, to: &Path, durable: Option<(PathBuf, Vec<u8>)>) -> std::io::Result<()> {
    copy_tree(from, to)?;
    let journals = to.join("ring").join("journals");
    let id = durable.as_ref().and_then(|(p, _)| journal_id(p));
    for entry in std::fs::read_dir(&journals)? {
        let path = entry?.path();
        match (journal_id(&path), id, &durable) {
            (Some(j), Some(d), _) if j < d => {}
            (Some(j), Some(d), Some((_, bytes))) if j == d => std::fs::write(&path, bytes)?,
            _ => std::fs::write(&path, b"")?,
        }
    }
    Ok(())
}

fn copy_tree(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let dest = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_tree(&entry.path(), &dest)?;
        } else {
            std::fs::copy(entry.path(), dest)?;
        }
    }
    Ok(())
}
