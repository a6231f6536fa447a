//! The keys of ring links (see `noise` and `transport`) and gossip (see
//! `gossip`): the shared secret and what is derived from it, this node's
//! static X25519 key, and the static keys of the nodes it has met.
//!
//! - [`Secret`]: the operator's shared secret, never used as a key itself.
//!   HKDF-SHA256 derives one 32-byte key per use, each under its own label:
//!   the Noise pre-shared key of the links, and the HMAC key of the gossip
//!   datagrams. A key of one use says nothing of the others.
//! - [`StaticKey`]: this node's X25519 key pair, drawn at the first start
//!   and kept in `node.key` (mode 0600) in the ring's directory. It is the
//!   node's identity on the links.
//! - [`KnownNodes`]: the static key each node name was first seen with
//!   (trust on first use), kept in `known_nodes` beside it. A later link
//!   from or to a node of that name with another key is refused, and the
//!   refusal names the node and the file. A node reinstalled on purpose
//!   (new state directory, so a new key) is let in again by removing its
//!   line from that file on the other nodes: the file is read again before
//!   a key is refused, so no restart is needed.
//!
//! Both files are written durably (a temporary file, fsync, then rename or
//! link into place, then fsync of the directory): a crash leaves the old
//! file or the new one, never a part of one.

use std::collections::BTreeMap;
use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use hkdf::Hkdf;
use parking_lot::Mutex;
use sha2::Sha256;

use super::NodeId;
use super::wire::WireError;

/// Shortest ring secret accepted.
pub const MIN_SECRET_LEN: usize = 16;
/// Length of an X25519 key, private or public, and of the derived keys.
pub const KEY_LEN: usize = 32;
/// This node's static private key, in the ring's directory.
pub const STATIC_KEY_FILE: &str = "node.key";
/// The static keys of the nodes met, in the ring's directory.
pub const KNOWN_NODES_FILE: &str = "known_nodes";

/// HKDF salt: fixes what the secret is stretched for.
const KDF_SALT: &[u8] = b"chironfs ring secret";
/// HKDF labels, one per use of the secret.
const LABEL_NOISE_PSK: &[u8] = b"chironfs ring v3 noise psk";
const LABEL_GOSSIP: &[u8] = b"chironfs ring v3 gossip hmac";

/// The ring's shared secret, as the keys derived from it. Cheap to clone;
/// never printed.
#[derive(Clone)]
pub struct Secret(Arc<Derived>);

struct Derived {
    psk: [u8; KEY_LEN],
    gossip: [u8; KEY_LEN],
}

impl Secret {
    /// Derives the ring's keys from the secret's bytes (at least
    /// [`MIN_SECRET_LEN`]).
    pub fn new(bytes: &[u8]) -> Result<Secret, WireError> {
        if bytes.len() < MIN_SECRET_LEN {
            return Err(WireError::SecretTooShort(bytes.len()));
        }
        let kdf = Hkdf::<Sha256>::new(Some(KDF_SALT), bytes);
        let mut psk = [0u8; KEY_LEN];
        let mut gossip = [0u8; KEY_LEN];
        // 32 bytes are well within HKDF-SHA256's 8160.
        kdf.expand(LABEL_NOISE_PSK, &mut psk)
            .map_err(|_| WireError::Key("HKDF refused a 32-byte output".into()))?;
        kdf.expand(LABEL_GOSSIP, &mut gossip)
            .map_err(|_| WireError::Key("HKDF refused a 32-byte output".into()))?;
        Ok(Secret(Arc::new(Derived { psk, gossip })))
    }

    /// The Noise pre-shared key of the ring's links.
    pub fn psk(&self) -> &[u8; KEY_LEN] {
        &self.0.psk
    }

