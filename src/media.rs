//! Media: uploaded images and voice notes. Bytes go to an object store (`object_store`: a local directory by
//! default, S3-compatible by URL) as they arrive, never whole in memory; the type is sniffed from the bytes
//! (`infer`), never taken from the client; every type has a size limit, checked while streaming. URLs given in a
//! message are fetched under the same limits, http(s) only, refusing private addresses (SSRF). Voice notes are
//! transcribed through an OpenAI-compatible `/audio/transcriptions` endpoint, or by the mock.

use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use futures::{Stream, StreamExt, TryStreamExt};
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, WriteMultipart};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::config::{Config, MediaConfig, ProviderKind};
use crate::error::{Error, ErrorKind};
use crate::providers::MediaData;
use crate::store::{self, Id, Media, Store};

/// Bytes read before the type is decided: enough for every signature `infer` checks for our types.
const SNIFF_BYTES: usize = 512;

/// A media file as messages and uploads show it: `{id, url, content_type, kind, size_bytes}`.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct MediaRef {
    pub id: Id,
    /// Where its uploader downloads it: `/api/v1/media/{id}`.
    pub url: String,
    /// Sniffed from the bytes, e.g. `image/png`, `audio/mpeg`.
    pub content_type: String,
    /// `image` or `audio`.
    pub kind: Option<&'static str>,
    /// Bytes.
    pub size_bytes: i64,
}

/// What a media file is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Image,
    Audio,
}

impl Kind {
    pub fn of(content_type: &str) -> Option<Kind> {
        if content_type.starts_with("image/") {
            Some(Kind::Image)
        } else if content_type.starts_with("audio/") {
            Some(Kind::Audio)
        } else {
            None
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Image => "image",
            Kind::Audio => "audio",
        }
    }
}

/// The type of a file from its first bytes, named as the allow-list names it: `infer`'s answer, with its
/// variants folded (`audio/x-wav` → `audio/wav`, `audio/m4a` → `audio/mp4`, a WebM container →
/// `audio/webm`, Opus in Ogg → `audio/ogg`). `None` when nothing matches.
pub fn sniff(head: &[u8]) -> Option<&'static str> {
    let found = infer::get(head)?.mime_type();
    Some(match found {
        "audio/x-wav" | "audio/wave" | "audio/vnd.wave" => "audio/wav",
        "audio/m4a" | "audio/x-m4a" | "video/mp4" => "audio/mp4",
        "video/webm" | "audio/webm" => "audio/webm",
        "audio/opus" | "audio/ogg" | "application/ogg" => "audio/ogg",
        "audio/mp3" => "audio/mpeg",
        other => other,
    })
}

/// The name a media file is served under: `{id}.{extension of its sniffed type}`.
pub fn file_name(media: &Media) -> String {
    format!("{}.{}", media.id, extension(&media.content_type))
}

/// File extension for a type, for storage keys and transcription uploads.
fn extension(content_type: &str) -> &'static str {
    match content_type {
        "image/jpeg" => "jpg",
        "image/png" => "png",
        "image/webp" => "webp",
        "image/gif" => "gif",
        "audio/mpeg" => "mp3",
        "audio/wav" => "wav",
        "audio/ogg" => "ogg",
        "audio/mp4" => "m4a",
        "audio/webm" => "webm",
        _ => "bin",
    }
}

/// Who turns voice notes into text.
enum Transcriber {
    /// Deterministic, offline.
    Mock,
    /// `POST {base_url}/audio/transcriptions` (OpenAI API reference, "Create transcription"): multipart
    /// `file`, `model`, `response_format=json` → `{text}`. Groq and most OpenAI-compatible servers take the same.
    OpenAi {
        provider: String,
        base_url: String,
        api_key: Option<String>,
        model: String,
        /// Built once: a voice note may take a while to transcribe, hence its own 120 s timeout.
        client: reqwest::Client,
    },
}

/// The media service: storage, sniffing and limits, URL fetching, transcription.
pub struct MediaStore {
    store: Arc<dyn ObjectStore>,
    prefix: ObjectPath,
    config: MediaConfig,
    transcriber: Transcriber,
    http: reqwest::Client,
}

