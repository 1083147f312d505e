//! The words of chatgate's domain as types: who wrote a message, what kind it is, where its generation
//! stands, why it ended, why it was cancelled, and money.
//!
//! Each enum is parsed once at the edge (serde for JSON, sqlx for rows) and compared as a value everywhere
//! else; its text form (`as_str`, the same in JSON, SQL and metrics labels) is written here and nowhere else.

use std::fmt;
use std::str::FromStr;

/// A text form was not one of an enum's values.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("'{value}' is not one of {expected}")]
pub struct UnknownValue {
    pub value: String,
    pub expected: &'static str,
}

/// Defines a string-valued enum with `as_str`, `FromStr`, `Display`, serde and sqlx (as `TEXT`) mappings.
macro_rules! text_enum {
    (
        $(#[$meta:meta])*
        pub enum $name:ident { $( $(#[$vmeta:meta])* $variant:ident = $text:literal ),+ $(,)? }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name { $( $(#[$vmeta])* $variant ),+ }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// Every text form, in declaration order.
            pub const NAMES: &'static [&'static str] = &[$($text),+];

            /// The text form, as in JSON and SQL.
            pub const fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }
        }

        impl FromStr for $name {
            type Err = UnknownValue;
            fn from_str(s: &str) -> Result<Self, UnknownValue> {
                match s {
                    $($text => Ok($name::$variant),)+
                    _ => Err(UnknownValue {
                        value: s.to_string(),
                        expected: concat!($($text, " "),+),
                    }),
                }
            }
        }

        impl_text_traits!($name);

        impl<'de> serde::Deserialize<'de> for $name {
            /// Reads the text where it lies: no `String` allocated, as a `Cow<str>` would (serde's own
            /// `Cow` always owns), for each role and type of each turn of a history.
            fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                struct Text;
                impl serde::de::Visitor<'_> for Text {
                    type Value = $name;
                    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                        f.write_str(concat!("one of: ", $($text, " "),+))
                    }
                    fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<$name, E> {
                        text.parse().map_err(|_| E::unknown_variant(text, $name::NAMES))
                    }
                }
                deserializer.deserialize_str(Text)
            }
        }

        impl utoipa::PartialSchema for $name {
            fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
                utoipa::openapi::ObjectBuilder::new()
                    .schema_type(utoipa::openapi::schema::Type::String)
                    .enum_values(Some([$($text),+]))
                    .into()
            }
        }

        impl utoipa::ToSchema for $name {}
    };
}

/// `Display`, `Serialize` and sqlx for a type with `as_str(&self) -> &str` and `FromStr`.
macro_rules! impl_text_traits {
    ($name:ident) => {
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(self.as_str())
            }
        }

        impl<DB: sqlx::Database> sqlx::Type<DB> for $name
        where
            str: sqlx::Type<DB>,
        {
            fn type_info() -> DB::TypeInfo {
                <str as sqlx::Type<DB>>::type_info()
            }
            fn compatible(ty: &DB::TypeInfo) -> bool {
                <str as sqlx::Type<DB>>::compatible(ty)
            }
        }

        impl<'q, DB: sqlx::Database> sqlx::Encode<'q, DB> for $name
        where
            for<'a> &'a str: sqlx::Encode<'q, DB>,
        {
            fn encode_by_ref(
                &self,
                buf: &mut <DB as sqlx::Database>::ArgumentBuffer,
            ) -> Result<sqlx::encode::IsNull, sqlx::error::BoxDynError> {
                <&str as sqlx::Encode<'q, DB>>::encode_by_ref(&self.as_str(), buf)
            }
        }

        impl<'r, DB: sqlx::Database> sqlx::Decode<'r, DB> for $name
        where
            &'r str: sqlx::Decode<'r, DB>,
        {
            fn decode(
                value: <DB as sqlx::Database>::ValueRef<'r>,
            ) -> Result<Self, sqlx::error::BoxDynError> {
                let text = <&'r str as sqlx::Decode<'r, DB>>::decode(value)?;
                Ok(text.parse()?)
            }
        }
    };
}

