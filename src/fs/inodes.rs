//! The inode table: the mount's inode numbers and the names they are known by.
//!
//! Inode numbers are allocated from a counter and never reused while the
//! mount lives, so they are stable. A node remembers every (parent, name)
//! link it is known by (hard links share one node, hence one st_ino) and the
//! backing identity (replica, st_dev, st_ino) it was seen with on each
//! replica, which is how a second name of an existing hard link is
//! recognised on lookup, whichever replica each name was read from. A
//! match by number is only a candidate: the caller joins a name to it after
//! checking on that replica that the node's own path is still that file
//! ([`InodeTable::candidates`], src/DESIGN.md section 4, inode numbers).

use std::collections::{HashMap, HashSet, VecDeque};

use crate::replica::{Name, RelPath};

pub const ROOT: u64 = 1;

/// (replica index, st_dev, st_ino) of an inode as seen on one replica.
pub type BackingKey = (usize, u64, u64);

struct Node {
    /// Every name this node is known by; the first is used to reach it.
    links: Vec<(u64, Name)>,
    /// S_IFMT bits.
    kind: u32,
    /// The backing identity on each replica it was seen on (one per
    /// replica); the first is the one read when it was last looked up.
    keys: Vec<BackingKey>,
    /// The link count it was last looked up with (or made by link(2)).
    nlink: u64,
    /// Kernel references (lookup count); the node lives while > 0 or open.
    lookups: u64,
    opens: u64,
    /// Links of other nodes into this one (a directory's known entries):
    /// a directory lives while a node it holds is known, so that node's
    /// path, and the marks of each of its names, do not depend on
    /// whether the kernel still holds the directory.
    kids: u64,
}

pub struct InodeTable {
    nodes: HashMap<u64, Node>,
    children: HashMap<(u64, Name), u64>,
    keys: HashMap<BackingKey, u64>,
    /// Numbers of nodes the kernel forgot, by backing identity, so a file
    /// looked up again gets the number it had: inode numbers are stable for
    /// the life of the mount, not just while the kernel caches them.
    retired: HashMap<BackingKey, u64>,
    /// `retired`'s keys, oldest first: past [`RETIRED_MAX`] the oldest
    /// numbers are forgotten, so memory stays bounded however many files
    /// a walk touches (a file looked up again after that gets a new number).
    retired_order: VecDeque<BackingKey>,
    /// Open nodes with no known name left (see [`InodeTable::nameless`]).
    nameless: HashSet<u64>,
    next: u64,
}

/// Forgotten nodes whose numbers are kept (about 80 bytes each).
const RETIRED_MAX: usize = 1 << 17;

/// Nesting deeper than this is treated as a corrupt table, not walked.
const MAX_DEPTH: usize = 4096;

impl InodeTable {
    pub fn new() -> InodeTable {
        let mut nodes = HashMap::new();
        nodes.insert(
            ROOT,
            Node {
                links: Vec::new(),
                kind: libc::S_IFDIR,
                keys: Vec::new(),
                nlink: 1,
                lookups: 1,
                opens: 0,
                kids: 0,
            },
        );
        InodeTable {
            nodes,
            children: HashMap::new(),
            keys: HashMap::new(),
            retired: HashMap::new(),
            retired_order: VecDeque::new(),
            nameless: HashSet::new(),
            next: ROOT + 1,
        }
    }

    /// The path of `ino` relative to the replica roots, if it still has a
    /// name: the first of its names whose directory the table knows. (A
    /// directory's node lives while a node it holds is known, `kids`; the
    /// kernel may forget the directory meanwhile. Checker seed 4 on
    /// eb87481: a read-only open of `f1` answered ENOENT, its first name
    /// being in a directory the kernel had just forgotten, whose node was
    /// dropped then.)
    pub fn path(&self, ino: u64) -> Option<RelPath> {
        if ino == ROOT {
            return Some(RelPath::root());
        }
        // Directories have one name each: only the file's own names differ.
        self.nodes
            .get(&ino)?
            .links
            .iter()
            .find_map(|(parent, name)| Some(self.dir_path(*parent)?.join(name)))
    }