impl std::fmt::Debug for MediaStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MediaStore")
            .field("store", &self.store.to_string())
            .finish_non_exhaustive()
    }
}

impl MediaStore {
    /// Opens the configured storage (creating a local directory) and picks the transcriber.
    ///
    /// # Errors
    /// A message naming the `[media]` key at fault.
    pub fn from_config(config: &Config) -> Result<Self, String> {
        let media = &config.media;
        let (store, prefix): (Arc<dyn ObjectStore>, ObjectPath) = if media.storage.contains("://") {
            let url =
                reqwest::Url::parse(&media.storage).map_err(|e| format!("media.storage: {e}"))?;
            // Credentials and endpoints from the usual AWS_* variables, then the configured options.
            let mut options: Vec<(String, String)> = std::env::vars()
                .filter(|(k, _)| k.starts_with("AWS_"))
                .map(|(k, v)| (k.to_ascii_lowercase(), v))
                .collect();
            options.extend(media.storage_options.clone());
            let (store, prefix) = object_store::parse_url_opts(&url, options)
                .map_err(|e| format!("media.storage: {e}"))?;
            (Arc::from(store), prefix)
        } else {
            std::fs::create_dir_all(&media.storage)
                .map_err(|e| format!("media.storage: cannot create '{}': {e}", media.storage))?;
            let local = object_store::local::LocalFileSystem::new_with_prefix(&media.storage)
                .map_err(|e| format!("media.storage: {e}"))?;
            (Arc::new(local), ObjectPath::default())
        };
        let transcriber = transcriber(config)?;
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_millis(media.fetch_timeout_ms))
            .build()
            .map_err(|e| format!("media: HTTP client: {e}"))?;
        Ok(Self {
            store,
            prefix,
            config: media.clone(),
            transcriber,
            http,
        })
    }

    /// The size limit of a kind, in bytes.
    pub fn limit(&self, kind: Kind) -> u64 {
        match kind {
            Kind::Image => self.config.max_image_bytes,
            Kind::Audio => self.config.max_audio_bytes,
        }
    }

    /// The largest file of any kind, in bytes.
    pub fn max_bytes(&self) -> u64 {
        self.config.max_image_bytes.max(self.config.max_audio_bytes)
    }

    /// Most media one message may carry.
    pub fn max_per_message(&self) -> usize {
        self.config.max_per_message
    }

    fn key(&self, id: Id, content_type: &str) -> ObjectPath {
        self.prefix
            .clone()
            .join(format!("{id}.{}", extension(content_type)))
    }

    /// Streams `chunks` into storage as `user_id`'s new file and records it. The first bytes decide the type;
    /// past the type's limit the upload stops. On any failure the partial file is removed and nothing is
    /// recorded.
    ///
    /// # Errors
    /// 415 `unsupported_media_type` for a type not sniffed or not allowed; 413 `payload_too_large` past the
    /// limit; 400 for an empty file or a broken body; 500 when storage fails.
    pub async fn put_stream<S, E>(
        &self,
        store: &dyn Store,
        user_id: &str,
        chunks: S,
    ) -> Result<Media, Error>
    where
        S: Stream<Item = Result<Bytes, E>> + Send,
        E: std::fmt::Display,
    {
        let mut chunks = std::pin::pin!(chunks);
        // Sniff first: nothing is written for a refused type.
        let mut head = Vec::with_capacity(SNIFF_BYTES);
        let mut pending: Vec<Bytes> = Vec::new();
        let mut ended = false;
        while head.len() < SNIFF_BYTES {
            match chunks.next().await {
                Some(Ok(chunk)) => {
                    head.extend_from_slice(&chunk[..chunk.len().min(SNIFF_BYTES - head.len())]);
                    pending.push(chunk);
                }
                Some(Err(e)) => return Err(broken_body(e)),
                None => {
                    ended = true;
                    break;
                }
            }
        }
        if head.is_empty() {
            return Err(Error::validation("file", "the file is empty"));
        }
        let content_type = self.allowed_type(&head)?;
        let kind = Kind::of(content_type).ok_or_else(|| refused_type(content_type, self))?;
        let limit = self.limit(kind);

        let id = Id::new();
        let location = self.key(id, content_type);
        let upload = self
            .store
            .put_multipart(&location)
            .await
            .map_err(|e| storage_error("starting an upload", e))?;
        let mut writer = WriteMultipart::new(upload);
        let mut hasher = Sha256::new();
        let mut size: u64 = 0;
        let mut next = futures::stream::iter(pending.into_iter().map(Ok::<Bytes, E>));
        let outcome: Result<(), Error> = async {
            loop {
                let chunk = match next.next().await {
                    Some(chunk) => chunk,
                    None if ended => break,
                    None => match chunks.next().await {
                        Some(chunk) => chunk,
                        None => break,
                    },
                };
                let chunk = chunk.map_err(broken_body)?;
                size += chunk.len() as u64;
                if size > limit {
                    return Err(too_large(kind, limit));
                }
                hasher.update(&chunk);
                // At most two parts (5 MiB each, S3's minimum) in flight: memory stays bounded whatever the
                // file's size (examples/media_bench: 17 to 19 MiB of growth for 64 to 256 MiB uploads).
                writer
                    .wait_for_capacity(2)
                    .await
                    .map_err(|e| storage_error("writing", e))?;
                writer.put(chunk);
            }
            Ok(())
        }
        .await;
        if let Err(err) = outcome {
            if let Err(abort) = writer.abort().await {
                tracing::warn!(%abort, "aborting a refused upload failed");
            }
            return Err(err);
        }
        writer
            .finish()
            .await
            .map_err(|e| storage_error("finishing an upload", e))?;
        let media = Media {
            id,
            user_id: user_id.to_string(),
            content_type: content_type.to_string(),
            size_bytes: i64::try_from(size).unwrap_or(i64::MAX),
            sha256: hex(&hasher.finalize()),
            storage_key: location.to_string(),
            created_at: store::now(),
        };
        if let Err(err) = store.insert_media(&media).await {
            let _ = self.store.delete(&location).await;
            return Err(err.into());
        }
        metrics::counter!("chatgate_media_uploaded_bytes_total", "kind" => kind.as_str())
            .increment(size);
        Ok(media)
    }

    fn allowed_type(&self, head: &[u8]) -> Result<&'static str, Error> {
        match sniff(head) {
            Some(found) if self.config.allowed_types.iter().any(|t| t == found) => Ok(found),
            Some(found) => Err(refused_type(found, self)),
            None => Err(refused_type("unknown", self)),
        }
    }

    /// A stored file's bytes, as a stream.
    ///
    /// # Errors
    /// 404 when the file is gone from storage; 500 when storage fails.
    pub async fn read_stream(
        &self,
        media: &Media,
    ) -> Result<impl Stream<Item = Result<Bytes, object_store::Error>> + use<>, Error> {
        let location = ObjectPath::from(media.storage_key.as_str());
        match self.store.get(&location).await {
            Ok(result) => Ok(result.into_stream()),
            Err(object_store::Error::NotFound { .. }) => Err(Error::not_found("media")),
            Err(e) => Err(storage_error("reading", e)),
        }
    }

    /// A stored file's bytes, whole (for sending upstream).
    ///
    /// # Errors
    /// As [`MediaStore::read_stream`].
    pub async fn read(&self, media: &Media) -> Result<Bytes, Error> {
        let chunks: Vec<Bytes> = self
            .read_stream(media)
            .await?
            .try_collect()
            .await
            .map_err(|e| storage_error("reading", e))?;
        Ok(chunks.concat().into())
    }

    /// A file ready for a provider: its type and base64 bytes.
    ///
    /// # Errors
    /// As [`MediaStore::read`].
    pub async fn media_data(&self, media: &Media) -> Result<MediaData, Error> {
        let bytes = self.read(media).await?;
        Ok(MediaData {
            mime_type: media.content_type.clone(),
            base64: base64::engine::general_purpose::STANDARD
                .encode(&bytes)
                .into(),
        })
    }

    /// Fetches `url` as `user_id`'s new file: http(s) only; its host must resolve to public addresses only
    /// (unless `media.allow_private_urls`), and the connection goes to exactly those addresses; no redirects;
    /// `media.fetch_timeout_ms`; the type and size rules of uploads.
    ///
    /// # Errors
    /// 422 `url_not_allowed` / `url_fetch_failed`, and the errors of [`MediaStore::put_stream`].
    pub async fn fetch(&self, store: &dyn Store, user_id: &str, raw: &str) -> Result<Media, Error> {
        let url = reqwest::Url::parse(raw)
            .map_err(|e| url_error("url_not_allowed", raw, format!("not a URL: {e}")))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(url_error(
                "url_not_allowed",
                raw,
                "only http and https URLs are fetched".into(),
            ));
        }
        let host = url
            .host_str()
            .ok_or_else(|| url_error("url_not_allowed", raw, "the URL has no host".into()))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let port = url.port_or_known_default().unwrap_or(80);
        let addrs: Vec<std::net::SocketAddr> = tokio::time::timeout(
            Duration::from_millis(self.config.fetch_timeout_ms),
            tokio::net::lookup_host((host.as_str(), port)),
        )
        .await
        .map_err(|_| {
            url_error(
                "url_fetch_failed",
                raw,
                "resolving the host timed out".into(),
            )
        })?
        .map_err(|e| {
            url_error(
                "url_fetch_failed",
                raw,
                format!("cannot resolve the host: {e}"),
            )
        })?
        .collect();
        if addrs.is_empty() {
            return Err(url_error(
                "url_fetch_failed",
                raw,
                "the host has no address".into(),
            ));
        }
        if !self.config.allow_private_urls
            && let Some(private) = addrs.iter().find(|a| !crate::ssrf::is_public(a.ip()))
        {
            return Err(url_error(
                "url_not_allowed",
                raw,
                format!(
                    "the host resolves to a private or local address ({}); set media.allow_private_urls to allow it",
                    private.ip()
                ),
            ));
        }
        // Pin the connection to the addresses just checked: a second lookup could answer differently.
        let client = if host.parse::<IpAddr>().is_ok() {
            self.http.clone()
        } else {
            reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .timeout(Duration::from_millis(self.config.fetch_timeout_ms))
                .resolve_to_addrs(&host, &addrs)
                .build()
                .map_err(Error::internal)?
        };
        let response = client
            .get(url)
            .send()
            .await
            .map_err(|e| url_error("url_fetch_failed", raw, e.without_url().to_string()))?;
        if !response.status().is_success() {
            return Err(url_error(
                "url_fetch_failed",
                raw,
                format!("the server answered {}", response.status()),
            ));
        }
        if let Some(length) = response.content_length()
            && length > self.max_bytes()
        {
            return Err(Error::payload_too_large(format!(
                "{raw} is {length} bytes; the largest media allowed is {} bytes",
                self.max_bytes()
            )));
        }
        self.put_stream(store, user_id, response.bytes_stream())
            .await
    }

    /// Removes one of `user_id`'s media: its record, then its file (a file left behind is swept later).
    ///
    /// # Errors
    /// When the database fails.
    pub async fn discard(
        &self,
        store: &dyn Store,
        user_id: &str,
        media: &Media,
    ) -> Result<(), Error> {
        store.delete_media(user_id, media.id).await?;
        let location = ObjectPath::from(media.storage_key.as_str());
        if let Err(err) = self.store.delete(&location).await {
            tracing::debug!(media_id = %media.id, %err, "deleting a discarded media file failed; the sweep will");
        }
        Ok(())
    }

    /// A voice note's transcript.
    ///
    /// # Errors
    /// 502 `transcription_failed` when the transcription endpoint fails; 504 when it times out.
    pub async fn transcribe(&self, media: &Media) -> Result<String, Error> {
        let started = std::time::Instant::now();
        let text = match &self.transcriber {
            Transcriber::Mock => format!(
                "(voice note: {} bytes of {}, sha256 {})",
                media.size_bytes,
                media.content_type,
                &media.sha256[..12.min(media.sha256.len())]
            ),
            Transcriber::OpenAi {
                provider,
                base_url,
                api_key,
                model,
                client,
            } => {
                let bytes = self.read(media).await?;
                let part = reqwest::multipart::Part::stream_with_length(
                    reqwest::Body::from(bytes),
                    u64::try_from(media.size_bytes).unwrap_or(0),
                )
                .file_name(format!("voice.{}", extension(&media.content_type)))
                .mime_str(&media.content_type)
                .map_err(Error::internal)?;
                let form = reqwest::multipart::Form::new()
                    .part("file", part)
                    .text("model", model.clone())
                    .text("response_format", "json");
                let mut request = client
                    .post(format!("{base_url}/audio/transcriptions"))
                    .multipart(form);
                if let Some(key) = api_key {
                    request = request.bearer_auth(key);
                }
                let failed = |message: String| {
                    Error::new(
                        ErrorKind::Upstream,
                        "transcription_failed",
                        format!(
                            "provider '{provider}' could not transcribe the voice note: {message}"
                        ),
                    )
                };
                let response = request.send().await.map_err(|e| {
                    if e.is_timeout() {
                        Error::new(
                            ErrorKind::Timeout,
                            "upstream_timeout",
                            "transcription timed out",
                        )
                    } else {
                        failed(e.without_url().to_string())
                    }
                })?;
                let status = response.status();
                let body: Value = response.json().await.unwrap_or(Value::Null);
                if !status.is_success() {
                    let said = body["error"]["message"].as_str().unwrap_or("");
                    return Err(failed(format!("{status} {said}")));
                }
                body["text"]
                    .as_str()
                    .map(str::trim)
                    .map(str::to_string)
                    .ok_or_else(|| failed("the answer has no text".into()))?
            }
        };
        metrics::histogram!("chatgate_transcription_seconds")
            .record(started.elapsed().as_secs_f64());
        Ok(text)
    }

    /// Deletes stored files that no media record names (their conversation was deleted, or an upload died
    /// between storing and recording), once older than `older_than`; returns how many.
    ///
    /// # Errors
    /// When the database or the storage listing fails.
    pub async fn sweep(&self, store: &dyn Store, older_than: Duration) -> Result<usize, String> {
        let known: HashSet<String> = store
            .media_storage_keys()
            .await
            .map_err(|e| e.to_string())?
            .into_iter()
            .collect();
        let cutoff = chrono::Utc::now()
            - chrono::Duration::from_std(older_than).unwrap_or(chrono::Duration::zero());
        let prefix = (!self.prefix.as_ref().is_empty()).then_some(&self.prefix);
        let mut listing = self.store.list(prefix);
        let mut deleted = 0;
        while let Some(object) = listing.next().await {
            let object = object.map_err(|e| e.to_string())?;
            if known.contains(object.location.as_ref()) || object.last_modified > cutoff {
                continue;
            }
            match self.store.delete(&object.location).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => deleted += 1,
                Err(e) => {
                    tracing::warn!(location = %object.location, error = %e, "deleting a media file failed")
                }
            }
        }
        Ok(deleted)
    }

    /// How a message shows one of its media.
    pub fn reference(media: &Media) -> MediaRef {
        MediaRef {
            id: media.id,
            url: format!("/api/v1/media/{}", media.id),
            content_type: media.content_type.clone(),
            kind: Kind::of(&media.content_type).map(Kind::as_str),
            size_bytes: media.size_bytes,
        }
    }

    /// [`MediaStore::reference`] as JSON, for a message's `media` column.
    pub fn describe(media: &Media) -> Value {
        serde_json::to_value(Self::reference(media)).unwrap_or_default()
    }
}

