//! Starting and stopping inside one process: ports are free after `run` returns, and a data
//! directory still held by a stopped broker is reported as such.

use ferrite_broker::{Broker, BrokerError};

use crate::support::{TestBroker, mosquitto_pub, mosquitto_sub, test_config};

#[tokio::test]
async fn a_stopped_broker_frees_its_ports_for_the_next_one() {
    let first = TestBroker::start().await;
    let (mqtt, ws) = (first.mqtt, first.ws);
    mosquitto_pub(mqtt, &["-q", "1", "-t", "any/topic", "-m", "x"]).await;
    first.stop().await;

    let data_dir = tempfile::tempdir().expect("a temporary directory can be created");
    let mut config = test_config(data_dir.path());
    config.mqtt_addr = mqtt;
    config.ws_addr = Some(ws);
    let second = Broker::bind(config).await.expect("the same ports can be bound again");
    assert_eq!((second.mqtt_addr(), second.ws_addr()), (mqtt, Some(ws)));
    let shutdown = tokio_util::sync::CancellationToken::new();
    let serving = tokio::spawn(second.run(shutdown.clone()));
    mosquitto_pub(mqtt, &["-q", "1", "-r", "-t", "second/broker", "-m", "serving"]).await;
    assert_eq!(mosquitto_sub(mqtt, &["-C", "1", "-W", "20", "-t", "second/broker"]).await, ["serving"]);
    shutdown.cancel();
    serving.await.expect("the broker task did not panic").expect("the broker stops cleanly");
}

/// The store's lock goes with the broker: the same directory serves again at once in the same process.
#[tokio::test]
async fn the_data_directory_of_a_stopped_broker_is_released() {
    let first = TestBroker::start().await;
    let data_dir = first.stop().await;
    let again = Broker::bind(test_config(data_dir.path())).await;
    assert!(again.is_ok(), "the stopped broker's data directory is free again: {:?}", again.err());
}

/// While a broker runs, a second one on the same data directory is refused with a clear error.
#[tokio::test]
async fn a_running_brokers_data_directory_is_reported_in_use() {
    let running = TestBroker::start().await;
    let again = Broker::bind(test_config(running.data_dir())).await;
    match again {
        Err(BrokerError::DataDirInUse { path }) => assert_eq!(path, running.data_dir()),
        Err(other) => panic!("expected the data directory to be reported in use, got {other}"),
        Ok(_) => panic!("two brokers share one data directory"),
    }
    running.stop().await;
}

/// A port conflict is found before the storage is opened, so the data directory stays usable.
#[tokio::test]
async fn a_taken_port_is_reported_and_leaves_the_data_directory_free() {
    let running = TestBroker::start().await;
    let data_dir = tempfile::tempdir().expect("a temporary directory can be created");
    let mut config = test_config(data_dir.path());
    config.mqtt_addr = running.mqtt;
    match Broker::bind(config).await {
        Err(BrokerError::Bind { addr, .. }) => assert_eq!(addr, running.mqtt),
        Err(other) => panic!("expected a bind error, got {other}"),
        Ok(_) => panic!("two brokers listen on {}", running.mqtt),
    }
    let usable = Broker::bind(test_config(data_dir.path())).await;
    assert!(usable.is_ok(), "the data directory is still free: {:?}", usable.err());
    running.stop().await;
}