    /// The path of directory `ino` through the first name of each node.
    fn dir_path(&self, ino: u64) -> Option<RelPath> {
        let mut names: Vec<&Name> = Vec::new();
        let mut cur = ino;
        while cur != ROOT {
            let (parent, name) = self.nodes.get(&cur)?.links.first()?;
            names.push(name);
            cur = *parent;
            if names.len() > MAX_DEPTH {
                return None;
            }
        }
        let mut p = RelPath::root();
        for n in names.iter().rev() {
            p = p.join(n);
        }
        Some(p)
    }

    /// The node `path` is known to name, walking from the root.
    pub fn resolve(&self, path: &RelPath) -> Option<u64> {
        let Some((parent, name)) = path.split() else {
            return Some(ROOT);
        };
        self.child(self.resolve(&parent)?, &name)
    }

    /// Every path the node named by `path` is known by (its hard links).
    pub fn names_of(&self, path: &RelPath) -> Vec<RelPath> {
        let Some(node) = self.resolve(path).and_then(|ino| self.nodes.get(&ino)) else {
            return Vec::new();
        };
        node.links
            .iter()
            .filter_map(|(parent, name)| Some(self.path(*parent)?.join(name)))
            .collect()
    }

    /// The node a (parent, name) is currently known to name.
    pub fn child(&self, parent: u64, name: &Name) -> Option<u64> {
        self.children.get(&(parent, name.clone())).copied()
    }

    /// Nodes that a file with several links, whose backing identity on
    /// each replica is `keys`, may be another name of: (node, the matching
    /// key, the node's path). The caller checks on that replica that the
    /// path still names that file before passing the node to `lookup` as
    /// `join` (a number may have been reused behind this table's back).
    /// Open nodes with no name left are offered by [`InodeTable::nameless`].
    pub fn candidates(&self, kind: u32, keys: &[BackingKey]) -> Vec<(u64, BackingKey, RelPath)> {
        if kind == libc::S_IFDIR {
            return Vec::new();
        }
        keys.iter()
            .filter_map(|k| {
                let ino = *self.keys.get(k)?;
                let node = self.nodes.get(&ino)?;
                if node.kind != kind {
                    return None;
                }
                if node.links.is_empty() {
                    return None;
                }
                Some((ino, *k, self.path(ino)?))
            })
            .collect()
    }

    /// Open nodes of type `kind` whose every known name was removed: a
    /// name looked up now may be another name of one of them (the caller
    /// checks it through an open handle's fd before passing it as `join`).
    pub fn nameless(&self, kind: u32) -> Vec<u64> {
        self.nameless
            .iter()
            .copied()
            .filter(|ino| self.nodes.get(ino).is_some_and(|n| n.kind == kind))
            .collect()
    }

    /// Keeps `nameless` in step with node `ino`'s names and opens.
    fn note_nameless(&mut self, ino: u64) {
        match self.nodes.get(&ino) {
            Some(n) if n.links.is_empty() && n.opens > 0 && n.kind != libc::S_IFDIR => {
                self.nameless.insert(ino);
            }
            _ => {
                self.nameless.remove(&ino);
            }
        }
    }

