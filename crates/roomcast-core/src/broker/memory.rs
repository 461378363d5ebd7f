//! The in-process broker: one node, or several hubs in one process (tests).

use std::collections::HashSet;
use std::sync::{Arc, Mutex, RwLock};

use super::{Broker, BrokerError, EnvelopeSink};
use crate::{BoxFuture, Envelope, NodeId, Route};

struct Node {
    id: NodeId,
    sink: Arc<dyn EnvelopeSink>,
    rooms: Mutex<HashSet<String>>,
}

/// Delivers envelopes to the other hubs attached to the same instance, synchronously.
///
/// A single node on its own needs nothing else: the hub delivers locally and
/// the broker has no other node to carry anything to.
#[derive(Default)]
pub struct MemoryBroker {
    nodes: RwLock<Vec<Arc<Node>>>,
}

impl MemoryBroker {
    /// A broker with no nodes attached.
    pub fn new() -> MemoryBroker {
        MemoryBroker::default()
    }

    fn node(&self, id: NodeId) -> Option<Arc<Node>> {
        self.nodes
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .find(|n| n.id == id)
            .cloned()
    }
}

impl Broker for MemoryBroker {
    fn attach(&self, node: NodeId, sink: Arc<dyn EnvelopeSink>) {
        let mut nodes = self.nodes.write().unwrap_or_else(|e| e.into_inner());
        nodes.retain(|n| n.id != node);
        nodes.push(Arc::new(Node {
            id: node,
            sink,
            rooms: Mutex::new(HashSet::new()),
        }));
    }

    fn publish(&self, envelope: Envelope) -> BoxFuture<'_, Result<(), BrokerError>> {
        let targets: Vec<Arc<dyn EnvelopeSink>> = {
            let nodes = self.nodes.read().unwrap_or_else(|e| e.into_inner());
            nodes
                .iter()
                .filter(|n| n.id != envelope.origin)
                .filter(|n| match envelope.route() {
                    Route::Room(room) => n
                        .rooms
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .contains(room),
                    Route::Node(id) => n.id == id,
                    Route::User(_) | Route::All => true,
                })
                .map(|n| n.sink.clone())
                .collect()
        };
        for sink in targets {
            sink.receive(envelope.clone());
        }
        Box::pin(async { Ok(()) })
    }

    fn subscribe_room(&self, node: NodeId, room: &str) -> BoxFuture<'_, Result<(), BrokerError>> {
        if let Some(n) = self.node(node) {
            n.rooms
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(room.to_owned());
        }
        Box::pin(async { Ok(()) })
    }

    fn unsubscribe_room(&self, node: NodeId, room: &str) -> BoxFuture<'_, Result<(), BrokerError>> {
        if let Some(n) = self.node(node) {
            n.rooms
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(room);
        }
        Box::pin(async { Ok(()) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn memory_broker_passes_the_shared_suite() {
        // Every node of a memory "cluster" shares one instance.
        let shared = Arc::new(MemoryBroker::new());
        super::super::suite::run(|| shared.clone()).await;
    }
}
