//! The Django Channels bridge as the server uses it (`[channels]`): started
//! from the configuration around the node's broker and history store, the
//! channel name `/api/connections/{conn}` shows, and the messages an
//! endpoint in channel mode sends to a Django worker. The bridge itself is
//! `roomcast_redis::channels`; a build without the `redis` feature has none.

use std::sync::Arc;
use std::time::Duration;

use roomcast_core::broker::Broker;
use roomcast_core::history::HistoryStore;
use roomcast_core::{ConnId, Connection, Hub};

use crate::config::Config;

/// The running bridge.
#[cfg(feature = "redis")]
pub(crate) type Layer = roomcast_redis::channels::Channels;

/// No bridge in this build.
#[cfg(not(feature = "redis"))]
#[derive(Debug, Clone)]
pub(crate) enum Layer {}

/// `[channels]` could not be started.
#[derive(Debug, thiserror::Error)]
pub enum ChannelsStartError {
    /// The URL does not parse.
    #[cfg(feature = "redis")]
    #[error(transparent)]
    Url(#[from] roomcast_redis::channels::ChannelsError),
    /// `channels.url` is set, but this build has no Redis client.
    #[cfg(not(feature = "redis"))]
    #[error("channels.url is set, but roomcast was built without its `redis` feature")]
    NoRedis,
}

/// The bridge `config.channels` asks for, if any (not running before [`attach`]).
pub(crate) fn layer(config: &Config) -> Result<Option<Layer>, ChannelsStartError> {
    let c = &config.channels;
    if !c.enabled() {
        return Ok(None);
    }
    #[cfg(feature = "redis")]
    {
        use crate::config::{LayerSetting, SerializerSetting};
        use roomcast_redis::channels::{ChannelsConfig, Format, LayerKind};
        let mut cc = ChannelsConfig::new(&c.url);
        cc.layer = match c.layer {
            LayerSetting::Core => LayerKind::Core,
            LayerSetting::Pubsub => LayerKind::Pubsub,
        };
        cc.prefix = c.prefix.clone();
        cc.format = match c.serializer {
            SerializerSetting::Msgpack => Format::Msgpack,
            SerializerSetting::Json => Format::Json,
        };
        cc.publish_to_groups = c.publish_to_groups;
        cc.expiry = Duration::from_secs(c.expiry);
        cc.group_expiry = Duration::from_secs(c.group_expiry);
        cc.capacity = c.capacity;
        cc.max_message_bytes = config.limits.max_message_bytes.max(64 * 1024);
        cc.group_types = config
            .endpoints
            .iter()
            .filter_map(|e| Some((e.room.clone(), e.group_type.clone()?)))
            .collect();
        Ok(Some(roomcast_redis::channels::Channels::new(cc)?))
    }
    #[cfg(not(feature = "redis"))]
    {
        let _ = Duration::ZERO;
        Err(ChannelsStartError::NoRedis)
    }
}

/// The node's backends with the bridge around them.
pub(crate) fn wrap(
    layer: Option<&Layer>,
    broker: Arc<dyn Broker>,
    history: Arc<dyn HistoryStore>,
) -> (Arc<dyn Broker>, Arc<dyn HistoryStore>) {
    match layer {
        #[cfg(feature = "redis")]
        Some(l) => (Arc::new(l.broker(broker)), Arc::new(l.history(history))),
        #[cfg(not(feature = "redis"))]
        Some(l) => match *l {},
        None => (broker, history),
    }
}

/// Starts the bridge for `hub` (built on [`wrap`]'s backends).
pub(crate) fn attach(layer: &Layer, hub: &Hub) {
    #[cfg(feature = "redis")]
    {
        layer.attach(hub);
        tracing::info!(url = %layer.config().url, layer = ?layer.config().layer, prefix = %layer.config().prefix, "bridging the Django Channels layer");
    }
    #[cfg(not(feature = "redis"))]
    {
        let _ = hub;
        match *layer {}
    }
}

/// Stops the bridge (after the drain).
pub(crate) fn stop(layer: &Layer) {
    #[cfg(feature = "redis")]
    layer.stop();
    #[cfg(not(feature = "redis"))]
    match *layer {}
}

/// The Channels channel name of a connection: `specific.roomcast-<node>!<conn>`.
pub(crate) fn conn_channel(conn: ConnId) -> String {
    format!("specific.roomcast-{}!{conn}", conn.node())
}

/// What an endpoint in channel mode tells its worker.
#[cfg_attr(not(feature = "redis"), allow(dead_code))]
pub(crate) enum Event<'a> {
    /// The connection opened (and joined its room).
    Connect,
    /// A text frame.
    Text(&'a str),
    /// A binary frame.
    Binary(&'a [u8]),
    /// The connection closed with this code.
    Disconnect(u16),
}

/// Where the events of one channel-mode connection go, and what they carry.
#[cfg_attr(not(feature = "redis"), allow(dead_code))]
pub(crate) struct Route<'a> {
    pub channel: &'a str,
    pub room: &'a str,
    pub path: &'a str,
}

/// Sends `event` to the worker's channel: `websocket.connect`,
/// `websocket.receive` (`text` or `bytes`) or `websocket.disconnect`
/// (`code`), each with `reply_channel`, `conn`, `room`, `user`, `path` and `session`.
pub(crate) fn send(layer: &Layer, route: &Route<'_>, conn: &Connection, event: Event<'_>) {
    #[cfg(feature = "redis")]
    {
        use roomcast_redis::channels::message::{from_json, Value};
        use roomcast_redis::channels::LayerMessage;
        let kind = match event {
            Event::Connect => "websocket.connect",
            Event::Text(_) | Event::Binary(_) => "websocket.receive",
            Event::Disconnect(_) => "websocket.disconnect",
        };
        let mut m = LayerMessage::new(kind);
        match event {
            Event::Text(t) => m.set("text", Value::from(t)),
            Event::Binary(b) => m.set("bytes", Value::Binary(b.to_vec())),
            Event::Disconnect(code) => m.set("code", Value::from(code)),
            Event::Connect => {}
        }
        m.set("reply_channel", Value::from(conn_channel(conn.id())));
        m.set("conn", Value::from(conn.id().to_string()));
        m.set("room", Value::from(route.room));
        m.set("user", conn.user().map_or(Value::Nil, |u| Value::from(&*u)));
        m.set("path", Value::from(route.path));
        m.set(
            "session",
            from_json(serde_json::Value::Object(conn.session())),
        );
        layer.send(route.channel, m);
    }
    #[cfg(not(feature = "redis"))]
    {
        let _ = (route, conn, event);
        match *layer {}
    }
}