    /// Records that the kernel looked up `name` in `parent` and found an
    /// inode of type `kind` with backing identity `keys` (`keys[0]` from
    /// the replica it was read from, then the others it was seen on);
    /// returns its number. `join`: a node this is checked to be another
    /// name of (a hard link), see [`InodeTable::candidates`].
    pub fn lookup(
        &mut self,
        parent: u64,
        name: &Name,
        kind: u32,
        keys: &[BackingKey],
        join: Option<u64>,
    ) -> u64 {
        let link = (parent, name.clone());
        let first = keys.first().copied();
        if let Some(&ino) = self.children.get(&link) {
            if let Some(node) = self.nodes.get_mut(&ino) {
                // Replaced behind our back only if the replica it was last
                // read from now has another inode there: a key of another
                // replica may be outdated by a resync's copy, and a
                // directory given a new number would orphan what the
                // kernel holds beneath it.
                let other_inode =
                    first.is_some_and(|k| node.keys.first().is_some_and(|n| n.0 == k.0 && *n != k));
                if node.kind == kind && !other_inode {
                    node.lookups += 1;
                    self.note_keys(ino, keys);
                    return ino;
                }
            }
            // The name now refers to something else (changed behind our back).
            self.unlink(parent, name);
        }
        if let Some(ino) = join
            && kind != libc::S_IFDIR
            && let Some(node) = self.nodes.get_mut(&ino)
            && node.kind == kind
            && (!node.links.is_empty() || node.opens > 0)
        {
            // Another name of a file we know: a hard link, or a file open
            // under a name since removed. (Never for a directory: joining
            // a directory to another's node makes the kernel refuse it
            // with ESTALE.)
            node.links.push(link.clone());
            node.lookups += 1;
            self.children.insert(link, ino);
            self.kid_added(parent);
            self.note_keys(ino, keys);
            self.note_nameless(ino);
            return ino;
        }
        let ino = first
            .and_then(|k| self.retired.remove(&k))
            .unwrap_or_else(|| {
                self.next += 1;
                self.next - 1
            });
        self.nodes.insert(
            ino,
            Node {
                links: vec![link.clone()],
                kind,
                keys: Vec::new(),
                nlink: 1,
                lookups: 1,
                opens: 0,
                kids: 0,
            },
        );
        self.children.insert(link, ino);
        self.kid_added(parent);
        self.note_keys(ino, keys);
        ino
    }

    /// A link into directory `parent` was added.
    fn kid_added(&mut self, parent: u64) {
        if let Some(p) = self.nodes.get_mut(&parent) {
            p.kids += 1;
        }
    }

    /// A link into directory `parent` was removed: it may be dropped now.
    fn kid_removed(&mut self, parent: u64) {
        if let Some(p) = self.nodes.get_mut(&parent) {
            p.kids = p.kids.saturating_sub(1);
        }
        self.maybe_drop(parent);
    }

    /// `ino` was just seen as `keys`: each replacing the node's key for
    /// that replica, `keys[0]` first.
    fn note_keys(&mut self, ino: u64, keys: &[BackingKey]) {
        let Some(node) = self.nodes.get_mut(&ino) else {
            return;
        };
        for &k in keys.iter().rev() {
            if let Some(pos) = node.keys.iter().position(|n| n.0 == k.0) {
                let old = node.keys.remove(pos);
                if old != k && self.keys.get(&old) == Some(&ino) {
                    self.keys.remove(&old);
                }
            }
            node.keys.insert(0, k);
            self.keys.insert(k, ino);
        }
    }

    /// A resync put backing inode `key` at `path` on replica `key.0` (made
    /// the entry anew there, or linked it to another name's copy): the
    /// node the path names keeps its number, with `key` as its identity on
    /// that replica, so that a lookup that reads it there is not taken for
    /// a file replaced behind the table's back (a new number would orphan
    /// the kernel's dentry for the name: its next open ENOENT). Changes the
    /// table did not see keep that rule ([`InodeTable::lookup`]).
    pub fn remade(&mut self, path: &RelPath, kind: u32, key: BackingKey) {
        let Some(ino) = self.resolve(path) else {
            return;
        };
        let Some(node) = self.nodes.get_mut(&ino) else {
            return;
        };
        if node.kind != kind {
            return;
        }
        let Some(pos) = node.keys.iter().position(|n| n.0 == key.0) else {
            return;
        };
        // The inode is another node's that still has a name (the path's
        // name changed while the copy ran: a rename updates the table
        // after its fan-out): it stays that node's.
        if let Some(&other) = self.keys.get(&key)
            && other != ino
            && self.nodes.get(&other).is_some_and(|o| !o.links.is_empty())
        {
            return;
        }
        let Some(node) = self.nodes.get_mut(&ino) else {
            return;
        };
        let old = std::mem::replace(&mut node.keys[pos], key);
        if old != key && self.keys.get(&old) == Some(&ino) {
            self.keys.remove(&old);
        }
        self.keys.insert(key, ino);
    }

