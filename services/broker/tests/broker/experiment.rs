//! temporary experiment
use crate::support::*;
use rumqttc::{AsyncClient, Event, Incoming, MqttOptions, Outgoing};

async fn connect_once(addr: std::net::SocketAddr, id: &str, clean: bool) -> Result<(AsyncClient, rumqttc::EventLoop), String> {
    let mut opts = MqttOptions::new(id, addr.ip().to_string(), addr.port());
    opts.set_clean_session(clean);
    let (client, mut el) = AsyncClient::new(opts, 10);
    loop {
        match el.poll().await {
            Ok(Event::Incoming(Incoming::ConnAck(ack))) => {
                if ack.code == rumqttc::ConnectReturnCode::Success { return Ok((client, el)); }
                return Err(format!("{:?}", ack.code));
            }
            Ok(_) => {}
            Err(e) => return Err(format!("{e}")),
        }
    }
}

#[tokio::test]
async fn experiment_reconnect_race() {
    let broker = TestBroker::start().await;
    let mut failures = 0;
    for clean in [true, false] {
    for _ in 0..100 {
        let (client, mut el) = connect_once(broker.mqtt, "same-id", clean).await.expect("first connect");
        client.disconnect().await.unwrap();
        loop { match el.poll().await { Ok(Event::Outgoing(Outgoing::Disconnect)) => break, Ok(_) => {}, Err(e) => { eprintln!("{e}"); break } } }
        match connect_once(broker.mqtt, "same-id", clean).await {
            Ok((c, mut el)) => { c.disconnect().await.unwrap(); loop { match el.poll().await { Ok(Event::Outgoing(Outgoing::Disconnect)) => break, Ok(_) => {}, Err(_) => break } } }
            Err(e) => { failures += 1; eprintln!("refused: {e}"); }
        }
    }
    }
    eprintln!("failures: {failures}/200");
    broker.stop().await;
}
