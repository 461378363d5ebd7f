//! `[channels]`: the bridge to Django Channels' Redis layer (see `docs/channels.md`).

use serde::{Deserialize, Serialize};

/// `[channels]`: where channels_redis keeps its layer, and how it is set up
/// on the Django side. Off while `url` is empty.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ChannelsSettings {
    /// The layer's Redis server (`hosts` in Django's `CHANNEL_LAYERS`; one
    /// host), `redis://host:port/db`. Default: empty (no bridge).
    pub url: String,
    /// `core` for `channels_redis.core.RedisChannelLayer`, `pubsub` for
    /// `channels_redis.pubsub.RedisPubSubChannelLayer`. Default: `core`.
    pub layer: LayerSetting,
    /// The layer's `prefix`. Default: `asgi`.
    pub prefix: String,
    /// The layer's `serializer_format`: `msgpack` or `json`. Default: `msgpack`.
    pub serializer: SerializerSetting,
    /// Room publications made through roomcast also go to the Channels
    /// group of the same name (consumers still running on daphne). Default: false.
    pub publish_to_groups: bool,
    /// The layer's `expiry`, in seconds. Default: 60.
    pub expiry: u64,
    /// The layer's `group_expiry`, in seconds. Default: 86400.
    pub group_expiry: u64,
    /// The layer's `capacity` for the channels roomcast sends to. Default: 100.
    pub capacity: usize,
}

impl Default for ChannelsSettings {
    fn default() -> Self {
        ChannelsSettings {
            url: String::new(),
            layer: LayerSetting::Core,
            prefix: "asgi".to_owned(),
            serializer: SerializerSetting::Msgpack,
            publish_to_groups: false,
            expiry: 60,
            group_expiry: 86_400,
            capacity: 100,
        }
    }
}

/// `channels.layer`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LayerSetting {
    /// `RedisChannelLayer`.
    #[default]
    Core,
    /// `RedisPubSubChannelLayer`.
    Pubsub,
}

/// `channels.serializer`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SerializerSetting {
    /// msgpack, the layer's default.
    #[default]
    Msgpack,
    /// JSON.
    Json,
}

impl ChannelsSettings {
    /// Whether the bridge is on.
    pub fn enabled(&self) -> bool {
        !self.url.is_empty()
    }

    pub(super) fn validate(&self) -> Result<(), String> {
        if !self.enabled() {
            return Ok(());
        }
        if !self.url.starts_with("redis://") && !self.url.starts_with("rediss://") {
            return Err(format!(
                "channels.url must be redis://host:port/db, got {:?}",
                self.url
            ));
        }
        if self.prefix.is_empty() {
            return Err("channels.prefix must not be empty".to_owned());
        }
        for (key, v) in [
            ("channels.expiry", self.expiry),
            ("channels.group_expiry", self.group_expiry),
            ("channels.capacity", self.capacity as u64),
        ] {
            if v == 0 {
                return Err(format!("{key} must be greater than 0"));
            }
        }
        Ok(())
    }
}