    /// The number an entry seen in a directory listing has or will have,
    /// so that readdir's d_ino matches the st_ino a later stat returns.
    pub fn number_for(&mut self, key: BackingKey) -> u64 {
        if let Some(&ino) = self.keys.get(&key) {
            return ino;
        }
        if let Some(&ino) = self.retired.get(&key) {
            return ino;
        }
        let ino = self.next;
        self.next += 1;
        self.retire(key, ino);
        ino
    }

    /// Keeps `ino` as the number of backing inode `key` while no node has it.
    fn retire(&mut self, key: BackingKey, ino: u64) {
        if self.retired.insert(key, ino).is_none() {
            self.retired_order.push_back(key);
        }
        while self.retired_order.len() > RETIRED_MAX {
            if let Some(old) = self.retired_order.pop_front() {
                self.retired.remove(&old);
            }
        }
        shrink(&mut self.retired);
    }

    /// Records the link count `ino` was just seen with.
    pub fn set_nlink(&mut self, ino: u64, nlink: u64) {
        if let Some(node) = self.nodes.get_mut(&ino) {
            node.nlink = nlink;
        }
    }

    /// Whether `ino` is a file last seen with several links.
    pub fn has_links(&self, ino: u64) -> bool {
        self.nodes
            .get(&ino)
            .is_some_and(|n| n.nlink > 1 && n.kind != libc::S_IFDIR)
    }

    /// A new name for an existing node (link(2)); counts as a lookup.
    pub fn add_link(&mut self, ino: u64, parent: u64, name: &Name) -> bool {
        let link = (parent, name.clone());
        let Some(node) = self.nodes.get_mut(&ino) else {
            return false;
        };
        node.links.push(link.clone());
        node.lookups += 1;
        node.nlink = node.nlink.max(1) + 1;
        self.kid_added(parent);
        if let Some(old) = self.children.insert(link, ino)
            && old != ino
            && let Some(o) = self.nodes.get_mut(&old)
        {
            let before = o.links.len();
            o.links.retain(|(p, n)| !(*p == parent && n == name));
            if o.links.len() < before {
                self.kid_removed(parent);
            }
        }
        true
    }

    /// `name` in `parent` is gone.
    pub fn unlink(&mut self, parent: u64, name: &Name) {
        let Some(ino) = self.children.remove(&(parent, name.clone())) else {
            return;
        };
        let mut removed = false;
        if let Some(node) = self.nodes.get_mut(&ino) {
            let before = node.links.len();
            node.links.retain(|(p, n)| !(*p == parent && n == name));
            removed = node.links.len() < before;
        }
        self.unkey_if_gone(ino);
        self.note_nameless(ino);
        self.maybe_drop(ino);
        if removed {
            self.kid_removed(parent);
        }
    }

    /// A node with no known name and no open handle lets go of its backing
    /// identities: the backing inode numbers may be reused by a new file.
    /// An open node keeps them, so that another name of the file looked up
    /// later joins it (one inode, one page cache, whichever name each
    /// open used); `candidates` offers it to be checked through its fds.
    fn unkey_if_gone(&mut self, ino: u64) {
        let Some(node) = self.nodes.get_mut(&ino) else {
            return;
        };
        if !node.links.is_empty() || node.opens > 0 {
            return;
        }
        for k in std::mem::take(&mut node.keys) {
            if self.keys.get(&k) == Some(&ino) {
                self.keys.remove(&k);
            }
        }
    }

