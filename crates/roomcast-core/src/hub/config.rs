//! What a hub is configured with, and the counters it keeps.

use std::sync::atomic::AtomicU64;

use crate::room::{RoomRules, DEFAULT_MAX_ROOM_NAME};

/// Limits and room rules of a hub. `Default` gives the documented defaults.
#[derive(Debug, Clone)]
pub struct HubConfig {
    /// The most connections this node accepts; 0 means no limit. Default: 100 000.
    pub max_connections: usize,
    /// Bytes a connection's outgoing queue may hold before it is disconnected as a
    /// slow consumer (close code 4001). Default: 1 MiB.
    pub max_queue_bytes: usize,
    /// The most rooms one connection may be in. Default: 100.
    pub max_rooms_per_connection: usize,
    /// The longest room name, in bytes. Default: 200.
    pub max_room_name_bytes: usize,
    /// The most bytes of JSON a connection's session data may hold. Default: 16 KiB.
    pub max_session_bytes: usize,
    /// Per-room settings by name pattern.
    pub rooms: RoomRules,
}

impl Default for HubConfig {
    fn default() -> Self {
        HubConfig {
            max_connections: 100_000,
            max_queue_bytes: 1 << 20,
            max_rooms_per_connection: 100,
            max_room_name_bytes: DEFAULT_MAX_ROOM_NAME,
            max_session_bytes: 16 << 10,
            rooms: RoomRules::default(),
        }
    }
}

/// Counters the hub keeps; the server exports them as Prometheus metrics.
#[derive(Debug, Default)]
pub struct HubMetrics {
    /// Connections accepted since start.
    pub connections_accepted: AtomicU64,
    /// Connections closed since start.
    pub connections_closed: AtomicU64,
    /// Publications sent by this node (clients, API, library).
    pub publications: AtomicU64,
    /// Frames queued for clients.
    pub messages_out: AtomicU64,
    /// Bytes queued for clients.
    pub bytes_out: AtomicU64,
    /// Connections closed because their queue overflowed.
    pub slow_consumer_disconnects: AtomicU64,
    /// Broker, presence and history store failures.
    pub backend_errors: AtomicU64,
    /// Joins that resumed from a position in a room's history and got everything after it.
    pub recoveries: AtomicU64,
    /// Joins that asked to resume and were told they were not recovered.
    pub recoveries_failed: AtomicU64,
    /// Publications replayed from history.
    pub replayed: AtomicU64,
}
