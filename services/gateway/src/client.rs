//! One browser connection: a reader task and a writer task over any `Sink`/`Stream` of WebSocket messages.
//!
//! The reader answers requests; the writer sends what the hub queued and the replies, and pings.
//! Whichever ends first stops the other. The loop is generic so that tests can drive it without a socket.
//!
//! Two queues feed the writer. Updates from the hub go into a bounded queue that the hub never waits on:
//! when it is full, updates for this browser are dropped and counted, and nobody else notices.
//! Replies to the browser's own requests (`subscribed` with the retained values, `error`) go into a second
//! small queue that the reader waits on, so a browser that does not read only stops its own requests;
//! the writer takes replies first, so the retained values of a subscription always precede later updates.

use std::collections::HashSet;
use std::fmt::Display;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message};
use futures::{FutureExt, Sink, SinkExt, Stream, StreamExt};
use tokio::sync::mpsc;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use crate::GatewayState;
use crate::filter::{validate_filter, validate_topic};
use crate::hub::{ClientCounters, ClientId};
use crate::policy::ClientInfo;
use crate::protocol::{Frame, Request, ServerMessage, error_frame, parse_request};
use crate::queue::UpdateQueue;

/// The server pings each browser this often; browsers answer on their own, even from a background tab.
pub const PING_INTERVAL: Duration = Duration::from_secs(20);
/// A browser from which nothing, not even a pong, arrived for three ping intervals is gone.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Replies waiting to be written; a browser sending requests faster than it reads the replies waits here.
const REPLY_QUEUE: usize = 8;
/// Most frames written before one flush (bounds the socket's write buffer to a few tens of kilobytes).
const WRITE_BATCH: usize = 256;
/// The shortest time between two writes to one browser while updates keep coming.
///
/// Updates arrive one MQTT message at a time, and each one woke every browser's writer for a frame and a system
/// call of its own unless a backlog had already built up. A writer that wrote less than this long ago waits out
/// the rest and then sends everything queued meanwhile with one flush, so a browser costs at most about a
/// thousand writes a second however busy the broker is, and an update waits at most this (plus the timer's
/// millisecond) for its turn. A lone update after a quiet spell is written at once.
pub const WRITE_GAP: Duration = Duration::from_millis(1);
/// How long the close frame may take to reach a browser that may have stopped reading.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);
/// Most topics in one `subscribe` or `unsubscribe`: as many as one browser may hold, since a larger request
/// could never be held; checked before anything else, so a huge request costs one length check.
pub const MAX_TOPICS_PER_REQUEST: usize = crate::MAX_FILTERS_PER_CLIENT;
/// How long a browser waits for the broker to grant a new filter before it is told the subscription failed
/// (while the broker is away, say). The browser's next requests wait behind it, so it stays well under
/// [`IDLE_TIMEOUT`].
pub const SUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(10);
/// Topic trees of the platform whose retained values only their owners may set: a retained `commands/...` would be
/// replayed to the device as a fresh command on every reconnect; `devices/...` (presence, Last Wills),
/// `sensors/...` (readings) and `alerts/...` (the rules engine) would pass a browser's value off as the current
/// state for everyone who subscribes later. Browsers publish to them without retain; elsewhere retain is theirs.
pub const NO_RETAIN_FROM_BROWSERS: [&str; 4] = ["commands/", "devices/", "sensors/", "alerts/"];

