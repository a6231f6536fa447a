//! Operator keys: who may change the ring's layout (DESIGN.md section 7,
//! "Who may change the layout").
//!
//! A node's links prove which member sent a message (`noise`), but every
//! member is trusted alike: without more, any member (a compromised
//! arbiter, say) could push a layout that gives it every partition. With
//! `ring.operator_keys` set, a node takes a layout version from the
//! network only if one of those Ed25519 keys signed it. The private half
//! stays with the operator (`chironctl ring keygen FILE`), and only
//! `chironctl ring apply --key FILE` signs: it asks the node for the
//! version the staged changes make (`ring-plan`), signs it, and the node
//! commits that version only if it computes the same one and the
//! signature holds.
//!
//! What a signature covers: the committed part of a version (its number,
//! N, R, W, members, their addresses and join versions, the preference
//! lists). Not covered, because nodes change them on their own: the
//! acknowledgements and sync marks of a transition, and staged changes
//! (the operator sees them in `chironctl ring status` before signing).

use std::fmt;
use std::path::Path;

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};

use super::keys::{hex, key_from_hex as from_hex};
use super::layout::LayoutVersion;

/// Length of an Ed25519 key, private seed or public (that of the ring's
/// X25519 keys too, whose hex helpers these share).
pub const KEY_LEN: usize = super::keys::KEY_LEN;
const SIGNATURE_LEN: usize = 64;
/// What a signature is over: this label, then the version as postcard.
const LABEL: &[u8] = b"chironfs ring layout v1\0";

/// An operator's signature of one layout version, with the public key
/// that made it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayoutSignature {
    pub key: [u8; KEY_LEN],
    /// 64 bytes (a Vec: serde has no 64-byte arrays).
    pub sig: Vec<u8>,
}

/// The bytes a signature of `v` covers: `v` without its signature.
fn signed_bytes(v: &LayoutVersion) -> Vec<u8> {
    let mut unsigned = v.clone();
    unsigned.signature = None;
    let mut out = LABEL.to_vec();
    // Serializing a plain struct of maps and vectors into a Vec cannot
    // fail; if it ever did, the empty body would match no signature.
    out.extend(postcard::to_stdvec(&unsigned).unwrap_or_default());
    out
}

/// An operator's private key. Never printed.
pub struct OperatorKey(SigningKey);

impl OperatorKey {
    /// A new random key.
    pub fn generate() -> Result<OperatorKey, String> {
        let mut seed = [0u8; KEY_LEN];
        getrandom::fill(&mut seed).map_err(|e| format!("no random bytes for a key: {e}"))?;
        Ok(OperatorKey(SigningKey::from_bytes(&seed)))
    }

    /// The key of a fixed seed (tests that must replay exactly).
    #[cfg(test)]
    pub fn from_seed(seed: [u8; KEY_LEN]) -> OperatorKey {
        OperatorKey(SigningKey::from_bytes(&seed))
    }

    /// The key in `path`: one line of 64 hex digits, in a file no one but
    /// its owner may read.
    pub fn load(path: &Path) -> Result<OperatorKey, String> {
        let what = || format!("operator key '{}'", path.display());
        let bytes = super::keys::read_private_file(path, 4 * KEY_LEN)
            .map_err(|e| format!("{}: {e}", what()))?;
        let text = String::from_utf8(bytes).map_err(|_| format!("{}: not text", what()))?;
        let seed = from_hex(text.trim()).ok_or_else(|| {
            format!(
                "{}: expected one line of {} hex digits (made by `chironctl ring keygen`)",
                what(),
                2 * KEY_LEN
            )
        })?;
        Ok(OperatorKey(SigningKey::from_bytes(&seed)))
    }

    /// Saves the key in a new file `path` (mode 0600, written durably);
    /// refused if the file exists.
    pub fn save_new(&self, path: &Path) -> Result<(), String> {
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| format!("'{}' is not a file name", path.display()))?;
        let text = format!("{}\n", hex(self.0.as_bytes()));
        match super::keys::write_new_private(dir, name, text.as_bytes()) {
            Ok(true) => Ok(()),
            Ok(false) => Err(format!(
                "'{}' exists: not overwritten (an operator key is not replaced by accident)",
                path.display()
            )),
            Err(e) => Err(format!("cannot write '{}': {e}", path.display())),
        }
    }

    pub fn public(&self) -> OperatorPublic {
        OperatorPublic(self.0.verifying_key())
    }

    /// Signs `v` (its committed part: [`signed_bytes`]).
    pub fn sign(&self, v: &LayoutVersion) -> LayoutSignature {
        LayoutSignature {
            key: self.0.verifying_key().to_bytes(),
            sig: self.0.sign(&signed_bytes(v)).to_bytes().to_vec(),
        }
    }
}

impl fmt::Debug for OperatorKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "OperatorKey(public {:?})", self.public())
    }
}

/// An operator's public key, as `ring.operator_keys` lists it (64 hex
/// digits).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct OperatorPublic(VerifyingKey);

impl OperatorPublic {
    pub fn parse(s: &str) -> Result<OperatorPublic, String> {
        let bytes =
            from_hex(s.trim()).ok_or_else(|| format!("expected {} hex digits", 2 * KEY_LEN))?;
        VerifyingKey::from_bytes(&bytes)
            .map(OperatorPublic)
            .map_err(|_| "not an Ed25519 public key".to_string())
    }

    pub fn to_hex(self) -> String {
        hex(self.0.as_bytes())
    }
}