text_enum! {
    /// Who wrote a message.
    pub enum Role {
        User = "user",
        Assistant = "assistant",
        System = "system",
        /// A tool call's result, in an OpenAI-compatible request's history; never stored.
        Tool = "tool",
    }
}

text_enum! {
    /// Where a message's generation stands. User messages are `complete` when written.
    pub enum MessageStatus {
        /// The reply is being generated; its row holds the last checkpoint.
        Streaming = "streaming",
        /// The reply ended normally.
        Complete = "complete",
        /// A user (or a disconnect policy) stopped it; the partial text is kept.
        Cancelled = "cancelled",
        /// The provider failed; the partial text is kept.
        Failed = "failed",
        /// The server stopped (shutdown past its grace, or a crash) before the reply ended.
        Interrupted = "interrupted",
    }
}

text_enum! {
    /// What a message carries.
    #[derive(Default)]
    pub enum MessageType {
        /// Text only.
        #[default]
        Text = "text",
        /// Text with one or more images.
        Multimodal = "multimodal",
        /// One or more images, text optional.
        Image = "image",
        /// One voice note (its transcript is the text), text optional.
        Audio = "audio",
    }
}

impl MessageType {
    /// Whether the message carries images.
    pub fn has_images(self) -> bool {
        matches!(self, MessageType::Multimodal | MessageType::Image)
    }
}

text_enum! {
    /// Why a generation was cancelled.
    pub enum CancelReason {
        /// A user asked for it: status `cancelled`.
        User = "cancelled",
        /// The server is shutting down and the grace period ran out: status `interrupted`.
        Shutdown = "shutdown",
        /// The last subscriber left and the `cancel` disconnect policy applies: status `cancelled`.
        Disconnected = "client_disconnected",
        /// Too many generations ran with nobody following them: status `cancelled`.
        Unattended = "unattended_limit",
    }
}

impl CancelReason {
    /// The status of a reply cancelled for this reason.
    pub fn status(self) -> MessageStatus {
        match self {
            CancelReason::Shutdown => MessageStatus::Interrupted,
            _ => MessageStatus::Cancelled,
        }
    }

    /// The saved message's finish reason.
    pub fn finish_reason(self) -> FinishReason {
        FinishReason::Cancelled(self)
    }
}

/// Why a reply ended: the provider's reason (normalised to OpenAI's words where one fits), or chatgate's.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum FinishReason {
    /// The model finished its answer (OpenAI `stop`, Anthropic `end_turn`/`stop_sequence`, Gemini `STOP`).
    Stop,
    /// The output token limit was reached (OpenAI `length`, Anthropic `max_tokens`, Gemini `MAX_TOKENS`).
    Length,
    /// The provider's safety filter stopped it (OpenAI `content_filter`, Gemini `SAFETY`...).
    ContentFilter,
    /// The model called tools (OpenAI `tool_calls`, Anthropic `tool_use`).
    ToolCalls,
    /// The provider failed (status `failed`).
    Error,
    /// The generation was cancelled.
    Cancelled(CancelReason),
    /// The server stopped before the reply ended and a later process closed it.
    Interrupted,
    /// A reason of a provider's that has no common name, kept as the provider said it.
    Other(String),
}

impl FinishReason {
    /// The text form, as in JSON and SQL.
    pub fn as_str(&self) -> &str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
            FinishReason::ContentFilter => "content_filter",
            FinishReason::ToolCalls => "tool_calls",
            FinishReason::Error => "error",
            FinishReason::Cancelled(reason) => reason.as_str(),
            FinishReason::Interrupted => "interrupted",
            FinishReason::Other(other) => other,
        }
    }
}

impl FromStr for FinishReason {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "stop" => FinishReason::Stop,
            "length" => FinishReason::Length,
            "content_filter" => FinishReason::ContentFilter,
            "tool_calls" => FinishReason::ToolCalls,
            "error" => FinishReason::Error,
            "interrupted" => FinishReason::Interrupted,
            other => match other.parse::<CancelReason>() {
                Ok(reason) => FinishReason::Cancelled(reason),
                Err(_) => FinishReason::Other(other.to_string()),
            },
        })
    }
}