/// Serves one browser until it leaves, stops answering pings, or the gateway shuts down.
pub async fn serve<S, R, E>(state: GatewayState, info: ClientInfo, sink: S, stream: R)
where
    S: Sink<Message> + Unpin + Send + 'static,
    S::Error: Display,
    R: Stream<Item = Result<Message, E>> + Unpin + Send + 'static,
    E: Display + Send + 'static,
{
    let updates = Arc::new(UpdateQueue::new(state.client_queue()));
    let (replies_tx, replies) = mpsc::channel(REPLY_QUEUE);
    let (id, counters) = state.hub().register(info.clone(), updates.clone());
    tracing::debug!(client = id, peer = ?info.peer, "browser connected");
    let stop = state.closing().child_token();
    let reader = tokio::spawn(read_loop(state.clone(), id, info, stream, replies_tx, stop.clone()));
    let writer = tokio::spawn(write_loop(sink, updates, replies, counters, stop, state.closing().clone()));
    // Each task cancels `stop` when it ends, however it ends, which ends the other.
    let (read, write) = tokio::join!(reader, writer);
    for ended in [read, write] {
        if let Err(error) = ended {
            tracing::warn!(client = id, %error, "browser task failed");
        }
    }
    state.hub().unregister(id);
    tracing::debug!(client = id, "browser disconnected");
}

async fn read_loop<R, E>(
    state: GatewayState,
    id: ClientId,
    info: ClientInfo,
    mut stream: R,
    replies: mpsc::Sender<Vec<Frame>>,
    stop: CancellationToken,
) where
    R: Stream<Item = Result<Message, E>> + Unpin,
    E: Display + Send,
{
    let _stop_on_exit = stop.clone().drop_guard();
    loop {
        let next = tokio::select! {
            () = stop.cancelled() => return,
            next = tokio::time::timeout(IDLE_TIMEOUT, stream.next()) => next,
        };
        let message = match next {
            Ok(Some(Ok(message))) => message,
            Ok(Some(Err(error))) => {
                tracing::debug!(client = id, %error, "browser connection failed");
                return;
            }
            Ok(None) => return,
            Err(_) => {
                tracing::debug!(client = id, "browser answered no ping; closing");
                return;
            }
        };
        let handled = match message {
            Message::Text(text) => {
                tokio::select! {
                    () = stop.cancelled() => return,
                    handled = handle(&state, id, &info, text.as_str(), &replies) => handled,
                }
            }
            Message::Binary(_) => reply_error(&replies, "binary frames are not supported: send JSON text").await,
            // The WebSocket layer answers pings itself; any frame proves the browser is there.
            Message::Ping(_) | Message::Pong(_) => Ok(()),
            Message::Close(_) => return,
        };
        if handled.is_err() {
            // The writer is gone, so nobody can hear us any more.
            return;
        }
    }
}

/// The writer has ended.
struct WriterGone;

async fn reply_error(replies: &mpsc::Sender<Vec<Frame>>, message: &str) -> Result<(), WriterGone> {
    metrics::counter!("ferrite_gateway_bad_requests_total").increment(1);
    replies.send(vec![error_frame(message)]).await.map_err(|_| WriterGone)
}

async fn handle(
    state: &GatewayState,
    id: ClientId,
    info: &ClientInfo,
    text: &str,
    replies: &mpsc::Sender<Vec<Frame>>,
) -> Result<(), WriterGone> {
    let request = match parse_request(text) {
        Ok(request) => request,
        Err(message) => return reply_error(replies, &message).await,
    };
    match request {
        Request::Subscribe { topics } | Request::Unsubscribe { topics } if topics.len() > MAX_TOPICS_PER_REQUEST => {
            let message = format!(
                "too many topics in one request: {} (at most {MAX_TOPICS_PER_REQUEST}; send several requests)",
                topics.len()
            );
            reply_error(replies, &message).await
        }
        Request::Subscribe { topics } => subscribe(state, id, topics, replies).await,
        Request::Unsubscribe { topics } => {
            let (valid, invalid) = split_filters(topics);
            state.hub().unsubscribe(id, &valid);
            if invalid.is_empty() { Ok(()) } else { reply_error(replies, &invalid.join("; ")).await }
        }
        Request::Publish(publish) => {
            if let Err(error) = validate_topic(&publish.topic) {
                return reply_error(replies, &error.to_string()).await;
            }
            if publish.retain
                && let Some(tree) = NO_RETAIN_FROM_BROWSERS.iter().find(|tree| publish.topic.starts_with(**tree))
            {
                metrics::counter!("ferrite_gateway_retain_refused_total").increment(1);
                let message = format!(
                    "not allowed to publish to {:?} with retain: browsers may not set retained values under {tree} \
                     (publish it with \"retain\": false)",
                    publish.topic
                );
                return reply_error(replies, &message).await;
            }
            if let Err(reason) = state.policy().check(info, &publish.topic, publish.retain) {
                return reply_error(replies, &format!("not allowed to publish to {:?}: {reason}", publish.topic)).await;
            }
            let qos = match publish.qos {
                0 => ferrite_mqtt::QoS::AtMostOnce,
                1 => ferrite_mqtt::QoS::AtLeastOnce,
                _ => ferrite_mqtt::QoS::ExactlyOnce,
            };
            // Waits only when too many QoS 1/2 publishes are unacknowledged, which slows this browser alone.
            match state.session().publish(publish.topic, qos, publish.retain, publish.payload, None).await {
                Ok(()) => {
                    metrics::counter!("ferrite_gateway_publishes_total").increment(1);
                    Ok(())
                }
                Err(error) => reply_error(replies, &format!("publish failed: {error}")).await,
            }
        }
    }
}

