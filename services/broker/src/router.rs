//! rmqtt's default router with one method replaced: [`Router::is_online`].
//!
//! rmqtt 0.24 answers `is_online` with `LockEntry::is_connected`, which awaits the session while it still holds a shard guard
//! of the client table (a `DashMap`). Shared-subscription routing asks it for every message sent to a `$share` group, so a
//! client disconnecting at the same moment (`LockEntry::remove_with` wants that shard exclusively) blocks its worker thread,
//! and once every worker is blocked so, the guard holder is never polled again: the whole broker stops, new clients get no
//! CONNACK and SIGTERM is ignored (measured under `ferrite bench pipeline`: gdb showed every worker in
//! `lock_exclusive_slow` <- `DashMap::remove_if` <- `LockEntry::remove_with`). Here the session is cloned out of the table
//! first, and only then awaited. Everything else is rmqtt's own router.

use async_trait::async_trait;
use rmqtt::Result;
use rmqtt::context::ServerContext;
use rmqtt::router::{DefaultRouter, Router};
use rmqtt::types::{
    AllRelationsMap, ClientId, HashMap, Id, NodeId, Route, SubRelationsMap, SubsSearchParams, SubsSearchResult,
    SubscriptionOptions, TopicName,
};
use rmqtt::utils::Counter;

/// Replaces the router rmqtt installed while building `scx`; call before any client connects.
pub(crate) async fn install(scx: &ServerContext) {
    let router = GuardFreeRouter { inner: DefaultRouter::new(Some(scx.clone())), scx: scx.clone() };
    *scx.extends.router_mut().await = Box::new(router);
}

struct GuardFreeRouter {
    inner: DefaultRouter,
    scx: ServerContext,
}

#[async_trait]
impl Router for GuardFreeRouter {
    async fn add(&self, topic_filter: &str, id: Id, opts: SubscriptionOptions) -> Result<()> {
        self.inner.add(topic_filter, id, opts).await
    }

    async fn remove(&self, topic_filter: &str, id: Id) -> Result<bool> {
        self.inner.remove(topic_filter, id).await
    }

    async fn matches(&self, id: Id, topic: &TopicName) -> Result<SubRelationsMap> {
        self.inner.matches(id, topic).await
    }

    async fn is_online(&self, node_id: NodeId, client_id: &str) -> bool {
        // `session()` clones the session and drops the table's guard before we await anything.
        let session = self.scx.extends.shared().await.entry(Id::from(node_id, ClientId::from(client_id))).session();
        match session {
            Some(session) => session.connected().await.unwrap_or_default(),
            None => false,
        }
    }

    async fn gets(&self, limit: usize) -> Vec<Route> {
        self.inner.gets(limit).await
    }

    async fn get(&self, topic: &str) -> Result<Vec<Route>> {
        self.inner.get(topic).await
    }

    async fn query_subscriptions(&self, q: &SubsSearchParams) -> Vec<SubsSearchResult> {
        self.inner.query_subscriptions(q).await
    }

    async fn topics_tree(&self) -> usize {
        self.inner.topics_tree().await
    }

    fn topics(&self) -> Counter {
        self.inner.topics()
    }

    fn routes(&self) -> Counter {
        self.inner.routes()
    }

    fn merge_topics(&self, topics_map: &HashMap<NodeId, Counter>) -> Counter {
        self.inner.merge_topics(topics_map)
    }

    fn merge_routes(&self, routes_map: &HashMap<NodeId, Counter>) -> Counter {
        self.inner.merge_routes(routes_map)
    }

    async fn list_topics(&self, top: usize) -> Vec<String> {
        self.inner.list_topics(top).await
    }

    async fn list_relations(&self, top: usize) -> Vec<serde_json::Value> {
        self.inner.list_relations(top).await
    }

    fn relations(&self) -> &AllRelationsMap {
        self.inner.relations()
    }
}
