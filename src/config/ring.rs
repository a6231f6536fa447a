//! The `[ring]` section: this host's membership in the metadata ring
//! (DESIGN.md section 7). Only in a config file (a table has no `-o` form).

use std::path::PathBuf;

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RingConfig {
    /// This node's name: 1 to 64 of letters, digits, '.', '_', '-'.
    /// Default: the host name.
    pub node: Option<String>,
    /// HOST:PORT the ring listens on, TCP for requests and UDP for gossip
    /// (same port). Required.
    pub listen: String,
    /// HOST:PORT other nodes reach this one at, if not `listen` (for
    /// example when listening on 0.0.0.0). Default: `listen`.
    pub advertise: Option<String>,
    /// Nodes to contact at start, as NODE@HOST:PORT. Default: none (a
    /// first node; others join it).
    pub seeds: Vec<String>,
    /// File holding the ring's shared secret (at least 16 bytes), readable
    /// by its owner only. Every node of the ring has the same. Required.
    pub secret_file: PathBuf,
    /// Copies of each key. Default: 3. With `r` and `w`: the quorum of a
    /// ring's first layout (a committed layout keeps its own), and the R
    /// and W of a layout stored before layouts kept them. R + W > N and
    /// W > N/2 are required.
    pub n: u8,
    /// Answers a read waits for. Default: 2.
    pub r: u8,
    /// Acknowledgements a write waits for. Default: 2.
    pub w: u8,
    /// Seconds a request to another node may take. Default: 2.
    pub timeout: f64,
    /// Seconds between gossip rounds. Default: 1.
    pub gossip_interval: f64,
    /// Seconds between anti-entropy passes over every owned partition.
    /// Default: 10.
    pub anti_entropy_interval: f64,
    /// Seconds a host must stay unreachable before the others take it for
    /// dead: resyncs go ahead without the writes it may owe, and replicas
    /// it left out of sync are resynced for it. Default: 60.
    pub takeover_after: f64,
    /// Seconds of a read lease: a host serves file contents only while a
    /// majority of the ring granted it one, renewed every probe_interval
    /// and at least every third of it; a
    /// host cut off from the majority answers EIO after at most this, and
    /// a host that takes a replica out of service while another cannot be
    /// told waits at most this (plus a margin) before it goes on. The
    /// same on every node. Default: 6.
    pub read_lease: f64,
    /// Public Ed25519 keys (64 hex digits each, from `chironctl ring
    /// keygen`): a layout version is taken from the network only if one
    /// of them signed it, and `chironctl ring apply` must sign with the
    /// private half (`--key`). The same on every node. Default: none (any
    /// member may change the layout).
    pub operator_keys: Vec<String>,
}

impl Default for RingConfig {
    fn default() -> Self {
        RingConfig {
            node: None,
            listen: String::new(),
            advertise: None,
            seeds: Vec::new(),
            secret_file: PathBuf::new(),
            n: 3,
            r: 2,
            w: 2,
            timeout: 2.0,
            gossip_interval: 1.0,
            anti_entropy_interval: 10.0,
            takeover_after: 60.0,
            read_lease: 6.0,
            operator_keys: Vec::new(),
        }
    }
}

impl RingConfig {
    /// Checks what serde cannot; the error names the key.
    pub fn validate(&self) -> Result<(), (String, String, String)> {
        let bad = |k: &str, v: String, why: &str| Err((format!("ring.{k}"), v, why.to_string()));
        if self.listen.is_empty() {
            return bad("listen", String::new(), "required: HOST:PORT to listen on");
        }
        if !self.listen.contains(':') {
            return bad("listen", self.listen.clone(), "expected HOST:PORT");
        }
        if self.secret_file.as_os_str().is_empty() {
            return bad(
                "secret_file",
                String::new(),
                "required: a file with the ring's shared secret",
            );
        }
        if let Some(node) = &self.node
            && let Err(e) = crate::ring::NodeId::new(node)
        {
            return bad("node", node.clone(), &e);
        }
        for s in &self.seeds {
            let ok = s
                .split_once('@')
                .is_some_and(|(n, a)| crate::ring::NodeId::new(n).is_ok() && a.contains(':'));
            if !ok {
                return bad("seeds", s.clone(), "expected NODE@HOST:PORT");
            }
        }
        if let Err(e) = crate::ring::operator::Operators::parse(&self.operator_keys) {
            return bad("operator_keys", self.operator_keys.join(", "), &e);
        }
        if !(1..=7).contains(&self.n) {
            return bad("n", self.n.to_string(), "expected 1 to 7");
        }
        for (k, v) in [("r", self.r), ("w", self.w)] {
            if v == 0 || v > self.n {
                return bad(k, v.to_string(), "expected 1 to n");
            }
        }
        let q = crate::ring::layout::Quorum {
            n: self.n,
            r: self.r,
            w: self.w,
        };
        if let Err(why) = q.check() {
            let r_and_w_meet = u16::from(self.r) + u16::from(self.w) > u16::from(self.n);
            let (k, v) = if r_and_w_meet {
                ("w", self.w)
            } else {
                ("r", self.r)
            };
            return bad(k, v.to_string(), &why);
        }
        for (k, v) in [
            ("timeout", self.timeout),
            ("gossip_interval", self.gossip_interval),
            ("anti_entropy_interval", self.anti_entropy_interval),
            ("takeover_after", self.takeover_after),
            ("read_lease", self.read_lease),
        ] {
            if !(0.01..=3600.0).contains(&v) {
                return bad(k, v.to_string(), "expected 0.01 to 3600 seconds");
            }
        }
        // A host taken for dead must have lost its read lease (so stopped
        // changing anything) before another acts in its name: the fence
        // waits for that too, but a shorter setting would only make every
        // takeover wait.
        if self.takeover_after <= self.read_lease * 1.01 + self.timeout {
            return bad(
                "takeover_after",
                self.takeover_after.to_string(),
                &format!(
                    "must exceed read_lease ({}) plus 1% plus timeout ({}): a host is taken for dead only once its read lease has run out",
                    self.read_lease, self.timeout
                ),
            );
        }
        Ok(())
    }
}
