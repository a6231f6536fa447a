//! The ring commands of the status socket (`ring-status`, `ring-join`,
//! `ring-leave`, `ring-quorum`, `ring-plan`, `ring-apply`, `ring-finish`, `ring-get`,
//! `ring-put`), served by mounts
//! with a `[ring]` section and by `chironfs ring-node`.

use std::time::Duration;

use super::protocol::{Request, Response};
use crate::ring::NodeId;
use crate::ring::node::{Found, Node};
use crate::ring::service::RingService;

/// Longest a ring command may take (the client waits 15 s for a reply).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(10);

/// A running ring member as the status socket reaches it: the node, and
/// the runtime its async calls run on (the socket is served by plain
/// threads). Cheap to clone.
#[derive(Clone)]
pub struct RingHandle {
    node: Node,
    gossip: std::sync::Arc<crate::ring::gossip::Gossip>,
    rt: tokio::runtime::Handle,
}

impl RingHandle {
    pub fn new(ring: &RingService) -> RingHandle {
        RingHandle {
            node: ring.node().clone(),
            gossip: ring.gossip(),
            rt: ring.handle(),
        }
    }

    /// Runs `f` on the ring's runtime, giving up after [`COMMAND_TIMEOUT`].
    fn run<T>(&self, what: &str, f: impl Future<Output = T>) -> Result<T, String> {
        self.rt
            .block_on(async { tokio::time::timeout(COMMAND_TIMEOUT, f).await })
            .map_err(|_| format!("{what}: no answer within {} s", COMMAND_TIMEOUT.as_secs()))
    }

    pub fn handle(&self, req: &Request) -> Response {
        match self.dispatch(req) {
            Ok(r) => r,
            Err(e) => Response::error(e),
        }
    }

    fn dispatch(&self, req: &Request) -> Result<Response, String> {
        let node_arg = || -> Result<NodeId, String> {
            let n = req
                .node
                .as_deref()
                .ok_or_else(|| format!("{} needs a node name", req.command))?;
            NodeId::new(n)
        };
        let key = || -> Result<&[u8], String> {
            req.key
                .as_deref()
                .map(str::as_bytes)
                .ok_or_else(|| format!("{} needs a key", req.command))
        };
        let status = |r: Result<_, String>| -> Result<Response, String> {
            r?;
            Ok(Response {
                ring: Some(crate::ring::service::peers_into(
                    self.node.status(),
                    &self.gossip,
                )),
                ..Response::ok(None)
            })
        };
        match req.command.as_str() {
            "ring-status" => status(Ok(())),
            "ring-join" => {
                let node = node_arg()?;
                let addr = req
                    .addr
                    .clone()
                    .ok_or("ring-join needs the node's address (HOST:PORT)")?;
                if !addr.contains(':') {
                    return Err(format!(
                        "bad address '{addr}' for {node}: expected HOST:PORT"
                    ));
                }
                status(
                    self.run("ring-join", self.node.stage_join(node, addr))?
                        .map(drop),
                )
            }
            "ring-leave" => {
                let node = node_arg()?;
                status(
                    self.run("ring-leave", self.node.stage_leave(node))?
                        .map(drop),
                )
            }
            "ring-quorum" => {
                let q = req
                    .quorum
                    .ok_or("ring-quorum needs the quorum (n, r and w)")?;
                status(
                    self.run("ring-quorum", self.node.stage_quorum(q))?
                        .map(drop),
                )
            }
            "ring-plan" => Ok(Response {
                plan: Some(self.node.plan()?),
                ..Response::ok(None)
            }),
            "ring-apply" => status(
                self.run("ring-apply", self.node.apply(req.signature.clone()))?
                    .map(drop),
            ),
            "ring-finish" => status(self.run("ring-finish", self.node.force_finish())?.map(drop)),
            "ring-get" => {
                let key = key()?;
                let found = self
                    .run("ring-get", self.node.get(key))?
                    .map_err(|e| e.to_string())?;
                Ok(found_response(&found))
            }
            "ring-put" => {
                let key = key()?;
                let value = req
                    .value
                    .as_deref()
                    .ok_or("ring-put needs a value")?
                    .as_bytes()
                    .to_vec();
                let put = async {
                    let context = match &req.context {
                        Some(c) => c.clone(),
                        None => self.node.get(key).await?.context(),
                    };
                    self.node.put(key, Some(value), &context).await
                };
                let version = self.run("ring-put", put)?.map_err(|e| e.to_string())?;
                Ok(found_response(&Found {
                    version: Some(version),
                }))
            }
            other => Err(format!("unknown command '{other}'")),
        }
    }
}

/// The siblings of a key, as text, and the context to write them back with.
fn found_response(found: &Found) -> Response {
    Response {
        values: Some(
            found
                .values()
                .iter()
                .map(|v| String::from_utf8_lossy(v).into_owned())
                .collect(),
        ),
        context: Some(found.context()),
        ..Response::ok(None)
    }
}