/// A `subscribe`: `subscribed` goes out only once the broker has granted every filter new at the broker (those
/// other browsers hold are granted already), so a message published after it reaches this browser. A filter the
/// broker refuses, or does not answer for within [`SUBSCRIBE_TIMEOUT`], gets an `error` naming it.
async fn subscribe(
    state: &GatewayState,
    id: ClientId,
    topics: Vec<String>,
    replies: &mpsc::Sender<Vec<Frame>>,
) -> Result<(), WriterGone> {
    let (valid, invalid) = split_filters(topics);
    if !invalid.is_empty() {
        reply_error(replies, &invalid.join("; ")).await?;
    }
    if valid.is_empty() {
        return Ok(());
    }
    let subscribed = state.hub().subscribe(id, &valid);
    let waiting = match subscribed {
        Ok(waiting) => waiting,
        Err(error) => return reply_error(replies, &error.to_string()).await,
    };
    let mut refused: Vec<(String, String)> = Vec::new();
    if !waiting.is_empty() {
        let answers = futures::future::join_all(waiting.iter().map(|(_, grant)| grant.clone()));
        match tokio::time::timeout(SUBSCRIBE_TIMEOUT, answers).await {
            Ok(answers) => {
                for ((filter, _), answer) in waiting.into_iter().zip(answers) {
                    if let Err(reason) = answer {
                        refused.push((filter, reason));
                    }
                }
            }
            Err(_) => {
                // Those answered in time keep their answer; the rest are given up.
                for (filter, grant) in waiting {
                    match grant.peek() {
                        Some(Ok(())) => {}
                        Some(Err(reason)) => refused.push((filter, reason.clone())),
                        None => refused.push((
                            filter,
                            format!("the broker did not answer within {}s; try again", SUBSCRIBE_TIMEOUT.as_secs()),
                        )),
                    }
                }
            }
        }
    }
    let granted: Vec<String> = if refused.is_empty() {
        valid
    } else {
        let refused: HashSet<&str> = refused.iter().map(|(filter, _)| filter.as_str()).collect();
        valid.into_iter().filter(|filter| !refused.contains(filter.as_str())).collect()
    };
    // Reserve the reply's place, and queue it under the hub's lock: updates the hub queues after this
    // subscription then always follow its retained values.
    let permit = replies.reserve().await.map_err(|_| WriterGone)?;
    let mut frames = Vec::new();
    let mut hub = state.hub();
    if !refused.is_empty() {
        let filters: Vec<String> = refused.iter().map(|(filter, _)| filter.clone()).collect();
        hub.abandon(id, &filters);
        metrics::counter!("ferrite_gateway_subscriptions_refused_total").increment(refused.len() as u64);
        let reasons: Vec<String> =
            refused.iter().map(|(filter, reason)| format!("cannot subscribe to {filter:?}: {reason}")).collect();
        frames.push(error_frame(&reasons.join("; ")));
    }
    if !granted.is_empty() {
        let retained = hub.activate(id, &granted);
        frames.reserve(retained.len() + 1);
        frames.push(ServerMessage::Subscribed { topics: &granted }.frame());
        frames.extend(retained);
    }
    permit.send(frames);
    Ok(())
}

