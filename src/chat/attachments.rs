//! A message's media: the caller's uploads looked up, inline files stored, URLs fetched, images read for the
//! provider, voice notes transcribed. Runs only after a send is admitted; whatever it stored is removed again
//! when the send fails afterwards ([`StoredMedia`]), so a refused send leaves nothing behind.

use serde_json::json;

use super::{Chat, SendRequest};
use crate::catalog::ModelRoute;
use crate::domain::MessageType;
use crate::error::{Error, ErrorKind};
use crate::media::{Kind, MediaStore};
use crate::providers::{ChatMessage, MediaData};
use crate::store::Media;

/// A message's media, resolved: the text to store, the message to send (its text, images and native audio),
/// and the message's `media` JSON.
pub struct Attached {
    pub content: String,
    pub prompt: ChatMessage,
    pub media: serde_json::Value,
}

/// The media one send stored (inline uploads, fetched URLs): removed by [`StoredMedia::discard`] unless the
/// send went through ([`StoredMedia::keep`]).
pub struct StoredMedia<'a> {
    chat: &'a Chat,
    user_id: &'a str,
    media: Vec<Media>,
}

impl<'a> StoredMedia<'a> {
    pub fn new(chat: &'a Chat, user_id: &'a str) -> Self {
        Self {
            chat,
            user_id,
            media: Vec::new(),
        }
    }

    fn push(&mut self, media: &Media) {
        self.media.push(media.clone());
    }

    /// The send went through: its media stay.
    pub fn keep(mut self) {
        self.media.clear();
    }

    /// The send failed: its records and files go. Failures are logged; the media sweep removes any file left.
    pub async fn discard(mut self) {
        for media in std::mem::take(&mut self.media) {
            if let Err(err) = self
                .chat
                .media
                .discard(&*self.chat.store, self.user_id, &media)
                .await
            {
                tracing::warn!(media_id = %media.id, %err, "removing the media of a failed send failed");
            }
        }
    }
}

/// Looks up `media_ids` (the caller's own: anyone else's is 404), stores inline uploads, fetches
/// `media_urls`/`audio_url`, checks each is of the kind the message type takes, reads images for the provider
/// and transcribes a voice note (its transcript becomes the message's text, after any text sent with it). A
/// voice note also goes to the model as audio when the model hears (`audio` modality) and its provider takes
/// the format; the model then gets the audio and the text sent with it, not the transcript.
///
/// # Errors
/// `not_found` for another user's media, `wrong_media_kind`, and the errors of storing, fetching and
/// transcribing.
pub async fn attach(
    chat: &Chat,
    user_id: &str,
    route: &ModelRoute,
    body: &SendRequest,
    content: String,
    stored: &mut StoredMedia<'_>,
) -> Result<Attached, Error> {
    if body.message_type == MessageType::Text {
        return Ok(Attached {
            prompt: ChatMessage::user(content.clone()),
            content,
            media: json!([]),
        });
    }
    let wanted = if body.message_type == MessageType::Audio {
        Kind::Audio
    } else {
        Kind::Image
    };
    let mut found: Vec<(Media, Option<&str>)> = Vec::new();
    for id in &body.media_ids {
        let media = chat.store.get_media(user_id, *id).await?.ok_or_else(|| {
            Error::not_found("media").with_details(json!({ "field": "media_ids", "id": id }))
        })?;
        found.push((media, None));
    }
    for upload in &body.uploads {
        let chunk = futures::stream::once(std::future::ready(Ok::<_, std::convert::Infallible>(
            upload.clone(),
        )));
        let media = chat.media.put_stream(&*chat.store, user_id, chunk).await?;
        stored.push(&media);
        found.push((media, None));
    }
    for url in body.media_urls.iter().chain(&body.audio_url) {
        let media = chat.media.fetch(&*chat.store, user_id, url).await?;
        stored.push(&media);
        found.push((media, Some(url.as_str())));
    }
    let mut described = Vec::with_capacity(found.len());
    let mut images = Vec::new();
    let mut audio = Vec::new();
    let caption = content.clone();
    let mut content = content;
    for (media, source) in &found {
        if Kind::of(&media.content_type) != Some(wanted) {
            return Err(Error::new(
                ErrorKind::Unprocessable,
                "wrong_media_kind",
                format!(
                    "media {} is {}; a{} {} message takes {}",
                    media.id,
                    media.content_type,
                    if body.message_type == MessageType::Image {
                        "n"
                    } else {
                        ""
                    },
                    body.message_type,
                    if wanted == Kind::Audio {
                        "one audio file"
                    } else {
                        "images"
                    }
                ),
            )
            .with_details(json!({ "field": "media_ids", "id": media.id })));
        }
        let mut entry = MediaStore::describe(media);
        if let Some(source) = source {
            entry["source_url"] = json!(source);
        }
        match wanted {
            Kind::Image => images.push(chat.media.media_data(media).await?),
            Kind::Audio => {
                if route.accepts_audio && route.provider.native_audio(&media.content_type) {
                    audio.push(chat.media.media_data(media).await?);
                    entry["sent_as"] = json!("audio");
                }
                let transcript = chat.media.transcribe(media).await?;
                content = if content.trim().is_empty() {
                    transcript.clone()
                } else {
                    format!("{content}\n\n{transcript}")
                };
                entry["transcript"] = json!(transcript);
                if let Some(seconds) = body.audio_duration_seconds {
                    entry["duration_seconds"] = json!(seconds);
                }
            }
        }
        described.push(entry);
    }
    let prompt = if audio.is_empty() {
        ChatMessage::user(content.clone())
    } else {
        ChatMessage::user(caption).with_audio(audio)
    };
    Ok(Attached {
        content,
        prompt: prompt.with_images(images),
        media: serde_json::Value::Array(described),
    })
}

impl Chat {
    /// One image given by URL to a stateless completion (OpenAI `image_url` parts): a `data:` URL checked like an
    /// upload (decodable, sniffed type allowed, within the image limit) and not stored, or an http(s) URL fetched
    /// through the media guard and kept as the caller's media.
    ///
    /// # Errors
    /// `unsupported_media_type`, `too_large`, `wrong_media_kind`, and the fetch's errors.
    pub async fn image_from_url(&self, user_id: &str, url: &str) -> Result<MediaData, Error> {
        use base64::Engine;
        if !url.starts_with("data:") {
            let media = self.media.fetch(&*self.store, user_id, url).await?;
            if Kind::of(&media.content_type) != Some(Kind::Image) {
                return Err(Error::new(
                    ErrorKind::Unprocessable,
                    "wrong_media_kind",
                    format!("{url} is {}, not an image", media.content_type),
                ));
            }
            return self.media.media_data(&media).await;
        }
        let bytes = crate::media::decode_data_url(url, self.media.limit(Kind::Image), "messages")?;
        let mime_type = crate::media::sniff(&bytes)
            .filter(|t| {
                t.starts_with("image/") && self.config.media.allowed_types.iter().any(|a| a == t)
            })
            .ok_or_else(|| {
                Error::new(
                    ErrorKind::UnsupportedType,
                    "unsupported_media_type",
                    "the image data URL's bytes are not an allowed image type",
                )
            })?;
        Ok(MediaData {
            mime_type: mime_type.to_string(),
            base64: base64::engine::general_purpose::STANDARD
                .encode(&bytes)
                .into(),
        })
    }
}