    /// `(p1, n1)` was renamed to `(p2, n2)`; with `exchange` the two swapped.
    pub fn rename(&mut self, p1: u64, n1: &Name, p2: u64, n2: &Name, exchange: bool) {
        let a = self.children.remove(&(p1, n1.clone()));
        let b = self.children.remove(&(p2, n2.clone()));
        let relink = |t: &mut Self, ino: u64, from: (u64, &Name), to: (u64, &Name)| {
            let mut moved = 0;
            if let Some(node) = t.nodes.get_mut(&ino) {
                for l in node.links.iter_mut() {
                    if l.0 == from.0 && &l.1 == from.1 {
                        *l = (to.0, to.1.clone());
                        moved += 1;
                    }
                }
            }
            t.children.insert((to.0, to.1.clone()), ino);
            for _ in 0..moved {
                t.kid_added(to.0);
                t.kid_removed(from.0);
            }
        };
        if let Some(b) = b {
            if exchange {
                relink(self, b, (p2, n2), (p1, n1));
            } else {
                // Put it back so unlink() can do its bookkeeping.
                self.children.insert((p2, n2.clone()), b);
                self.unlink(p2, n2);
            }
        }
        if let Some(a) = a {
            relink(self, a, (p1, n1), (p2, n2));
        }
    }

    /// The kernel dropped `n` references.
    pub fn forget(&mut self, ino: u64, n: u64) {
        if ino == ROOT {
            return;
        }
        if let Some(node) = self.nodes.get_mut(&ino) {
            node.lookups = node.lookups.saturating_sub(n);
        }
        self.maybe_drop(ino);
    }

    pub fn opened(&mut self, ino: u64) {
        if let Some(node) = self.nodes.get_mut(&ino) {
            node.opens += 1;
        }
    }

    pub fn closed(&mut self, ino: u64) {
        if let Some(node) = self.nodes.get_mut(&ino) {
            node.opens = node.opens.saturating_sub(1);
        }
        self.unkey_if_gone(ino);
        self.note_nameless(ino);
        self.maybe_drop(ino);
    }

    fn maybe_drop(&mut self, ino: u64) {
        let Some(node) = self.nodes.get(&ino) else {
            return;
        };
        if ino == ROOT || node.lookups > 0 || node.opens > 0 || node.kids > 0 {
            return;
        }
        if let Some(node) = self.nodes.remove(&ino) {
            let parents: Vec<u64> = node.links.iter().map(|l| l.0).collect();
            for l in node.links {
                if self.children.get(&l) == Some(&ino) {
                    self.children.remove(&l);
                }
            }
            // Only the first key keeps the number: one retired entry per
            // number, so it is handed to one node at most.
            for (n, k) in node.keys.into_iter().enumerate() {
                if self.keys.get(&k) == Some(&ino) {
                    self.keys.remove(&k);
                    if n == 0 {
                        self.retire(k, ino);
                    }
                }
            }
            shrink(&mut self.nodes);
            shrink(&mut self.children);
            shrink(&mut self.keys);
            for p in parents {
                self.kid_removed(p);
            }
        }
    }

    /// The directory `ino` is (first) linked in.
    pub fn parent(&self, ino: u64) -> Option<u64> {
        self.nodes.get(&ino)?.links.first().map(|l| l.0)
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.nodes.len()
    }
}