/// Splits requested filters into valid ones (each once, in order) and the reasons for the others; linear in
/// the number of filters (a set remembers those seen).
fn split_filters(topics: Vec<String>) -> (Vec<String>, Vec<String>) {
    let mut seen: HashSet<String> = HashSet::with_capacity(topics.len());
    let mut valid: Vec<String> = Vec::with_capacity(topics.len());
    let mut invalid = Vec::new();
    for topic in topics {
        match validate_filter(&topic) {
            Ok(()) if !seen.contains(&topic) => {
                seen.insert(topic.clone());
                valid.push(topic);
            }
            Ok(()) => {}
            Err(error) => invalid.push(error.to_string()),
        }
    }
    (valid, invalid)
}

async fn write_loop<S>(
    mut sink: S,
    updates: Arc<UpdateQueue>,
    mut replies: mpsc::Receiver<Vec<Frame>>,
    counters: Arc<ClientCounters>,
    stop: CancellationToken,
    closing: CancellationToken,
) where
    S: Sink<Message> + Unpin,
    S::Error: Display,
{
    let _stop_on_exit = stop.clone().drop_guard();
    let mut ping = tokio::time::interval_at(Instant::now() + PING_INTERVAL, PING_INTERVAL);
    ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut batch = Vec::with_capacity(WRITE_BATCH);
    let mut last_write: Option<Instant> = None;
    // Frames left in the queue by the last batch: the queue wakes us only when it turns from empty to not empty.
    let mut left = 0;
    loop {
        if left == 0 {
            // Wait for something to send; replies first, so the retained values of a subscription precede the
            // updates the hub queued after it.
            tokio::select! {
                biased;
                () = stop.cancelled() => break,
                reply = replies.recv() => match reply {
                    Some(frames) => batch.extend(frames.into_iter().map(Message::Text)),
                    None => break,
                },
                () = updates.ready() => {}
                _ = ping.tick() => batch.push(Message::Ping(Default::default())),
            }
        } else if stop.is_cancelled() {
            break;
        } else if ping.tick().now_or_never().is_some() {
            // A browser that is always behind still gets its pings.
            batch.push(Message::Ping(Default::default()));
        }
        // Under load, let more queue up rather than write each frame on its own (see `WRITE_GAP`).
        if let Some(last) = last_write
            && last.elapsed() < WRITE_GAP
        {
            tokio::select! {
                () = stop.cancelled() => break,
                () = tokio::time::sleep_until(last + WRITE_GAP) => {}
            }
        }
        while batch.len() < WRITE_BATCH {
            match replies.try_recv() {
                Ok(frames) => batch.extend(frames.into_iter().map(Message::Text)),
                Err(_) => break,
            }
        }
        left = updates.take(WRITE_BATCH.saturating_sub(batch.len()), |frame| batch.push(Message::Text(frame)));
        if batch.is_empty() {
            // A wake-up for frames an earlier batch already took.
            continue;
        }
        let texts = batch.iter().filter(|message| matches!(message, Message::Text(_))).count() as u64;
        let written = tokio::select! {
            () = stop.cancelled() => break,
            written = write_all(&mut sink, &mut batch) => written,
        };
        if let Err(error) = written {
            tracing::debug!(%error, "cannot write to browser");
            break;
        }
        last_write = Some(Instant::now());
        counters.sent.fetch_add(texts, std::sync::atomic::Ordering::Relaxed);
    }
    // Nobody takes updates any more: the hub stops queueing them.
    updates.close();
    // Say goodbye: "going away" when the gateway shuts down, a normal close otherwise.
    let frame = if closing.is_cancelled() {
        CloseFrame { code: 1001, reason: "gateway shutting down".into() }
    } else {
        CloseFrame { code: 1000, reason: "".into() }
    };
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
        let _ = sink.send(Message::Close(Some(frame))).await;
        let _ = sink.close().await;
    })
    .await;
}

