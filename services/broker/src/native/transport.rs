//! The byte streams MQTT runs over: plain TCP, TLS, and WebSocket (binary frames on `/mqtt`).

use std::io;

use bytes::BytesMut;
use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message as WsMessage;

/// A read gets at least this much room; the buffer exists only while a read is pending or bytes wait in it.
const READ_CHUNK: usize = 4 * 1024;

pub(crate) enum Transport {
    Tcp(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
    Ws(Box<WebSocketStream<TcpStream>>),
}

impl Transport {
    /// Appends what arrives to `buf`; 0 when the peer closed. Cancel-safe: nothing is lost if the future is dropped.
    pub(crate) async fn read(&mut self, buf: &mut BytesMut) -> io::Result<usize> {
        match self {
            Transport::Tcp(stream) => loop {
                stream.readable().await?;
                if buf.capacity() - buf.len() < READ_CHUNK / 4 {
                    buf.reserve(READ_CHUNK);
                }
                match stream.try_read_buf(buf) {
                    Ok(n) => return Ok(n),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                    Err(e) => return Err(e),
                }
            },
            Transport::Tls(stream) => {
                if buf.capacity() - buf.len() < READ_CHUNK / 4 {
                    buf.reserve(READ_CHUNK);
                }
                stream.read_buf(buf).await
            }
            Transport::Ws(ws) => loop {
                match ws.next().await {
                    None | Some(Ok(WsMessage::Close(_))) => return Ok(0),
                    Some(Ok(WsMessage::Binary(data))) => {
                        if data.is_empty() {
                            continue;
                        }
                        buf.extend_from_slice(&data);
                        return Ok(data.len());
                    }
                    Some(Ok(WsMessage::Text(_))) => {
                        return Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            "MQTT over WebSocket uses binary frames",
                        ));
                    }
                    Some(Ok(_)) => continue,
                    Some(Err(e)) => return Err(io::Error::other(e)),
                }
            },
        }
    }

    /// Writes all of `buf` and empties it.
    pub(crate) async fn write(&mut self, buf: &mut BytesMut) -> io::Result<()> {
        match self {
            Transport::Tcp(stream) => {
                stream.write_all(buf).await?;
                buf.clear();
                Ok(())
            }
            Transport::Tls(stream) => {
                stream.write_all(buf).await?;
                stream.flush().await?;
                buf.clear();
                Ok(())
            }
            Transport::Ws(ws) => ws.send(WsMessage::Binary(buf.split().freeze())).await.map_err(io::Error::other),
        }
    }

    /// Closes the connection (best effort).
    pub(crate) async fn close(&mut self) {
        let deadline = std::time::Duration::from_secs(1);
        match self {
            Transport::Tcp(stream) => {
                let _ = tokio::time::timeout(deadline, stream.shutdown()).await;
            }
            Transport::Tls(stream) => {
                let _ = tokio::time::timeout(deadline, stream.shutdown()).await;
            }
            Transport::Ws(ws) => {
                let _ = tokio::time::timeout(deadline, SinkExt::close(ws)).await;
            }
        }
    }
}
