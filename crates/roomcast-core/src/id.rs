//! Identifiers of nodes and connections.

use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};

/// Identifies one roomcast process (a node of a cluster).
///
/// Chosen at random when a [`Hub`](crate::Hub) starts, so two nodes of a cluster
/// never share an id, and neither do two runs of the same node.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(pub u32);

impl NodeId {
    /// A fresh, random node id.
    pub fn random() -> NodeId {
        NodeId(random_u64() as u32 & 0x00ff_ffff | 0x0100_0000)
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:08x}", self.0)
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeId({self})")
    }
}

/// Identifies one client connection, unique across the nodes of a cluster.
///
/// The high 24 bits hold the node id, the low 40 bits a per-node counter. On the
/// wire it is 16 lowercase hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(pub u64);

impl ConnId {
    /// The node the connection lives on.
    pub fn node(self) -> NodeId {
        NodeId((self.0 >> 40) as u32 | 0x0100_0000)
    }
}

impl fmt::Display for ConnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

impl fmt::Debug for ConnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ConnId({self})")
    }
}

/// The text was not 16 hex digits.
#[derive(Debug, Clone, thiserror::Error)]
#[error("a connection id is 16 hex digits")]
pub struct ParseConnIdError;

impl FromStr for ConnId {
    type Err = ParseConnIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.len() != 16 {
            return Err(ParseConnIdError);
        }
        u64::from_str_radix(s, 16)
            .map(ConnId)
            .map_err(|_| ParseConnIdError)
    }
}

/// Hands out connection ids for one node.
#[derive(Debug)]
pub(crate) struct ConnIdGen {
    node: NodeId,
    next: AtomicU64,
}

impl ConnIdGen {
    pub(crate) fn new(node: NodeId) -> Self {
        ConnIdGen {
            node,
            next: AtomicU64::new(1),
        }
    }

    pub(crate) fn next(&self) -> ConnId {
        let n = self.next.fetch_add(1, Ordering::Relaxed) & 0xff_ffff_ffff;
        ConnId(((self.node.0 as u64 & 0x00ff_ffff) << 40) | n)
    }
}

/// A random number from the standard library's per-process random hasher keys,
/// mixed with the time; good enough for ids, not for secrets.
pub(crate) fn random_u64() -> u64 {
    use std::collections::hash_map::RandomState;
    use std::hash::{BuildHasher, Hasher};
    let mut h = RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default(),
    );
    h.write_u32(std::process::id());
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conn_ids_round_trip_and_carry_their_node() {
        let node = NodeId(0x01ab_cdef);
        let ids = ConnIdGen::new(node);
        let a = ids.next();
        let b = ids.next();
        assert_ne!(a, b);
        assert_eq!(a.node(), node);
        assert_eq!(a.to_string().parse::<ConnId>().unwrap(), a);
        assert!("xyz".parse::<ConnId>().is_err());
        assert!("000000000000000g".parse::<ConnId>().is_err());
    }
}
