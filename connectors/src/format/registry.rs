//! A client of the Confluent Schema Registry's REST API, for the Avro format: writer schemas
//! are looked up by id (`GET /schemas/ids/{id}`) and a sink registers its schema under a
//! subject (`POST /subjects/{subject}/versions`). A registry that cannot be reached is
//! retried with backoff before the error reaches the pipeline.

use std::time::Duration;

use serde::Deserialize;

use crate::error::{Error, Result};

/// How often a failed request is tried again, and the first and last waits between tries.
const RETRIES: u32 = 6;
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// The media type the registry speaks.
const CONTENT_TYPE: &str = "application/vnd.schemaregistry.v1+json";

/// A schema registry at one base URL.
#[derive(Debug, Clone)]
pub struct SchemaRegistry {
    base: String,
    client: reqwest::Client,
}

/// `GET /schemas/ids/{id}` answers with the schema as a JSON string.
#[derive(Deserialize)]
struct SchemaById {
    schema: String,
    /// Absent for Avro; `PROTOBUF` or `JSON` for the other kinds.
    #[serde(rename = "schemaType")]
    schema_type: Option<String>,
}

/// `POST /subjects/{subject}/versions` answers with the schema's id.
#[derive(Deserialize)]
struct Registered {
    id: u32,
}

/// An answer the registry gives when it refuses a request.
#[derive(Deserialize)]
struct Refusal {
    error_code: Option<u32>,
    message: Option<String>,
}

/// The registry's error code for a schema id it does not have.
const SCHEMA_NOT_FOUND: u32 = 40403;

/// What a lookup by id found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// The Avro schema, as JSON.
    Found(String),
    /// The registry does not know the id, or it is not an Avro schema: the reason.
    Refused(String),
}

impl SchemaRegistry {
    /// A client of the registry at `url` (`http://host:port`, optionally with a path).
    ///
    /// # Errors
    /// An [`Error::Option`] when `url` is not an http(s) URL.
    pub fn try_new(connector: &str, url: &str) -> Result<Self> {
        let parsed = url::Url::parse(url).map_err(|e| {
            Error::option(
                connector,
                format!("option 'schema_registry' is not a URL ('{url}'): {e}"),
            )
        })?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(Error::option(
                connector,
                format!("option 'schema_registry' must be an http(s) URL, got '{url}'"),
            ));
        }
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| Error::Internal(format!("cannot build an HTTP client: {e}")))?;
        Ok(Self {
            base: url.trim_end_matches('/').to_string(),
            client,
        })
    }

    /// The registry's base URL.
    pub fn url(&self) -> &str {
        &self.base
    }

    /// The writer schema registered under `id`.
    ///
    /// # Errors
    /// An [`Error::Service`] when the registry cannot be reached after the retries, or
    /// answers with a server error.
    pub async fn schema_by_id(&self, id: u32) -> Result<Lookup> {
        let url = format!("{}/schemas/ids/{id}", self.base);
        let (status, body) = self
            .send(|| self.client.get(&url).header("Accept", CONTENT_TYPE))
            .await?;
        if status == reqwest::StatusCode::NOT_FOUND
            && serde_json::from_slice::<Refusal>(&body)
                .is_ok_and(|r| r.error_code == Some(SCHEMA_NOT_FOUND))
        {
            return Ok(Lookup::Refused(format!(
                "the schema registry has no schema with id {id}"
            )));
        }
        if !status.is_success() {
            return Err(refused(&url, status, &body));
        }
        let found: SchemaById = serde_json::from_slice(&body).map_err(|e| {
            Error::service(
                "schema registry",
                format!("{url}: the answer is not a schema: {e}"),
            )
        })?;
        match found.schema_type.as_deref() {
            None | Some("AVRO") => Ok(Lookup::Found(found.schema)),
            Some(other) => Ok(Lookup::Refused(format!(
                "schema id {id} is a {other} schema, not Avro"
            ))),
        }
    }

    /// Registers `schema` (Avro JSON) under `subject` and returns its id; registering a
    /// schema the subject already has returns the existing id.
    ///
    /// # Errors
    /// An [`Error::Service`] when the registry cannot be reached after the retries, or
    /// refuses the schema (incompatible with the subject's earlier versions, or invalid).
    pub async fn register(&self, subject: &str, schema: &str) -> Result<u32> {
        let mut url = url::Url::parse(&self.base).map_err(|e| {
            Error::Internal(format!("a checked registry URL no longer parses: {e}"))
        })?;
        url.path_segments_mut()
            .map_err(|()| Error::Internal("the registry URL cannot have a path".into()))?
            .pop_if_empty()
            .extend(["subjects", subject, "versions"]);
        let url = url.to_string();
        let body = serde_json::json!({ "schema": schema }).to_string();
        let (status, answer) = self
            .send(|| {
                self.client
                    .post(&url)
                    .header("Content-Type", CONTENT_TYPE)
                    .header("Accept", CONTENT_TYPE)
                    .body(body.clone())
            })
            .await?;
        if !status.is_success() {
            return Err(refused(&url, status, &answer));
        }
        let registered: Registered = serde_json::from_slice(&answer).map_err(|e| {
            Error::service(
                "schema registry",
                format!("{url}: the answer carries no schema id: {e}"),
            )
        })?;
        Ok(registered.id)
    }

    /// Sends a request, retrying with backoff while the registry cannot be reached or
    /// answers with a server error.
    async fn send(
        &self,
        request: impl Fn() -> reqwest::RequestBuilder,
    ) -> Result<(reqwest::StatusCode, bytes::Bytes)> {
        let mut backoff = FIRST_BACKOFF;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let outcome = match request().send().await {
                Ok(response) => {
                    let status = response.status();
                    match response.bytes().await {
                        Ok(body) if !status.is_server_error() => return Ok((status, body)),
                        Ok(body) => format!("HTTP {status}: {}", String::from_utf8_lossy(&body)),
                        Err(e) => e.to_string(),
                    }
                }
                Err(e) => e.to_string(),
            };
            if attempt >= RETRIES {
                return Err(Error::service(
                    "schema registry",
                    format!("{} after {attempt} tries: {outcome}", self.base),
                ));
            }
            tracing::warn!(registry = %self.base, attempt, error = %outcome, "schema registry request failed; retrying");
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }
}

/// The error for a request the registry answered but refused.
fn refused(url: &str, status: reqwest::StatusCode, body: &[u8]) -> Error {
    let message = serde_json::from_slice::<Refusal>(body)
        .ok()
        .and_then(|r| r.message)
        .unwrap_or_else(|| String::from_utf8_lossy(body).into_owned());
    Error::service(
        "schema registry",
        format!("{url}: HTTP {status}: {message}"),
    )
}