    /// The HMAC key of the gossip datagrams.
    pub fn gossip_key(&self) -> &[u8; KEY_LEN] {
        &self.0.gossip
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// A node's static public key.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct PublicKey(pub [u8; KEY_LEN]);

impl PublicKey {
    pub fn from_slice(bytes: &[u8]) -> Option<PublicKey> {
        bytes.try_into().ok().map(PublicKey)
    }

    pub fn to_hex(self) -> String {
        hex(&self.0)
    }

    /// The first 8 bytes, in hex: enough to tell keys apart in a log line.
    pub fn fingerprint(self) -> String {
        hex(&self.0[..8])
    }

    fn from_hex(s: &str) -> Option<PublicKey> {
        key_from_hex(s).map(PublicKey)
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.fingerprint())
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.fingerprint())
    }
}

pub(super) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A 32-byte key from exactly 64 hex digits (no sign, no spaces).
pub(super) fn key_from_hex(s: &str) -> Option<[u8; KEY_LEN]> {
    if s.len() != 2 * KEY_LEN || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let mut out = [0u8; KEY_LEN];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

/// This node's static X25519 key pair. Never printed.
#[derive(Clone)]
pub struct StaticKey {
    private: Arc<[u8; KEY_LEN]>,
    public: PublicKey,
}

impl StaticKey {
    /// The key pair of a private key (any 32 bytes: X25519 clamps them).
    pub fn from_private(private: [u8; KEY_LEN]) -> Result<StaticKey, WireError> {
        use snow::params::DHChoice;
        use snow::resolvers::{CryptoResolver, DefaultResolver};
        let mut dh = DefaultResolver
            .resolve_dh(&DHChoice::Curve25519)
            .ok_or_else(|| WireError::Key("no X25519 implementation".into()))?;
        dh.set(&private);
        let public = PublicKey::from_slice(dh.pubkey())
            .ok_or_else(|| WireError::Key("X25519 public key of an unexpected length".into()))?;
        Ok(StaticKey {
            private: Arc::new(private),
            public,
        })
    }

    /// A new random key pair.
    pub fn generate() -> Result<StaticKey, WireError> {
        let mut private = [0u8; KEY_LEN];
        getrandom::fill(&mut private).map_err(WireError::Random)?;
        StaticKey::from_private(private)
    }

    /// A key pair that is a function of `name`, for tests.
    #[cfg(test)]
    pub fn for_test(name: &str) -> StaticKey {
        use sha2::Digest;
        StaticKey::from_private(Sha256::digest(name.as_bytes()).into()).unwrap()
    }

    pub fn private(&self) -> &[u8; KEY_LEN] {
        &self.private
    }

    pub fn public(&self) -> PublicKey {
        self.public
    }

    /// This node's key from `dir/node.key`, drawn and saved there (mode
    /// 0600) if there is none yet (then the flag is true). Refused if the
    /// file has another size or is readable by group or others. Logs
    /// nothing: a failed start says one thing, its error.
    pub fn load_or_create(dir: &Path) -> Result<(StaticKey, bool), String> {
        create_private_dir(dir)?;
        let path = dir.join(STATIC_KEY_FILE);
        match read_private_file(&path, KEY_LEN) {
            Ok(bytes) => return Ok((StaticKey::from_bytes(&path, &bytes)?, false)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(format!("ring static key '{}': {e}", path.display())),
        }
        let key = StaticKey::generate().map_err(|e| format!("ring static key: {e}"))?;
        // Linked into place, not renamed: if another process created the
        // file meanwhile, its key stays and is the one used.
        let placed = write_durably(dir, STATIC_KEY_FILE, key.private.as_slice(), Place::Link)
            .map_err(|e| format!("ring static key '{}': cannot save it: {e}", path.display()))?;
        if placed {
            return Ok((key, true));
        }
        let bytes = read_private_file(&path, KEY_LEN)
            .map_err(|e| format!("ring static key '{}': {e}", path.display()))?;
        Ok((StaticKey::from_bytes(&path, &bytes)?, false))
    }

    fn from_bytes(path: &Path, bytes: &[u8]) -> Result<StaticKey, String> {
        let private: [u8; KEY_LEN] = bytes.try_into().map_err(|_| {
            format!(
                "ring static key '{}' holds {} bytes, not {KEY_LEN}: damaged? (remove it to draw a new key, and its line from {KNOWN_NODES_FILE} on the other nodes)",
                path.display(),
                bytes.len()
            )
        })?;
        StaticKey::from_private(private).map_err(|e| format!("ring static key: {e}"))
    }
}

impl fmt::Debug for StaticKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StaticKey({})", self.public)
    }
}

