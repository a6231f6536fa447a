//! A ring member as a process runs it: the node, its TCP server, its
//! gossip, on a tokio runtime of their own (two threads), started from a
//! `[ring]` config section. Used by mounts with a `[ring]` section and by
//! `chironfs ring-node` (a metadata-only arbiter).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use super::gossip::{Gossip, GossipConfig, GossipTiming};
use super::keys::{Credentials, Secret};
use super::node::{Node, NodeConfig, Quorum};
use super::transport::{Resolver, Server, TcpNet};
use super::{Liveness, NodeId};
use crate::config::RingConfig;

pub struct RingService {
    node: Node,
    gossip: Arc<Gossip>,
    server: Option<Server>,
    /// Where other nodes reach this one.
    pub advertise: String,
    // Last: the runtime ends after everything running on it is dropped.
    rt: tokio::runtime::Runtime,
}

/// This node's id: the configured one, or the host name.
pub fn node_id(cfg: &RingConfig) -> Result<NodeId, String> {
    match &cfg.node {
        Some(n) => NodeId::new(n),
        None => {
            let host = nix::unistd::gethostname()
                .map_err(|e| format!("ring: cannot read the host name: {e}"))?;
            let host = host.to_string_lossy();
            let short = host.split('.').next().unwrap_or("");
            NodeId::new(short)
                .map_err(|e| format!("ring: host name is no node id ({e}); set ring.node"))
        }
    }
}

/// Reads the shared secret: a file of at least 16 bytes (a trailing
/// newline is not part of it), that only its owner may read. Returns the
/// keys derived from it, for the links and the gossip.
pub fn read_secret(path: &Path) -> Result<Secret, String> {
    let what = format!("ring.secret_file '{}'", path.display());
    let meta = std::fs::metadata(path).map_err(|e| format!("{what}: {e}"))?;
    if meta.mode() & 0o077 != 0 {
        return Err(format!(
            "{what} is readable by group or others (mode {:04o}): chmod 600 it",
            meta.mode() & 0o7777
        ));
    }
    let bytes = std::fs::read(path).map_err(|e| format!("{what}: {e}"))?;
    let trimmed = bytes.trim_ascii_end();
    let secret = Secret::new(trimmed).map_err(|_| {
        format!(
            "{what} holds {} bytes; at least 16 are needed (e.g. head -c 32 /dev/urandom | base64 > FILE)",
            trimmed.len()
        )
    })?;
    Ok(secret)
}

fn seeds(cfg: &RingConfig) -> Result<BTreeMap<NodeId, String>, String> {
    let mut out = BTreeMap::new();
    for s in &cfg.seeds {
        let (n, a) = s.split_once('@').ok_or_else(|| {
            format!("bad value '{s}' for option 'ring.seeds': expected NODE@HOST:PORT")
        })?;
        out.insert(NodeId::new(n)?, a.to_string());
    }
    Ok(out)
}

async fn resolve(addr: &str) -> Result<SocketAddr, String> {
    tokio::net::lookup_host(addr)
        .await
        .map_err(|e| format!("ring: cannot resolve '{addr}': {e}"))?
        .next()
        .ok_or_else(|| format!("ring: '{addr}' resolves to no address"))
}

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s)
}

/// Adds to `st` the nodes `gossip` sees alive outside the layout.
pub fn peers_into(mut st: super::node::RingStatus, gossip: &Gossip) -> super::node::RingStatus {
    st.peers = gossip
        .live_nodes()
        .into_iter()
        .filter(|(n, _)| n.as_str() != st.node && !st.members.iter().any(|m| m.node == n.as_str()))
        .map(|(n, a)| (n.to_string(), a))
        .collect();
    st
}