/// Gives memory back once a map is mostly empty (a walk of a large tree
/// grows the maps; nothing else would shrink them).
fn shrink<K: std::hash::Hash + Eq, V>(m: &mut HashMap<K, V>) {
    if m.capacity() > 4096 && m.len() * 4 < m.capacity() {
        m.shrink_to(m.len() * 2);
        // The names and nodes freed on the way sit in the allocator's
        // per-thread arenas; hand the empty pages back to the system.
        // Safe: malloc_trim only releases free memory.
        #[cfg(target_env = "gnu")]
        unsafe {
            libc::malloc_trim(0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsStr;

    fn n(s: &str) -> Name {
        Name::new(OsStr::new(s)).unwrap()
    }
    const REG: u32 = libc::S_IFREG;
    const DIR: u32 = libc::S_IFDIR;

    /// A lookup as the filesystem does it, where every candidate checks
    /// out (a file with one link is never a candidate's other name).
    fn look(
        t: &mut InodeTable,
        parent: u64,
        name: &str,
        kind: u32,
        keys: &[BackingKey],
        nlink: u64,
    ) -> u64 {
        let join = if nlink > 1 {
            t.candidates(kind, keys).first().map(|c| c.0)
        } else {
            None
        };
        t.lookup(parent, &n(name), kind, keys, join)
    }

    #[test]
    fn lookups_are_stable_and_paths_follow_renames() {
        let mut t = InodeTable::new();
        let d = look(&mut t, ROOT, "d", DIR, &[(0, 1, 10)], 1);
        let f = look(&mut t, d, "f", REG, &[(0, 1, 11)], 1);
        assert_eq!(look(&mut t, d, "f", REG, &[(0, 1, 11)], 1), f);
        assert_eq!(t.path(f).unwrap().as_bytes(), b"d/f");
        t.rename(ROOT, &n("d"), ROOT, &n("e"), false);
        assert_eq!(t.path(f).unwrap().as_bytes(), b"e/f");
        assert_eq!(t.child(ROOT, &n("e")), Some(d));
        assert_eq!(t.child(ROOT, &n("d")), None);
    }

    #[test]
    fn hard_links_share_a_node() {
        let mut t = InodeTable::new();
        let a = look(&mut t, ROOT, "a", REG, &[(0, 1, 20)], 2);
        let b = look(&mut t, ROOT, "b", REG, &[(0, 1, 20)], 2);
        assert_eq!(a, b);
        t.unlink(ROOT, &n("a"));
        assert_eq!(t.path(a).unwrap().as_bytes(), b"b");
    }

    #[test]
    fn forgotten_inodes_keep_their_number() {
        let mut t = InodeTable::new();
        let a = look(&mut t, ROOT, "a", REG, &[(0, 1, 60)], 1);
        look(&mut t, ROOT, "b", REG, &[(0, 1, 61)], 1);
        t.forget(a, 1);
        assert_eq!(t.len(), 2);
        assert_eq!(look(&mut t, ROOT, "a", REG, &[(0, 1, 60)], 1), a);
    }

    #[test]
    fn a_single_link_with_a_known_backing_number_is_a_new_node() {
        // The backing filesystem reused a number behind the table's back
        // (a resync replaced the file): one link means no hard link.
        let mut t = InodeTable::new();
        let a = look(&mut t, ROOT, "a", REG, &[(0, 1, 70)], 1);
        let b = look(&mut t, ROOT, "b", REG, &[(0, 1, 70)], 1);
        assert_ne!(a, b);
    }

    #[test]
    fn reused_backing_inode_is_a_new_node() {
        let mut t = InodeTable::new();
        let a = look(&mut t, ROOT, "a", REG, &[(0, 1, 30)], 1);
        t.unlink(ROOT, &n("a"));
        let b = look(&mut t, ROOT, "b", REG, &[(0, 1, 30)], 1);
        assert_ne!(a, b);
    }

    #[test]
    fn rename_over_and_exchange() {
        let mut t = InodeTable::new();
        let a = look(&mut t, ROOT, "a", REG, &[(0, 1, 40)], 1);
        let b = look(&mut t, ROOT, "b", REG, &[(0, 1, 41)], 1);
        t.rename(ROOT, &n("a"), ROOT, &n("b"), true);
        assert_eq!(t.child(ROOT, &n("a")), Some(b));
        assert_eq!(t.child(ROOT, &n("b")), Some(a));
        t.rename(ROOT, &n("a"), ROOT, &n("b"), false);
        assert_eq!(t.child(ROOT, &n("b")), Some(b));
        assert_eq!(t.path(a), None);
    }

    #[test]
    fn forget_drops_unreferenced_nodes_only() {
        let mut t = InodeTable::new();
        let a = look(&mut t, ROOT, "a", REG, &[(0, 1, 50)], 1);
        t.opened(a);
        t.forget(a, 1);
        assert_eq!(t.len(), 2);
        t.closed(a);
        assert_eq!(t.len(), 1);
        assert_eq!(t.child(ROOT, &n("a")), None);
    }

    #[test]
    fn names_of_one_file_join_whichever_replica_each_was_read_from() {
        let mut t = InodeTable::new();
        // `a` read from replica 1 (0 was not serving it), seen only there.
        let a = look(&mut t, ROOT, "a", REG, &[(1, 2, 90)], 2);
        // `b` read from replica 0, and seen on 1 as the same file.
        let b = look(&mut t, ROOT, "b", REG, &[(0, 1, 80), (1, 2, 90)], 2);
        assert_eq!(a, b, "two names of one file must be one inode");
        // Now known on replica 0 too: a third name read there alone joins.
        let c = look(&mut t, ROOT, "c", REG, &[(0, 1, 80)], 2);
        assert_eq!(a, c);
        // A replaced key of a replica stops matching.
        look(&mut t, ROOT, "a", REG, &[(0, 1, 80), (1, 2, 91)], 2);
        assert!(t.candidates(REG, &[(1, 2, 90)]).is_empty());
        assert_eq!(t.candidates(REG, &[(1, 2, 91)])[0].0, a);
    }

    #[test]
    fn a_file_is_reached_by_a_name_whose_directory_is_still_known() {
        // Checker seed 4 on eb87481: the file's first name was in a
        // directory the kernel forgot (its node dropped); the file, known
        // by another name too, must still have a path.
        let mut t = InodeTable::new();
        let d = look(&mut t, ROOT, "d", DIR, &[(0, 1, 10)], 1);
        let a = look(&mut t, d, "x", REG, &[(0, 1, 20)], 2);
        assert_eq!(look(&mut t, ROOT, "y", REG, &[(0, 1, 20)], 2), a);
        assert_eq!(t.path(a).unwrap().as_bytes(), b"d/x");
        // The kernel forgets `d`: its node stays while `x` is known, so
        // every name of the file keeps a path (and its marks).
        t.forget(d, 1);
        assert_eq!(t.path(a).unwrap().as_bytes(), b"d/x");
        assert_eq!(t.names_of(&RelPath::from_bytes(b"y").unwrap()).len(), 2);
        // Gone from the kernel too, the file lets `d` go.
        t.forget(a, 2);
        assert_eq!(t.len(), 1, "only the root is left");
        // Looked up again, the directory has its number back.
        assert_eq!(look(&mut t, ROOT, "d", DIR, &[(0, 1, 10)], 1), d);
    }

    #[test]
    fn a_directory_lives_while_a_node_in_it_is_known() {
        let mut t = InodeTable::new();
        let d1 = look(&mut t, ROOT, "d1", DIR, &[(0, 1, 10)], 1);
        let d2 = look(&mut t, ROOT, "d2", DIR, &[(0, 1, 11)], 1);
        let f = look(&mut t, d1, "f", REG, &[(0, 1, 12)], 1);
        t.forget(d1, 1);
        assert_eq!(t.path(f).unwrap().as_bytes(), b"d1/f", "d1 holds f");
        t.rename(d1, &n("f"), d2, &n("g"), false);
        assert!(t.path(d1).is_none(), "d1 holds nothing now: dropped");
        t.forget(d2, 1);
        assert_eq!(t.path(f).unwrap().as_bytes(), b"d2/g", "d2 holds g");
        t.unlink(d2, &n("g"));
        t.forget(f, 1);
        assert_eq!(t.len(), 1, "only the root is left");
    }

    #[test]
    fn an_open_file_whose_names_were_removed_is_joined_by_another_name() {
        // Checker seed 17: the only name the table knew of a linked file
        // was removed while the file was open; another name looked up then
        // must be the same inode (one page cache), not a second one.
        let mut t = InodeTable::new();
        let a = look(&mut t, ROOT, "a", REG, &[(0, 1, 70), (1, 2, 71)], 2);
        t.opened(a);
        t.unlink(ROOT, &n("a"));
        assert!(
            t.candidates(REG, &[(0, 1, 70)]).is_empty(),
            "no path to check"
        );
        assert_eq!(t.nameless(REG), vec![a]);
        assert!(t.nameless(DIR).is_empty());
        assert_eq!(t.lookup(ROOT, &n("b"), REG, &[(0, 1, 70)], Some(a)), a);
        assert!(t.nameless(REG).is_empty(), "named again");
        // Closed with no name left, its numbers are free for new files.
        t.unlink(ROOT, &n("b"));
        assert_eq!(t.nameless(REG), vec![a]);
        t.closed(a);
        assert!(t.nameless(REG).is_empty());
        assert!(t.candidates(REG, &[(0, 1, 70)]).is_empty());
        assert_ne!(look(&mut t, ROOT, "c", REG, &[(0, 1, 70)], 2), a);
    }

    #[test]
    fn a_copy_replaced_on_another_replica_keeps_the_number() {
        // A resync replaced the directory on replica 1 (a new inode there)
        // while it was last read from replica 0: still the same directory
        // to the kernel, or what it holds beneath it would be orphaned
        // (checker seed 14: ENOENT listing a directory that exists).
        let mut t = InodeTable::new();
        let d = look(&mut t, ROOT, "d", DIR, &[(0, 1, 10)], 2);
        assert_eq!(look(&mut t, ROOT, "d", DIR, &[(1, 2, 20)], 2), d);
        assert_eq!(look(&mut t, ROOT, "d", DIR, &[(0, 1, 10)], 2), d);
        assert_eq!(look(&mut t, ROOT, "d", DIR, &[(1, 2, 21)], 2), d);
        // Replaced on the replica it was last read from: a new inode.
        assert_ne!(look(&mut t, ROOT, "d", DIR, &[(1, 2, 22)], 2), d);
    }

    #[test]
    fn a_name_the_resync_remade_keeps_its_number() {
        // The resync made the file (and a directory) anew on replica 1,
        // the replica each was last read from, and said so: the next
        // lookup there is the same node (checker seed 6: a new number
        // orphaned the kernel's dentry and the next open got ENOENT).
        let mut t = InodeTable::new();
        let d = look(&mut t, ROOT, "d", DIR, &[(1, 2, 20)], 2);
        let f = look(&mut t, d, "f", REG, &[(1, 2, 30), (0, 1, 40)], 1);
        t.remade(&RelPath::from_bytes(b"d/f").unwrap(), REG, (1, 2, 31));
        t.remade(&RelPath::from_bytes(b"d").unwrap(), DIR, (1, 2, 21));
        assert_eq!(look(&mut t, ROOT, "d", DIR, &[(1, 2, 21)], 2), d);
        assert_eq!(look(&mut t, d, "f", REG, &[(1, 2, 31)], 1), f);
        // The old inode is no longer this file's: a name found there is
        // not joined to it.
        assert!(t.candidates(REG, &[(1, 2, 30)]).is_empty());
        assert_eq!(t.candidates(REG, &[(1, 2, 31)])[0].0, f);
        // Of another kind at that path: not this node.
        t.remade(&RelPath::from_bytes(b"d/f").unwrap(), DIR, (1, 2, 32));
        assert_eq!(look(&mut t, d, "f", REG, &[(1, 2, 31)], 1), f);
        // A change the table did not see still gives a new number.
        assert_ne!(look(&mut t, d, "f", REG, &[(1, 2, 33)], 1), f);
    }

    #[test]
    fn a_remade_key_another_named_node_owns_stays_its() {
        // A rename over `g` is applied on the replicas but not yet in the
        // table while a copy of `g` reports the renamed file's inode there:
        // it stays the renamed file's (review of 68da9d7).
        let mut t = InodeTable::new();
        let f = look(&mut t, ROOT, "f", REG, &[(1, 2, 40)], 1);
        let g = look(&mut t, ROOT, "g", REG, &[(1, 2, 50)], 1);
        t.remade(&RelPath::from_bytes(b"g").unwrap(), REG, (1, 2, 40));
        assert_eq!(look(&mut t, ROOT, "g", REG, &[(1, 2, 50)], 1), g);
        assert_eq!(look(&mut t, ROOT, "f", REG, &[(1, 2, 40)], 1), f);
    }

    #[test]
    fn a_directory_is_never_a_candidate() {
        let mut t = InodeTable::new();
        look(&mut t, ROOT, "d", DIR, &[(0, 1, 95)], 2);
        assert!(t.candidates(DIR, &[(0, 1, 95)]).is_empty());
    }
}
