//! A plain HTTP/1.1 client for REST tests: one request over a real socket, the response read to the end,
//! and the assertions every API test makes about JSON bodies and `{"error": ...}` answers.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};

/// An HTTP response, read to the end.
#[derive(Debug)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: hyper::HeaderMap,
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// The body as JSON; panics with the status and body when it is not.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|err| {
            panic!("status {} body is not JSON ({err}): {}", self.status, String::from_utf8_lossy(&self.body))
        })
    }

    /// Asserts the status and returns the JSON body.
    #[track_caller]
    pub fn expect(&self, status: u16) -> serde_json::Value {
        assert_eq!(self.status, status, "body: {}", String::from_utf8_lossy(&self.body));
        self.json()
    }

    /// Asserts status 200 and returns the JSON body.
    #[track_caller]
    pub fn ok(&self) -> serde_json::Value {
        self.expect(200)
    }

    /// Asserts the status and that the body is JSON `{"error": "<non-empty>"}` and nothing else; returns the message.
    #[track_caller]
    pub fn expect_error(&self, status: u16) -> String {
        assert_eq!(self.status, status, "body: {}", String::from_utf8_lossy(&self.body));
        let content_type = self.headers.get("content-type").and_then(|value| value.to_str().ok());
        assert_eq!(content_type, Some("application/json"), "status {status}");
        let body = self.json();
        let message = body["error"].as_str().unwrap_or_else(|| panic!("no error message in {body}"));
        assert!(!message.is_empty());
        assert_eq!(body.as_object().map(|object| object.len()), Some(1), "only `error` in {body}");
        message.to_owned()
    }
}

/// Sends one request: `token` as `Authorization: Bearer`, `body` as `(content type, body)`.
pub async fn http_request(
    method: &str,
    url: &str,
    token: Option<&str>,
    body: Option<(&str, &str)>,
) -> anyhow::Result<HttpResponse> {
    let client =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http::<Full<Bytes>>();
    let mut request = hyper::Request::builder().method(method).uri(url);
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    let request = match body {
        Some((content_type, body)) => {
            request.header("content-type", content_type).body(Full::new(Bytes::from(body.to_owned())))?
        }
        None => request.body(Full::new(Bytes::new()))?,
    };
    let response = client.request(request).await?;
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response.into_body().collect().await?.to_bytes().to_vec();
    Ok(HttpResponse { status, headers, body })
}
