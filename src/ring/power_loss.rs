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
    let journals = from.join("ring").join("journals");
    let id = durable.as_ref().and_then(|(p, _)| journal_id(p));
    // Journals the sync did not reach are written below, not copied:
    // fjall preallocates them, and copying that is most of a copy's time.
    let replaced = |p: &Path| {
        p.parent() == Some(journals.as_path())
            && journal_id(p).is_some_and(|j| id.is_none_or(|d| j >= d))
    };
    copy_tree(from, to, &replaced)?;
    let to_journals = to.join("ring").join("journals");
    for entry in std::fs::read_dir(&journals)? {
        let path = entry?.path();
        let Some(name) = path.file_name() else {
            continue;
        };
        let dest = to_journals.join(name);
        match (journal_id(&path), id, &durable) {
            (Some(j), Some(d), _) if j < d => {}
            (Some(j), Some(d), Some((_, bytes))) if j == d => std::fs::write(&dest, bytes)?,
            _ => std::fs::write(&dest, b"")?,
        }
    }
    Ok(())
}

fn copy_tree(from: &Path, to: &Path, skip: &dyn Fn(&Path) -> bool) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let dest = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_tree(&entry.path(), &dest, skip)?;
        } else if !skip(&entry.path()) {
            std::fs::copy(entry.path(), dest)?;
        }
    }
    Ok(())
}
