//! MQTT over TLS: a certificate made with the openssl command line, mosquitto clients on both
//! sides of the broker, and what a client that does not speak TLS, or a bad key file, gets.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use ferrite_broker::{AllowAll, Broker, BrokerError, TlsConfig};

use crate::support::{HANG_GUARD, TestBroker, mosquitto_pub, test_config};

/// A self-signed certificate for 127.0.0.1 and localhost, and its key, in `dir`.
fn certificate(dir: &Path) -> (PathBuf, PathBuf) {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let made = std::process::Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2"])
        .args(["-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .unwrap_or_else(|e| panic!("openssl not installed ({e}): apt-get install openssl"));
    assert!(made.status.success(), "openssl could not make a certificate: {}", String::from_utf8_lossy(&made.stderr));
    (cert, key)
}

fn tls_config(dir: &Path) -> TlsConfig {
    let (cert_chain, key) = certificate(dir);
    TlsConfig { addr: "127.0.0.1:0".parse().expect("a literal address"), cert_chain, key }
}

#[tokio::test]
async fn tls_clients_get_what_tcp_clients_publish() {
    let certs = tempfile::tempdir().expect("a temporary directory");
    let tls = tls_config(certs.path());
    let cafile = tls.cert_chain.clone();
    let broker = TestBroker::start_with(Arc::new(AllowAll), |config| {
        config.tls = Some(tls);
    })
    .await;
    let tls_addr = broker.tls.expect("the broker listens for TLS");
    let subscriber = tokio::process::Command::new("mosquitto_sub")
        .args(["-h", "127.0.0.1", "-p", &tls_addr.port().to_string(), "--cafile"])
        .arg(&cafile)
        .args(["-t", "tls/#", "-C", "1", "-q", "1", "-W", "30", "-v"])
        .kill_on_drop(true)
        .output();
    let subscriber = tokio::spawn(subscriber);
    // Retained, so the order of subscribe and publish does not matter.
    mosquitto_pub(broker.mqtt, &["-t", "tls/reading", "-m", "21.5", "-q", "1", "-r"]).await;
    let output = tokio::time::timeout(HANG_GUARD, subscriber)
        .await
        .expect("mosquitto_sub ends")
        .expect("the task did not panic")
        .expect("mosquitto_sub runs (apt-get install mosquitto-clients)");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "mosquitto_sub over TLS failed: {output:?}");
    assert_eq!(stdout.trim(), "tls/reading 21.5");

    // A client speaking plain MQTT to the TLS port is refused, and the port keeps serving.
    let plain = tokio::process::Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &tls_addr.port().to_string(), "-t", "tls/plain", "-m", "x"])
        .output()
        .await
        .expect("mosquitto_pub runs");
    assert!(!plain.status.success(), "a plain MQTT client was accepted on the TLS port");
    let again = tokio::process::Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &tls_addr.port().to_string(), "--cafile"])
        .arg(&cafile)
        .args(["-t", "tls/after", "-m", "y", "-q", "1"])
        .output()
        .await
        .expect("mosquitto_pub runs");
    assert!(again.status.success(), "the TLS port serves after a plain client: {again:?}");
    broker.stop().await;
}

#[tokio::test]
async fn a_bad_key_file_is_a_clear_error() {
    let certs = tempfile::tempdir().expect("a temporary directory");
    let tls = tls_config(certs.path());
    std::fs::write(&tls.key, "not a key").expect("the key file can be overwritten");
    let data = tempfile::tempdir().expect("a temporary directory");
    let mut config = test_config(data.path());
    config.tls = Some(tls);
    match Broker::bind(config).await {
        Err(BrokerError::Tls(reason)) => assert!(reason.contains("private key"), "{reason}"),
        Err(other) => panic!("expected a TLS error, got {other}"),
        Ok(_) => panic!("a broker started with a key file that holds no key"),
    }
}