impl fmt::Debug for OperatorPublic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "OperatorPublic({})", &self.to_hex()[..16])
    }
}

/// The operator keys a node takes layouts from; none: any member may
/// change the layout (as before operator keys existed).
#[derive(Clone, Debug, Default)]
pub struct Operators(Vec<OperatorPublic>);

impl Operators {
    pub fn new(keys: Vec<OperatorPublic>) -> Operators {
        Operators(keys)
    }

    /// Parses `ring.operator_keys`; the error names the entry.
    pub fn parse(list: &[String]) -> Result<Operators, String> {
        list.iter()
            .map(|s| OperatorPublic::parse(s).map_err(|e| format!("'{s}': {e}")))
            .collect::<Result<Vec<_>, _>>()
            .map(Operators)
    }

    /// True if layouts must be signed.
    pub fn enforced(&self) -> bool {
        !self.0.is_empty()
    }

    /// Checks that one of the keys signed `v`. Always fine when no key is
    /// set.
    pub fn verify(&self, v: &LayoutVersion) -> Result<(), String> {
        if !self.enforced() {
            return Ok(());
        }
        let Some(s) = &v.signature else {
            return Err(format!(
                "layout version {} is not signed by an operator key",
                v.version
            ));
        };
        let Some(key) = self.0.iter().find(|k| k.0.as_bytes() == &s.key) else {
            return Err(format!(
                "layout version {} is signed by {}, which is not in ring.operator_keys",
                v.version,
                &hex(&s.key)[..16]
            ));
        };
        let sig: [u8; SIGNATURE_LEN] = s.sig.as_slice().try_into().map_err(|_| {
            format!(
                "layout version {}: a signature of {} bytes",
                v.version,
                s.sig.len()
            )
        })?;
        key.0
            .verify(&signed_bytes(v), &Signature::from_bytes(&sig))
            .map_err(|_| {
                format!(
                    "layout version {}: the operator signature does not match it",
                    v.version
                )
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ring::NodeId;
    use crate::ring::layout::{LayoutHistory, Quorum};
    use std::os::unix::fs::PermissionsExt;

    fn layout() -> LayoutVersion {
        let mut l = LayoutHistory::empty(Quorum::default());
        for n in ["a", "b", "c"] {
            l.stage_join(NodeId::new(n).unwrap(), format!("{n}:1"));
        }
        l.apply(Quorum::default()).unwrap();
        l.current
    }

    #[test]
    fn only_a_listed_key_signing_this_very_version_passes() {
        let k = OperatorKey::generate().unwrap();
        let other = OperatorKey::generate().unwrap();
        let ops = Operators::new(vec![k.public()]);
        let mut v = layout();
        // Not enforced: anything goes, as before.
        assert!(Operators::default().verify(&v).is_ok());
        let e = ops.verify(&v).unwrap_err();
        assert!(e.contains("not signed"), "{e}");
        v.signature = Some(k.sign(&v));
        ops.verify(&v).unwrap();
        // Any change to the committed part breaks it.
        let mut moved = v.clone();
        moved.w = 3;
        assert!(ops.verify(&moved).unwrap_err().contains("does not match"));
        let mut moved = v.clone();
        moved.owners[0].swap(0, 1);
        assert!(ops.verify(&moved).is_err());
        let mut moved = v.clone();
        moved.version += 1;
        assert!(ops.verify(&moved).is_err());
        // Another key, even one that signs correctly, is not listed.
        let mut by_other = v.clone();
        by_other.signature = Some(other.sign(&v));
        assert!(
            ops.verify(&by_other)
                .unwrap_err()
                .contains("not in ring.operator_keys")
        );
        // A listed key with a mangled signature (a short one too).
        let mut bad = v.clone();
        if let Some(s) = bad.signature.as_mut() {
            s.sig[5] ^= 1;
        }
        assert!(ops.verify(&bad).is_err());
        if let Some(s) = bad.signature.as_mut() {
            s.sig.truncate(10);
        }
        assert!(ops.verify(&bad).unwrap_err().contains("10 bytes"));
    }

    #[test]
    fn keys_round_trip_through_files_and_config_text() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("op.key");
        let k = OperatorKey::generate().unwrap();
        k.save_new(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        // Never overwritten.
        let e = OperatorKey::generate()
            .unwrap()
            .save_new(&path)
            .unwrap_err();
        assert!(e.contains("exists"), "{e}");
        let back = OperatorKey::load(&path).unwrap();
        assert!(back.public() == k.public());
        let public = OperatorPublic::parse(&k.public().to_hex()).unwrap();
        assert!(public == k.public());
        // Bad input: clear errors, no panic.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(OperatorKey::load(&path).unwrap_err().contains("chmod 600"));
        let junk = dir.path().join("junk.key");
        std::fs::write(&junk, "zz\n").unwrap();
        std::fs::set_permissions(&junk, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(
            OperatorKey::load(&junk)
                .unwrap_err()
                .contains("64 hex digits")
        );
        std::fs::write(&junk, [0xff, 0xfe, b'\n']).unwrap();
        assert!(OperatorKey::load(&junk).unwrap_err().contains("not text"));
        assert!(OperatorKey::load(&dir.path().join("none")).is_err());
        for bad in [
            "",
            "00",
            &"g".repeat(64),
            &"é".repeat(32),
            &format!("+f{}", "0".repeat(62)),
        ] {
            assert!(OperatorPublic::parse(bad).is_err(), "{bad}");
        }
        let e = Operators::parse(&["nope".to_string()]).unwrap_err();
        assert!(e.contains("'nope'"), "{e}");
    }
}