impl From<&str> for FinishReason {
    fn from(s: &str) -> Self {
        match s.parse() {
            Ok(reason) => reason,
            Err(never) => match never {},
        }
    }
}

impl_text_traits!(FinishReason);

impl<'de> serde::Deserialize<'de> for FinishReason {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        Ok(FinishReason::from(text.as_ref()))
    }
}

impl utoipa::PartialSchema for FinishReason {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .description(Some(
                "stop | length | content_filter | tool_calls | error | cancelled | shutdown | \
                 client_disconnected | unattended_limit | interrupted, or a provider's own reason",
            ))
            .into()
    }
}

impl utoipa::ToSchema for FinishReason {}

/// nano-USD (1e-9 USD, the unit money is stored in) → USD, for display.
pub fn nanousd_to_usd(nanousd: i64) -> f64 {
    nanousd as f64 / 1e9
}

/// Serializes a UTC time exactly as chrono's own `Serialize` does (RFC 3339 with `Z` and as many fractional
/// digits as it has, chrono's `SecondsFormat::AutoSi`: `2026-12-01T21:19:26.123456Z`), for
/// `#[serde(serialize_with)]`. chrono writes it through `collect_str`, so serde_json escaped each character
/// chrono wrote as a string of its own (1.3 k instructions a time in that escaping alone, callgrind); here it is
/// formatted into one string first and written once.
///
/// # Errors
/// Only the serializer's own.
pub fn serialize_utc<S: serde::Serializer>(
    at: &chrono::DateTime<chrono::Utc>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&at.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_serialize_exactly_as_chrono_serializes_them() {
        use chrono::{DateTime, TimeZone, Utc};
        #[derive(serde::Serialize)]
        struct Ours(#[serde(serialize_with = "serialize_utc")] DateTime<Utc>);
        let second = Utc.with_ymd_and_hms(2026, 12, 1, 21, 19, 26).unwrap();
        for nanos in [0, 1, 120_000_000, 123_456_000, 123_456_789, 999_999_999] {
            let at = second + chrono::Duration::nanoseconds(nanos);
            assert_eq!(
                serde_json::to_string(&Ours(at)).unwrap(),
                serde_json::to_string(&at).unwrap()
            );
        }
        let leap = chrono::NaiveDate::from_ymd_opt(2016, 12, 31)
            .and_then(|d| d.and_hms_nano_opt(23, 59, 59, 1_500_000_000))
            .expect("a leap second")
            .and_utc();
        assert_eq!(
            serde_json::to_string(&Ours(leap)).unwrap(),
            serde_json::to_string(&leap).unwrap()
        );
    }

    #[test]
    fn text_forms_round_trip() {
        for status in MessageStatus::ALL {
            assert_eq!(status.as_str().parse::<MessageStatus>(), Ok(*status));
        }
        for kind in MessageType::ALL {
            let json = serde_json::to_string(kind).expect("json");
            assert_eq!(
                serde_json::from_str::<MessageType>(&json).expect("parse"),
                *kind
            );
        }
        assert!("video".parse::<MessageType>().is_err());
        assert!(serde_json::from_str::<Role>("\"robot\"").is_err());
    }

    #[test]
    fn finish_reasons_keep_unknown_provider_words() {
        for reason in [
            FinishReason::Stop,
            FinishReason::Length,
            FinishReason::Cancelled(CancelReason::Disconnected),
            FinishReason::Interrupted,
            FinishReason::Other("recitation".into()),
        ] {
            assert_eq!(FinishReason::from(reason.as_str()), reason);
        }
        assert_eq!(CancelReason::User.finish_reason().as_str(), "cancelled");
        assert_eq!(CancelReason::Shutdown.status(), MessageStatus::Interrupted);
    }
}
