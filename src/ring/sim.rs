//! An in-process network for ring tests: nodes are registered by id, and
//! a test can kill a node (it neither sends nor answers) or cut the link
//! between two nodes (a partition). Every message goes through the wire
//! encoding, so what the simulation carries is what TCP would.
//! The failure detector of a simulated node sees exactly what the network
//! lets through.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::RwLock;

use super::{BoxFuture, Handler, Liveness, Net, NetError, NodeId, Request, Response};

#[derive(Default)]
pub struct World {
    handlers: RwLock<HashMap<NodeId, Arc<dyn Handler>>>,
    down: RwLock<HashSet<NodeId>>,
    cut: RwLock<HashSet<(NodeId, NodeId)>>,
}

impl World {
    pub fn new() -> Arc<World> {
        Arc::new(World::default())
    }

    pub fn register(&self, id: NodeId, h: Arc<dyn Handler>) {
        self.handlers.write().insert(id, h);
    }

    /// Kills (`true`) or revives a node.
    pub fn set_down(&self, id: &NodeId, down: bool) {
        if down {
            self.down.write().insert(id.clone());
        } else {
            self.down.write().remove(id);
        }
    }

    /// Cuts every link between the two groups.
    pub fn partition(&self, a: &[NodeId], b: &[NodeId]) {
        let mut cut = self.cut.write();
        for x in a {
            for y in b {
                cut.insert((x.clone(), y.clone()));
                cut.insert((y.clone(), x.clone()));
            }
        }
    }

    pub fn heal(&self) {
        self.cut.write().clear();
    }

    fn reachable(&self, from: &NodeId, to: &NodeId) -> bool {
        let down = self.down.read();
        !down.contains(from)
            && !down.contains(to)
            && !self.cut.read().contains(&(from.clone(), to.clone()))
    }

    pub fn net(self: &Arc<World>, me: &NodeId) -> Arc<SimNet> {
        Arc::new(SimNet {
            world: self.clone(),
            me: me.clone(),
        })
    }
}

pub struct SimNet {
    world: Arc<World>,
    me: NodeId,
}

impl Net for SimNet {
    fn call(&self, to: &NodeId, req: Request) -> BoxFuture<'static, Result<Response, NetError>> {
        let (world, me, to) = (self.world.clone(), self.me.clone(), to.clone());
        Box::pin(async move {
            // A little latency, so that concurrent work interleaves.
            tokio::time::sleep(Duration::from_micros(50)).await;
            let unreachable = || NetError::Unreachable(to.clone(), "simulated failure".into());
            if !world.reachable(&me, &to) {
                return Err(unreachable());
            }
            let Some(h) = world.handlers.read().get(&to).cloned() else {
                return Err(NetError::UnknownNode(to.clone()));
            };
            let req: Request = roundtrip(&req).ok_or_else(unreachable)?;
            let resp = h.handle(me.clone(), req).await;
            // The answer is lost if the link failed meanwhile.
            if !world.reachable(&to, &me) {
                return Err(unreachable());
            }
            roundtrip(&resp).ok_or_else(unreachable)
        })
    }
}

fn roundtrip<T: serde::Serialize + serde::de::DeserializeOwned>(v: &T) -> Option<T> {
    let bytes = postcard::to_stdvec(v).ok()?;
    postcard::from_bytes(&bytes).ok()
}

impl Liveness for SimNet {
    fn is_alive(&self, node: &NodeId) -> bool {
        *node == self.me || self.world.reachable(&self.me, node)
    }
}
