//! The HTTP client the OTLP exporter sends through: our own `reqwest` client (the one the
//! providers use, so no second HTTP stack), behind `opentelemetry_http::HttpClient`.
//!
//! What it owns: carrying one request to the collector and keeping the last failure as it
//! happened. The exporter reduces every failure to a sentence (`OTelSdkError`); the
//! [`Failure`] kept here lets [`super::Exporter`] report the collector's status and answer, or
//! the transport error, as typed errors. Not here: retries (the exporter's policy) and
//! encoding (the exporter's).
//!
//! Each request runs on the tokio runtime the exporter was made in, whichever thread asks for
//! it: the SDK's metric reader exports from a thread of its own, outside any runtime.

use std::sync::{Arc, Mutex};

use opentelemetry_http::{Bytes, HttpClient, HttpError, Request, Response};

/// What went wrong with the last request that failed.
#[derive(Debug)]
pub enum Failure {
    /// The collector answered, with a status that is not a success.
    Refused { status: u16, body: String },
    /// No answer: the collector could not be reached, or the request timed out.
    Unreachable(reqwest::Error),
}

#[derive(Debug, Clone)]
pub struct Transport {
    client: reqwest::Client,
    runtime: tokio::runtime::Handle,
    failure: Arc<Mutex<Option<Failure>>>,
}

impl Transport {
    pub fn new(client: reqwest::Client, runtime: tokio::runtime::Handle) -> Transport {
        Transport {
            client,
            runtime,
            failure: Arc::default(),
        }
    }

    /// The last failure, taken (so a second export starts clean).
    pub fn take_failure(&self) -> Option<Failure> {
        crate::retry::lock(&self.failure).take()
    }

    fn keep(&self, failure: Failure) {
        *crate::retry::lock(&self.failure) = Some(failure);
    }
}

#[async_trait::async_trait]
impl HttpClient for Transport {
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        let request = reqwest::Request::try_from(request)?;
        let client = self.client.clone();
        let answer = self
            .runtime
            .spawn(async move {
                let response = client.execute(request).await?;
                let status = response.status();
                let headers = response.headers().clone();
                let body = response.bytes().await?;
                Ok::<_, reqwest::Error>((status, headers, body))
            })
            .await?;
        match answer {
            Err(error) => {
                let message = error.to_string();
                self.keep(Failure::Unreachable(error));
                Err(message.into())
            }
            Ok((status, headers, body)) => {
                if !status.is_success() {
                    self.keep(Failure::Refused {
                        status: status.as_u16(),
                        body: crate::text::cut(&String::from_utf8_lossy(&body), 300),
                    });
                }
                let mut response = Response::new(body);
                *response.status_mut() = status;
                *response.headers_mut() = headers;
                Ok(response)
            }
        }
    }
}