async fn write_all<S>(sink: &mut S, batch: &mut Vec<Message>) -> Result<(), S::Error>
where
    S: Sink<Message> + Unpin,
{
    for message in batch.drain(..) {
        sink.feed(message).await?;
    }
    sink.flush().await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Config, Gateway};
    use ferrite_mqtt::BrokerUrl;
    use futures::channel::mpsc as channel;
    use serde_json::Value;

    /// A browser made of channels: what the test sends is what the gateway reads, and the other way round.
    struct Browser {
        to_gateway: channel::UnboundedSender<Result<Message, String>>,
        from_gateway: channel::UnboundedReceiver<Message>,
        task: tokio::task::JoinHandle<()>,
    }

    impl Browser {
        fn connect(state: &GatewayState) -> Browser {
            let (to_gateway, stream) = channel::unbounded();
            let (sink, from_gateway) = channel::unbounded::<Message>();
            let sink = sink.sink_map_err(|error| error.to_string());
            let info = ClientInfo { peer: None, token: None };
            let task = tokio::spawn(serve(state.clone(), info, sink, stream));
            Browser { to_gateway, from_gateway, task }
        }

        fn send(&self, text: &str) {
            self.to_gateway.unbounded_send(Ok(Message::Text(text.into()))).expect("the gateway reads");
        }

        /// The next text frame, as JSON (pings are skipped).
        async fn next_json(&mut self) -> Value {
            loop {
                match self.from_gateway.next().await.expect("the gateway writes") {
                    Message::Text(text) => return serde_json::from_str(text.as_str()).expect("frames are JSON"),
                    Message::Ping(_) => continue,
                    other => panic!("unexpected frame {other:?}"),
                }
            }
        }
    }

    /// A gateway that is bound but not run, whose session points at a port nothing listens on.
    async fn state() -> GatewayState {
        let mut config = Config::new(BrokerUrl::Tcp { host: "127.0.0.1".into(), port: 9 });
        config.http_addr = "127.0.0.1:0".parse().expect("valid address");
        Gateway::bind(config).await.expect("binds").state()
    }

    /// A gateway that is bound but not run, with a real broker that answers its subscriptions.
    /// The gateway is returned too: its session lives while the gateway's event receiver does.
    async fn live_state() -> ((ferrite_testkit_broker::TestBroker, Gateway), GatewayState) {
        let broker = ferrite_testkit_broker::TestBroker::start().await.expect("a test broker");
        let mut config = Config::new(broker.url());
        config.http_addr = "127.0.0.1:0".parse().expect("valid address");
        let gateway = Gateway::bind(config).await.expect("binds");
        let state = gateway.state();
        ((broker, gateway), state)
    }

    #[tokio::test]
    async fn bad_input_gets_an_error_and_the_connection_stays_usable() {
        let (_broker, state) = live_state().await;
        let mut browser = Browser::connect(&state);
        for (input, expected) in [
            ("not json", "invalid JSON"),
            (r#"{"type": "dance"}"#, "unknown message type"),
            (r#"{"type": "subscribe", "topics": ["a/#/b"]}"#, "'#' must be the last level"),
            (r#"{"type": "publish", "topic": "a/+", "payload": "x"}"#, "wildcards"),
        ] {
            browser.send(input);
            let reply = browser.next_json().await;
            assert_eq!(reply["type"], "error", "{input}");
            let message = reply["message"].as_str().expect("a message");
            assert!(message.contains(expected), "{input}: {message}");
        }
        browser.to_gateway.unbounded_send(Ok(Message::Binary(vec![1, 2].into()))).expect("the gateway reads");
        assert_eq!(browser.next_json().await["type"], "error");

        // One request may not carry more topics than a browser may hold; a huge one is refused by its length.
        let many: Vec<String> = (0..=MAX_TOPICS_PER_REQUEST).map(|n| format!("t/{n}")).collect();
        browser.send(&serde_json::json!({"type": "subscribe", "topics": many}).to_string());
        let reply = browser.next_json().await;
        assert!(reply["message"].as_str().is_some_and(|message| message.contains("too many topics")), "{reply}");
        let huge: Vec<String> = (0..100_000).map(|n| format!("t/{n}")).collect();
        browser.send(&serde_json::json!({"type": "unsubscribe", "topics": huge}).to_string());
        assert_eq!(browser.next_json().await["type"], "error");

        browser.send(r#"{"type": "subscribe", "topics": ["sensors/#", "bad/#/x", "sensors/#"]}"#);
        let error = browser.next_json().await;
        assert_eq!(error["type"], "error");
        assert_eq!(browser.next_json().await, serde_json::json!({"type": "subscribed", "topics": ["sensors/#"]}));
        assert_eq!(state.subscriptions(), vec![("sensors/#".to_owned(), 1)]);
    }

    #[tokio::test]
    async fn leaving_releases_the_subscriptions() {
        let (_broker, state) = live_state().await;
        let mut browser = Browser::connect(&state);
        browser.send(r#"{"type": "subscribe", "topics": ["a", "b"]}"#);
        let reply = browser.next_json().await;
        assert_eq!(reply["type"], "subscribed", "{reply}");
        browser.send(r#"{"type": "unsubscribe", "topics": ["a"]}"#);
        browser.send(r#"{"type": "subscribe", "topics": ["c"]}"#);
        assert_eq!(browser.next_json().await["topics"][0], "c");
        assert_eq!(state.subscriptions(), vec![("b".to_owned(), 1), ("c".to_owned(), 1)]);
        browser.to_gateway.unbounded_send(Ok(Message::Close(None))).expect("the gateway reads");
        browser.task.await.expect("the client loop ends");
        assert!(state.subscriptions().is_empty());
        assert!(state.clients().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn pings_and_closes_a_browser_that_never_answers() {
        let state = state().await;
        let mut browser = Browser::connect(&state);
        // Time is paused and advances by itself while everything waits: the pings come, nothing answers,
        // and the gateway closes the connection after the idle timeout.
        let mut pings = 0;
        loop {
            match browser.from_gateway.next().await {
                Some(Message::Ping(_)) => pings += 1,
                Some(Message::Close(Some(frame))) => {
                    assert_eq!(frame.code, 1000);
                    break;
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        // Pings at 20 s and 40 s for sure; the one due at 60 s races the timeout.
        assert!(pings >= 2, "{pings} pings");
        browser.task.await.expect("the client loop ends");
    }

    /// Without the broker's grant there is no `subscribed`: a broker that never answers gets the browser an `error`
    /// naming the filter after [`SUBSCRIBE_TIMEOUT`], and the filter is given up.
    #[tokio::test(start_paused = true)]
    async fn no_subscribed_without_the_brokers_grant() {
        // A session to a port nothing listens on, kept alive by its gateway.
        let mut config = Config::new(BrokerUrl::Tcp { host: "127.0.0.1".into(), port: 9 });
        config.http_addr = "127.0.0.1:0".parse().expect("valid address");
        let gateway = Gateway::bind(config).await.expect("binds");
        let state = gateway.state();
        let mut browser = Browser::connect(&state);
        browser.send(r#"{"type": "subscribe", "topics": ["sensors/#"]}"#);
        let reply = browser.next_json().await;
        assert_eq!(reply["type"], "error", "{reply}");
        let message = reply["message"].as_str().expect("a message");
        assert!(message.contains("\"sensors/#\"") && message.contains("did not answer"), "{message}");
        assert!(state.subscriptions().is_empty());
        assert_eq!(state.clients()[0].filters, Vec::<String>::new());
    }

    #[tokio::test(start_paused = true)]
    async fn a_pong_keeps_the_connection() {
        let state = state().await;
        let mut browser = Browser::connect(&state);
        for _ in 0..5 {
            match browser.from_gateway.next().await {
                Some(Message::Ping(payload)) => {
                    browser.to_gateway.unbounded_send(Ok(Message::Pong(payload))).expect("the gateway reads");
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(state.clients().len(), 1);
    }

    #[tokio::test]
    async fn shutdown_closes_with_going_away() {
        let (_broker, state) = live_state().await;
        let mut browser = Browser::connect(&state);
        browser.send(r#"{"type": "subscribe", "topics": ["a"]}"#);
        assert_eq!(browser.next_json().await["type"], "subscribed");
        state.closing().cancel();
        match browser.from_gateway.next().await {
            Some(Message::Close(Some(frame))) => assert_eq!(frame.code, 1001),
            other => panic!("unexpected {other:?}"),
        }
        browser.task.await.expect("the client loop ends");
    }

    /// What a browser may send: text near the protocol's requests, any JSON, any text, or binary.
    fn any_frame() -> impl proptest::strategy::Strategy<Value = Message> {
        use crate::protocol::tests::{json_value, near_request};
        use proptest::prelude::*;
        prop_oneof![
            4 => near_request().prop_map(|value| Message::Text(value.to_string().into())),
            2 => json_value().prop_map(|value| Message::Text(value.to_string().into())),
            1 => ".{0,40}".prop_map(|text| Message::Text(text.into())),
            1 => prop::collection::vec(any::<u8>(), 0..64).prop_map(|bytes| Message::Binary(bytes.into())),
        ]
    }

    /// Arbitrary frames on one connection to a gateway with a real broker: none panics or ends the connection,
    /// and each bad one gets an `error` before the reply to the next request (a sure error, used as a marker).
    #[test]
    fn arbitrary_frames_get_errors_and_the_connection_stays_usable() {
        use proptest::test_runner::{Config as RunnerConfig, TestCaseError, TestRunner};
        let runtime =
            tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("a runtime");
        let (_keep, state) = runtime.block_on(live_state());
        let browser = std::sync::Mutex::new(runtime.block_on(async { Browser::connect(&state) }));
        let marker = std::sync::atomic::AtomicU64::new(0);
        let mut runner = TestRunner::new(RunnerConfig::with_cases(3_000));
        let outcome = runner.run(&any_frame(), |frame| {
            let bad = match &frame {
                Message::Text(text) => parse_request(text.as_str()).is_err(),
                _ => true,
            };
            let n = marker.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let mut browser = browser.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            runtime.block_on(async {
                browser.to_gateway.unbounded_send(Ok(frame.clone())).expect("the gateway reads");
                browser.send(&format!(r#"{{"type": "marker-{n}"}}"#));
                let mut errors = 0;
                loop {
                    let reply = tokio::time::timeout(Duration::from_secs(30), browser.next_json())
                        .await
                        .map_err(|_| TestCaseError::fail(format!("no reply after {frame:?}")))?;
                    if reply["type"] == "error" {
                        if reply["message"].as_str().is_some_and(|message| message.contains(&format!("marker-{n}\""))) {
                            break;
                        }
                        errors += 1;
                    }
                }
                if bad && errors == 0 {
                    return Err(TestCaseError::fail(format!("no error for {frame:?}")));
                }
                Ok(())
            })
        });
        if let Err(error) = outcome {
            panic!("{error}");
        }
        assert!(!browser.lock().unwrap_or_else(std::sync::PoisonError::into_inner).task.is_finished());
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(10_000))]

        /// `split_filters` keeps the valid filters once each, in order, and a reason per invalid one: what the
        /// obvious quadratic version did.
        #[test]
        fn split_filters_dedups_in_order(topics in proptest::collection::vec("[ab/+#]{0,4}", 0..40)) {
            let (valid, invalid) = split_filters(topics.clone());
            let mut expected: Vec<String> = Vec::new();
            let mut reasons = 0;
            for topic in topics {
                if validate_filter(&topic).is_err() {
                    reasons += 1;
                } else if !expected.contains(&topic) {
                    expected.push(topic);
                }
            }
            proptest::prop_assert_eq!(valid, expected);
            proptest::prop_assert_eq!(invalid.len(), reasons);
        }
    }
}
