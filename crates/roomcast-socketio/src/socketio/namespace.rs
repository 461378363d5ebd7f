//! Namespaces: the handlers registered for them, and finding the namespace a
//! CONNECT names (registered, or accepted by a dynamic-namespace filter).

use std::sync::Arc;

use serde_json::Value;

use roomcast_core::{BoxFuture, Protocol};

use super::encode::NamespaceProtocol;
use super::server::Inner;
use super::{AckSender, ConnectRefusal, Payload, Socket};

pub(super) type ConnectFn =
    dyn Fn(Socket, Value) -> BoxFuture<'static, Result<(), ConnectRefusal>> + Send + Sync;
pub(super) type EventFn =
    dyn Fn(Socket, Payload, Option<AckSender>) -> BoxFuture<'static, ()> + Send + Sync;
pub(super) type FallbackFn =
    dyn Fn(Socket, String, Payload, Option<AckSender>) -> BoxFuture<'static, ()> + Send + Sync;
pub(super) type AcceptFn = dyn Fn(&str) -> bool + Send + Sync;
pub(super) type DisconnectFn = dyn Fn(Socket, String) -> BoxFuture<'static, ()> + Send + Sync;

pub(super) struct Namespace {
    pub(super) name: String,
    pub(super) on_connect: Arc<ConnectFn>,
    pub(super) protocol: Arc<dyn Protocol>,
}

impl Inner {
    pub(super) fn namespace(&self, name: &str, on_connect: Arc<ConnectFn>) -> Arc<Namespace> {
        Arc::new(Namespace {
            name: name.to_owned(),
            on_connect,
            protocol: Arc::new(NamespaceProtocol {
                nsp: name.to_owned(),
                presence_event: self
                    .presence_event
                    .read()
                    .unwrap_or_else(|e| e.into_inner())
                    .clone(),
                offsets: self.config.recovery.is_some(),
            }),
        })
    }

    pub(super) fn find_namespace(&self, name: &str) -> Option<Arc<Namespace>> {
        if let Some(ns) = self
            .namespaces
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
        {
            return Some(ns.clone());
        }
        let handler = self
            .dynamic
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .find(|(accept, _)| accept(name))
            .map(|(_, h)| h.clone())?;
        // A dynamic namespace becomes a registered one on first use, so its
        // sockets share one protocol instance (one encoding per delivery).
        let ns = self.namespace(name, handler);
        let mut map = self.namespaces.write().unwrap_or_else(|e| e.into_inner());
        Some(map.entry(name.to_owned()).or_insert(ns).clone())
    }
}