/// The bytes of a base64 `data:` URL (RFC 2397), capped at `limit` bytes before decoding; `field` names the
/// request field in errors.
///
/// # Errors
/// 400 when it is not a base64 data URL or not valid base64; 413 past `limit`.
pub fn decode_data_url(url: &str, limit: u64, field: &str) -> Result<Vec<u8>, Error> {
    let (_, encoded) = url
        .strip_prefix("data:")
        .and_then(|d| d.split_once(";base64,"))
        .ok_or_else(|| {
            Error::validation(
                field,
                "a data URL must be base64: data:<type>;base64,<data>",
            )
        })?;
    let encoded = encoded.trim();
    // Four characters carry three bytes: refuse before decoding what cannot fit.
    if (encoded.len() as u64 / 4) * 3 > limit + 3 {
        return Err(Error::payload_too_large(format!(
            "a data URL of about {} bytes; the limit is {limit}",
            encoded.len() / 4 * 3
        )));
    }
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .map_err(|e| Error::validation(field, format!("the data URL is not valid base64: {e}")))?;
    if bytes.len() as u64 > limit {
        return Err(Error::payload_too_large(format!(
            "a file of {} bytes; the limit is {limit}",
            bytes.len()
        )));
    }
    Ok(bytes)
}

/// The transcriber of `[media]`: the named provider, else the first `openai` one; the mock when that provider
/// has no key or is the mock.
fn transcriber(config: &Config) -> Result<Transcriber, String> {
    let media = &config.media;
    let chosen = if media.transcription_provider.is_empty() {
        config
            .providers
            .iter()
            .find(|(name, p)| p.kind_for(name) == Some(ProviderKind::Openai))
    } else {
        config
            .providers
            .get_key_value(&media.transcription_provider)
    };
    let Some((name, provider)) = chosen else {
        return Ok(Transcriber::Mock);
    };
    match provider.kind_for(name) {
        Some(ProviderKind::Mock) => Ok(Transcriber::Mock),
        Some(ProviderKind::Openai) if provider.needs_key(name, ProviderKind::Openai) => {
            Ok(Transcriber::Mock)
        }
        Some(ProviderKind::Openai) => Ok(Transcriber::OpenAi {
            provider: name.clone(),
            base_url: provider.base_url_for(name, ProviderKind::Openai),
            api_key: provider
                .api_key()
                .map(|k| secrecy::ExposeSecret::expose_secret(k).to_string()),
            model: media.transcription_model.clone(),
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(120))
                .build()
                .map_err(|e| format!("media: transcription HTTP client: {e}"))?,
        }),
        _ => Err(format!(
            "media.transcription_provider: '{name}' is not an OpenAI-compatible provider (kind openai or mock)"
        )),
    }
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::with_capacity(64), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