/// Reads a file that only its owner may read, of at most `max` bytes
/// (one more is read, to see a longer file).
pub(super) fn read_private_file(path: &Path, max: usize) -> io::Result<Vec<u8>> {
    read_guarded_file(path, max, 0o077, "readable")
}

/// Reads a file of at most `max` bytes (one more is read, to see a longer
/// file) whose mode has none of the bits of `forbidden`.
fn read_guarded_file(path: &Path, max: usize, forbidden: u32, what: &str) -> io::Result<Vec<u8>> {
    let file = File::open(path)?;
    let mode = file.metadata()?.mode();
    if mode & forbidden != 0 {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "{what} by group or others (mode {:04o}): chmod 600 it",
                mode & 0o7777
            ),
        ));
    }
    let mut bytes = Vec::with_capacity(max + 1);
    file.take(max as u64 + 1).read_to_end(&mut bytes)?;
    Ok(bytes)
}

fn create_private_dir(dir: &Path) -> Result<(), String> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| format!("ring directory '{}': {e}", dir.display()))
}

/// Writes a new file `dir/name` (mode 0600) durably; false if it
/// already existed (left as it was).
pub(super) fn write_new_private(dir: &Path, name: &str, bytes: &[u8]) -> io::Result<bool> {
    write_durably(dir, name, bytes, Place::Link)
}

/// How [`write_durably`] puts the new file in place.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Place {
    /// Replaces the file.
    Rename,
    /// Only if there is no file yet.
    Link,
}

/// Writes `dir/name` (mode 0600) through a temporary file: written,
/// fsynced, put in place, and the directory fsynced. False if `place` is
/// [`Place::Link`] and the file already existed (it is left as it was).
fn write_durably(dir: &Path, name: &str, bytes: &[u8], place: Place) -> io::Result<bool> {
    let mut suffix = [0u8; 8];
    getrandom::fill(&mut suffix).map_err(io::Error::other)?;
    let tmp = dir.join(format!(".{name}.tmp.{}", hex(&suffix)));
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        let target = dir.join(name);
        let placed = match place {
            Place::Rename => {
                std::fs::rename(&tmp, &target)?;
                true
            }
            Place::Link => match std::fs::hard_link(&tmp, &target) {
                Ok(()) => true,
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => false,
                Err(e) => return Err(e),
            },
        };
        File::open(dir)?.sync_all()?;
        Ok(placed)
    })();
    // After a rename there is nothing left to remove.
    let _ = std::fs::remove_file(&tmp);
    result
}

/// Why a node's static key was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyChanged {
    pub node: NodeId,
    pub known: PublicKey,
    pub presented: PublicKey,
    /// The file of known nodes, if there is one.
    pub file: Option<PathBuf>,
}

impl fmt::Display for KeyChanged {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let KeyChanged {
            node,
            known,
            presented,
            file,
        } = self;
        write!(
            f,
            "node {node} presented static key {presented}, but this node knows {node} by key {known} (trusted on first use"
        )?;
        match file {
            Some(p) => write!(
                f,
                ", in {p}): refused; if {node} was reinstalled on purpose, remove its line from {p} on this node",
                p = p.display()
            ),
            None => write!(
                f,
                "): refused; if {node} was reinstalled on purpose, forget its key on this node"
            ),
        }
    }
}

impl std::error::Error for KeyChanged {}

/// The static key each node name was first seen with. Cheap to clone:
/// clones share one table.
#[derive(Clone)]
pub struct KnownNodes(Arc<Known>);

