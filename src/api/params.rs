//! The closed sets of query parameter values, as the OpenAPI document gives them. The handlers read these
//! parameters as text and refuse any other value with a `validation_error` naming the parameter (a clearer message
//! than a failed enum parse); these types only describe them.

#![expect(
    dead_code,
    reason = "schema-only types: they describe query parameters the handlers validate themselves"
)]

/// `?format=`: the stream's format.
#[derive(utoipa::ToSchema)]
#[schema(rename_all = "kebab-case")]
pub enum StreamFormat {
    /// chatgate's SSE events (DESIGN.md).
    Native,
    /// The Vercel AI SDK UI message stream.
    AiSdk,
}

/// `?on_disconnect=`: what happens when the request goes away before the reply ends.
#[derive(utoipa::ToSchema)]
#[schema(rename_all = "lowercase")]
pub enum OnDisconnect {
    /// The reply stops, saved `cancelled`, billed for what was streamed.
    Cancel,
}

/// `?order=`.
#[derive(utoipa::ToSchema)]
#[schema(rename_all = "lowercase")]
pub enum SortOrder {
    Asc,
    Desc,
}

/// `?branches=`: the latest reply to each question, or every regenerated one too.
#[derive(utoipa::ToSchema)]
#[schema(rename_all = "lowercase")]
pub enum Branches {
    Latest,
    All,
}
