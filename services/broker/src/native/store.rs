//! TEMPORARY in-memory store (replaced by branch `store`): same interface, nothing on disk.
#![allow(dead_code, clippy::type_complexity)]
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::task::{Context, Poll};

use super::Durability;

#[derive(Debug, thiserror::Error)]
pub(crate) enum StoreError {
    #[error("in use")]
    InUse,
}
#[derive(Clone)]
pub(crate) struct Store;
#[derive(Clone, Debug)]
pub(crate) struct StoredMessage {
    pub publish: bytes::Bytes,
    pub expires_at_unix_ms: Option<u64>,
}
#[derive(Clone, Debug)]
pub(crate) struct StoredSubscription {
    pub filter: String,
    pub qos: u8,
    pub no_local: bool,
    pub retain_as_published: bool,
    pub retain_handling: u8,
    pub subscription_id: Option<u32>,
}
#[derive(Clone, Debug)]
pub(crate) struct SessionRecord {
    pub expiry_secs: u32,
    pub disconnected_at_unix_ms: Option<u64>,
    pub subscriptions: Vec<StoredSubscription>,
}
#[derive(Default)]
pub(crate) struct Recovered {
    pub retained: Vec<(String, StoredMessage)>,
    pub sessions: Vec<(String, SessionRecord, Vec<(u64, StoredMessage)>)>,
}
pub(crate) struct Commit;
impl Future for Commit {
    type Output = Result<(), StoreError>;
    fn poll(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Self::Output> {
        Poll::Ready(Ok(()))
    }
}
impl Store {
    pub(crate) fn open(_dir: &Path, _durability: Durability) -> Result<(Store, Recovered), StoreError> {
        Ok((Store, Recovered::default()))
    }
    pub(crate) fn set_retained(&self, _topic: &str, _message: Option<StoredMessage>) -> Commit {
        Commit
    }
    pub(crate) fn put_session(&self, _client_id: &str, _record: SessionRecord) -> Commit {
        Commit
    }
    pub(crate) fn delete_session(&self, _client_id: &str) -> Commit {
        Commit
    }
    pub(crate) fn push(&self, _client_id: &str, _seq: u64, _message: StoredMessage) -> Commit {
        Commit
    }
    pub(crate) fn remove(&self, _client_id: &str, _seq: u64) -> Commit {
        Commit
    }
    pub(crate) async fn close(self) -> Result<(), StoreError> {
        Ok(())
    }
}