struct Known {
    /// `None`: kept in memory only (tests).
    path: Option<PathBuf>,
    table: Mutex<BTreeMap<NodeId, PublicKey>>,
}

impl KnownNodes {
    /// A table kept in memory only.
    pub fn in_memory() -> KnownNodes {
        KnownNodes(Arc::new(Known {
            path: None,
            table: Mutex::new(BTreeMap::new()),
        }))
    }

    /// The table of `dir/known_nodes` (empty if there is no such file).
    pub fn load(dir: &Path) -> Result<KnownNodes, String> {
        let path = dir.join(KNOWN_NODES_FILE);
        let table = read_known(&path)?;
        Ok(KnownNodes(Arc::new(Known {
            path: Some(path),
            table: Mutex::new(table),
        })))
    }

    pub fn path(&self) -> Option<&Path> {
        self.0.path.as_deref()
    }

    /// The key `node` is known by.
    pub fn get(&self, node: &NodeId) -> Option<PublicKey> {
        self.0.table.lock().get(node).copied()
    }

    /// Whether `key` may be `node`'s: it is the key `node` is known by, or
    /// `node` is not known yet. Records nothing (see [`KnownNodes::bind`]).
    pub fn check(&self, node: &NodeId, key: PublicKey) -> Result<(), Box<KeyChanged>> {
        let mut table = self.0.table.lock();
        self.check_locked(&mut table, node, key)
    }

    /// Binds `node` to `key` if it is not known yet (saving the table),
    /// or checks that it is known by `key`. A failure to save is logged:
    /// the binding holds in memory all the same.
    pub fn bind(&self, node: &NodeId, key: PublicKey) -> Result<(), Box<KeyChanged>> {
        let mut table = self.0.table.lock();
        self.check_locked(&mut table, node, key)?;
        if table.contains_key(node) {
            return Ok(());
        }
        table.insert(node.clone(), key);
        tracing::info!("ring: node {node} is known by static key {key} from now on");
        if let Some(path) = &self.0.path
            && let Err(e) = save_known(path, &table)
        {
            tracing::warn!(
                "ring: cannot save the static key of node {node} in '{}': {e} (kept until this node restarts)",
                path.display()
            );
        }
        Ok(())
    }

    fn check_locked(
        &self,
        table: &mut BTreeMap<NodeId, PublicKey>,
        node: &NodeId,
        key: PublicKey,
    ) -> Result<(), Box<KeyChanged>> {
        match table.get(node) {
            None => return Ok(()),
            Some(k) if *k == key => return Ok(()),
            Some(_) => {}
        }
        // The operator may have removed the node's line since: the file
        // has the last word before a key is refused.
        if let Some(path) = &self.0.path {
            match read_known(path) {
                Ok(fresh) => *table = fresh,
                Err(e) => tracing::warn!("ring: {e}"),
            }
        }
        match table.get(node) {
            Some(known) if *known != key => Err(Box::new(KeyChanged {
                node: node.clone(),
                known: *known,
                presented: key,
                file: self.0.path.clone(),
            })),
            _ => Ok(()),
        }
    }
}

const KNOWN_HEADER: &str = "\
# chironfs ring: the static key of each node this node has met, bound to
# its name at first contact. A node presenting another key under a name
# listed here is refused. To let a reinstalled node in again, remove its
# line (no restart needed).
";

/// Longest `known_nodes` file read: far more than any ring needs.
const MAX_KNOWN_FILE: usize = 1 << 20;