impl RingService {
    /// Starts a ring member whose store lives in `dir`.
    pub fn start(cfg: &RingConfig, dir: &Path) -> Result<RingService, String> {
        let id = node_id(cfg)?;
        let secret = read_secret(&cfg.secret_file)?;
        // This node's static key and the nodes it met, beside its store.
        let (creds, drawn) =
            Credentials::load(id.clone(), secret.clone(), dir).map_err(|e| format!("ring: {e}"))?;
        let seeds = seeds(cfg)?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("chironfs-ring")
            .enable_all()
            .build()
            .map_err(|e| format!("ring: cannot start its threads: {e}"))?;
        let node_slot: Arc<OnceLock<Node>> = Arc::new(OnceLock::new());
        let gossip_slot: Arc<OnceLock<Arc<Gossip>>> = Arc::new(OnceLock::new());
        let resolver: Resolver = {
            let (node_slot, gossip_slot, seeds) =
                (node_slot.clone(), gossip_slot.clone(), seeds.clone());
            Arc::new(move |n: &NodeId| {
                if let Some(a) = node_slot
                    .get()
                    .and_then(|node| node.layout().addresses().remove(n))
                {
                    return Some(a);
                }
                if let Some(a) = seeds.get(n) {
                    return Some(a.clone());
                }
                gossip_slot
                    .get()
                    .and_then(|g| g.live_nodes().into_iter().find(|(id, _)| id == n))
                    .map(|(_, a)| a)
            })
        };
        let (listener, advertise, gossip) = rt.block_on(async {
            let listen = resolve(&cfg.listen).await?;
            let listener = tokio::net::TcpListener::bind(listen)
                .await
                .map_err(|e| format!("ring: cannot listen on {listen}: {e}"))?;
            let bound = listener
                .local_addr()
                .map_err(|e| format!("ring: {e}"))?;
            let advertise = match &cfg.advertise {
                Some(a) => a.clone(),
                None if listen.port() == 0 => bound.to_string(),
                None => cfg.listen.clone(),
            };
            let gossip_addr = resolve(&advertise).await?;
            let gossip_addr = if gossip_addr.ip().is_unspecified() {
                return Err(format!(
                    "ring: listen address {} is a wildcard: set ring.advertise to the address other nodes reach this one at",
                    cfg.listen
                ));
            } else {
                SocketAddr::new(gossip_addr.ip(), bound.port())
            };
            let timing = GossipTiming {
                interval: secs(cfg.gossip_interval),
                ..GossipTiming::default()
            };
            let gossip = Gossip::start(GossipConfig {
                node: id.clone(),
                listen: gossip_addr,
                ring_addr: advertise.clone(),
                seeds: seeds.values().cloned().collect(),
                secret: secret.clone(),
                timing,
            })
            .await
            .map_err(|e| format!("ring: cannot start gossip on {gossip_addr} (udp): {e}"))?;
            Ok::<_, String>((listener, advertise, Arc::new(gossip)))
        })?;
        let _ = gossip_slot.set(gossip.clone());
        let net = Arc::new(TcpNet::new(creds.clone(), secs(cfg.timeout), resolver));
        let mut ncfg = NodeConfig::new(id.clone());
        ncfg.quorum = Quorum {
            n: cfg.n,
            r: cfg.r,
            w: cfg.w,
        };
        ncfg.seeds = seeds.keys().cloned().collect();
        ncfg.anti_entropy_interval = Some(secs(cfg.anti_entropy_interval));
        ncfg.read_lease = secs(cfg.read_lease);
        // Checked by `validate` already; an error here is one still.
        ncfg.operators = crate::ring::operator::Operators::parse(&cfg.operator_keys)
            .map_err(|e| format!("ring.operator_keys: {e}"))?;
        if !ncfg.operators.enforced() {
            tracing::warn!(
                "ring: no ring.operator_keys: any member of the ring can change its layout (chironctl ring keygen, see chironfs.toml(5))"
            );
        }
        let live: Arc<dyn Liveness> = gossip.clone();
        let node = Node::open(ncfg, dir, net, live).map_err(|e| format!("ring: {e}"))?;
        let _ = node_slot.set(node.clone());
        let server = {
            let _guard = rt.enter();
            let server = Server::spawn(listener, creds.clone(), Arc::new(node.clone()))
                .map_err(|e| format!("ring: {e}"))?;
            node.start();
            let (n, g) = (node.clone(), gossip.clone());
            tokio::spawn(async move {
                loop {
                    g.set_layout_version(n.layout().current.version);
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            });
            server
        };
        tracing::info!(
            "ring: node {id} listening on {advertise}, static key {}{}",
            creds.key.public(),
            if drawn {
                format!(
                    " (drawn now, saved in {})",
                    dir.join(super::keys::STATIC_KEY_FILE).display()
                )
            } else {
                String::new()
            }
        );
        Ok(RingService {
            node,
            gossip,
            server: Some(server),
            advertise,
            rt,
        })
    }

    pub fn node(&self) -> &Node {
        &self.node
    }

    pub fn gossip(&self) -> Arc<Gossip> {
        self.gossip.clone()
    }

    pub fn handle(&self) -> tokio::runtime::Handle {
        self.rt.handle().clone()
    }

    /// Runs `f` on the ring's runtime from a thread outside it.
    pub fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        self.rt.block_on(f)
    }

    /// Leaves the gossip, stops serving and makes the store durable.
    pub fn shutdown(mut self) {
        self.node.stop();
        let g = self.gossip.clone();
        self.rt.block_on(async move {
            let _ = tokio::time::timeout(Duration::from_secs(2), g.shutdown()).await;
        });
        {
            let _guard = self.rt.enter();
            self.server.take();
        }
    }
}