fn refused_type(found: &str, media: &MediaStore) -> Error {
    Error::new(
        ErrorKind::UnsupportedType,
        "unsupported_media_type",
        format!(
            "the file's bytes are {}; allowed: {}",
            if found == "unknown" {
                "of no type this server knows"
            } else {
                found
            },
            media.config.allowed_types.join(", ")
        ),
    )
    .with_details(json!({ "detected": found, "allowed": media.config.allowed_types }))
}

fn too_large(kind: Kind, limit: u64) -> Error {
    Error::payload_too_large(format!(
        "the {} is larger than {limit} bytes, the limit for its type",
        kind.as_str()
    ))
    .with_details(json!({ "kind": kind.as_str(), "limit_bytes": limit }))
}

fn broken_body(e: impl std::fmt::Display) -> Error {
    Error::new(
        ErrorKind::Invalid,
        "invalid_body",
        format!("the file could not be read: {e}"),
    )
}

fn storage_error(what: &str, e: impl std::fmt::Display) -> Error {
    tracing::error!(error = %e, "media storage failed while {what}");
    Error::new(
        ErrorKind::Internal,
        "storage_error",
        format!("media storage failed while {what}"),
    )
}

fn url_error(code: &'static str, url: &str, why: String) -> Error {
    Error::new(
        ErrorKind::Unprocessable,
        code,
        format!("media URL {url}: {why}"),
    )
    .with_details(json!({ "field": "media_urls", "url": url }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn types_are_sniffed_from_bytes() {
        assert_eq!(sniff(b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR"), Some("image/png"));
        assert_eq!(sniff(b"\xff\xd8\xff\xe0\0\x10JFIF\0"), Some("image/jpeg"));
        assert_eq!(sniff(b"GIF89a\x01\0\x01\0"), Some("image/gif"));
        assert_eq!(sniff(b"RIFF\x24\0\0\0WAVEfmt "), Some("audio/wav"));
        assert_eq!(sniff(b"ID3\x03\0\0\0\0\0\0"), Some("audio/mpeg"));
        assert_eq!(sniff(b"%PDF-1.7\n"), Some("application/pdf"));
        assert_eq!(sniff(b"just some text"), None);
    }
}