fn read_known(path: &Path) -> Result<BTreeMap<NodeId, PublicKey>, String> {
    let what = || format!("ring known nodes '{}'", path.display());
    // Public keys: others may read them, not change them.
    let bytes = match read_guarded_file(path, MAX_KNOWN_FILE, 0o022, "writable") {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
        Err(e) => return Err(format!("{}: {e}", what())),
    };
    if bytes.len() > MAX_KNOWN_FILE {
        return Err(format!("{}: larger than {MAX_KNOWN_FILE} bytes", what()));
    }
    let text = std::str::from_utf8(&bytes).map_err(|_| format!("{}: not UTF-8", what()))?;
    let mut table = BTreeMap::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let bad = |why: &str| format!("{} line {}: {why}", what(), i + 1);
        let mut words = line.split_whitespace();
        let (Some(name), Some(key), None) = (words.next(), words.next(), words.next()) else {
            return Err(bad("expected NODE KEY (64 hex digits)"));
        };
        let node = NodeId::new(name).map_err(|e| bad(&e))?;
        let key = PublicKey::from_hex(key).ok_or_else(|| bad("the key is not 64 hex digits"))?;
        if table.insert(node, key).is_some() {
            return Err(bad(&format!("node {name} listed twice")));
        }
    }
    Ok(table)
}

fn save_known(path: &Path, table: &BTreeMap<NodeId, PublicKey>) -> io::Result<()> {
    let mut text = String::from(KNOWN_HEADER);
    for (node, key) in table {
        text.push_str(&format!("{node} {}\n", key.to_hex()));
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or(KNOWN_NODES_FILE);
    write_durably(dir, name, text.as_bytes(), Place::Rename).map(|_| ())
}

/// What a node proves itself with on the ring's links: its name, its
/// static key, the ring's secret, and the keys of the nodes it has met.
#[derive(Clone)]
pub struct Credentials {
    pub me: NodeId,
    pub secret: Secret,
    pub key: StaticKey,
    pub known: KnownNodes,
}

impl Credentials {
    /// Loads (or, the first time, draws: then the flag is true) this
    /// node's static key and the nodes it knows from the ring's directory
    /// `dir`.
    pub fn load(me: NodeId, secret: Secret, dir: &Path) -> Result<(Credentials, bool), String> {
        let (key, drawn) = StaticKey::load_or_create(dir)?;
        let known = KnownNodes::load(dir)?;
        let creds = Credentials {
            me,
            secret,
            key,
            known,
        };
        Ok((creds, drawn))
    }

    /// Credentials held in memory only, with a key that is a function of
    /// the name, for tests.
    #[cfg(test)]
    pub fn for_test(me: &str, secret: &Secret) -> Credentials {
        Credentials {
            me: NodeId::new(me).unwrap(),
            secret: secret.clone(),
            key: StaticKey::for_test(me),
            known: KnownNodes::in_memory(),
        }
    }
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Credentials({}, {:?})", self.me, self.key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn id(s: &str) -> NodeId {
        NodeId::new(s).unwrap()
    }

    #[test]
    fn the_secret_gives_one_key_per_use() {
        let a = Secret::new(b"0123456789abcdef").unwrap();
        let b = Secret::new(b"0123456789abcdeg").unwrap();
        assert_ne!(a.psk(), a.gossip_key());
        assert_ne!(a.psk(), b.psk());
        assert_ne!(a.gossip_key(), b.gossip_key());
        assert_eq!(
            a.psk(),
            Secret::new(b"0123456789abcdef").unwrap().psk(),
            "deterministic"
        );
        assert!(matches!(
            Secret::new(b"short"),
            Err(WireError::SecretTooShort(5))
        ));
        assert_eq!(format!("{a:?}"), "Secret(..)");
    }

    #[test]
    fn the_static_key_is_drawn_once_and_kept_private() {
        let dir = tempfile::tempdir().unwrap();
        let ring = dir.path().join("ring");
        let (k1, drawn) = StaticKey::load_or_create(&ring).unwrap();
        assert!(drawn);
        let (k2, drawn) = StaticKey::load_or_create(&ring).unwrap();
        assert!(!drawn);
        assert_eq!(k1.public(), k2.public());
        assert_eq!(k1.private(), k2.private());
        let path = ring.join(STATIC_KEY_FILE);
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.mode() & 0o777, 0o600);
        assert_eq!(meta.len(), KEY_LEN as u64);
        assert_eq!(
            std::fs::metadata(&ring).unwrap().mode() & 0o777,
            0o700,
            "the directory is created private"
        );
        // No temporary file is left behind.
        let names: Vec<_> = std::fs::read_dir(&ring)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from(STATIC_KEY_FILE)]);
        // Another directory, another key.
        let (k3, _) = StaticKey::load_or_create(&dir.path().join("other")).unwrap();
        assert_ne!(k1.public(), k3.public());
        // Readable by others: refused, naming the file.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = StaticKey::load_or_create(&ring).unwrap_err();
        assert!(e.contains("node.key") && e.contains("chmod 600"), "{e}");
        // Damaged: refused, saying what to do.
        std::fs::write(&path, b"short").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let e = StaticKey::load_or_create(&ring).unwrap_err();
        assert!(e.contains("holds 5 bytes"), "{e}");
    }

    #[test]
    fn a_node_is_bound_to_its_first_key_and_the_file_has_the_last_word() {
        let dir = tempfile::tempdir().unwrap();
        let (k1, k2) = (StaticKey::for_test("one"), StaticKey::for_test("two"));
        let known = KnownNodes::load(dir.path()).unwrap();
        known.check(&id("b"), k1.public()).unwrap();
        assert_eq!(known.get(&id("b")), None, "check records nothing");
        known.bind(&id("b"), k1.public()).unwrap();
        known.bind(&id("b"), k1.public()).unwrap();
        known.bind(&id("c"), k2.public()).unwrap();
        let e = known.bind(&id("b"), k2.public()).unwrap_err();
        assert_eq!(e.node, id("b"));
        let msg = e.to_string();
        assert!(
            msg.contains("node b presented static key")
                && msg.contains("known_nodes")
                && msg.contains("reinstalled"),
            "{msg}"
        );
        assert!(known.check(&id("b"), k2.public()).is_err());
        // Saved, private, and read back by a restarted node.
        let path = dir.path().join(KNOWN_NODES_FILE);
        assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o777, 0o600);
        let again = KnownNodes::load(dir.path()).unwrap();
        assert_eq!(again.get(&id("b")), Some(k1.public()));
        assert_eq!(again.get(&id("c")), Some(k2.public()));
        // The operator removes b's line: b's new key is taken, no restart.
        let text = std::fs::read_to_string(&path).unwrap();
        let kept: String = text
            .lines()
            .filter(|l| !l.starts_with("b "))
            .map(|l| format!("{l}\n"))
            .collect();
        std::fs::write(&path, kept).unwrap();
        known.bind(&id("b"), k2.public()).unwrap();
        assert_eq!(known.get(&id("b")), Some(k2.public()));
        assert_eq!(
            KnownNodes::load(dir.path()).unwrap().get(&id("b")),
            Some(k2.public())
        );
    }

    #[test]
    fn a_damaged_known_nodes_file_is_refused_naming_the_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(KNOWN_NODES_FILE);
        let write = |text: &str| {
            std::fs::write(&path, text).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        };
        let key = StaticKey::for_test("x").public().to_hex();
        write(&format!("# comment\n\nb {key}\n"));
        assert!(KnownNodes::load(dir.path()).is_ok());
        for (text, needle) in [
            (format!("b {key}\nb/ {key}\n"), "line 2"),
            (format!("b {}\n", &key[..10]), "64 hex digits"),
            (format!("b {key} extra\n"), "expected NODE KEY"),
            (format!("b {key}\nb {key}\n"), "listed twice"),
            ("b zz\n".to_string(), "line 1"),
        ] {
            write(&text);
            let e = KnownNodes::load(dir.path()).err().unwrap();
            assert!(e.contains(needle) && e.contains("known_nodes"), "{e}");
        }
        write(&format!("b {key}\n"));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(
            KnownNodes::load(dir.path()).is_ok(),
            "public keys may be read"
        );
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o664)).unwrap();
        let e = KnownNodes::load(dir.path()).err().unwrap();
        assert!(
            e.contains("writable by group or others") && e.contains("chmod 600"),
            "{e}"
        );
    }
}
