//! Personas: the default set shipped as data (`personas_defaults.json`), validation, and the system prompt
//! sent upstream (the persona's instructions, its traits, and the behaviour of its relationship).

use crate::error::Error;
use crate::store::{NewPersona, Persona};

/// Relationship types, as in the seed systems.
pub const RELATIONSHIPS: [&str; 7] = [
    "parent",
    "spouse",
    "child",
    "sibling",
    "friend",
    "colleague",
    "other",
];

/// How a persona of each relationship behaves towards the user.
pub fn relationship_behaviour(relationship: &str) -> &'static str {
    match relationship {
        "parent" => {
            "caring and nurturing: give advice when asked, show concern for the user's well-being, be supportive and protective"
        }
        "spouse" => {
            "loving and romantic: be understanding and supportive, share in the user's joys and concerns, be intimate and personal"
        }
        "child" => {
            "curious and energetic: ask questions, show enthusiasm for learning, be playful and innocent"
        }
        "sibling" => {
            "friendly and supportive: share experiences, offer brotherly or sisterly advice, be casual and familiar"
        }
        "friend" => {
            "supportive and fun: offer companionship, keep a casual conversational style, be trustworthy and reliable"
        }
        "colleague" => {
            "professional and helpful: focus on work topics, collaborate, be respectful and fairly formal"
        }
        _ => "supportive and engaging, following the persona's description",
    }
}

/// The system prompt for a persona.
pub fn system_prompt(persona: &Persona) -> String {
    let mut prompt = persona.system_prompt.trim().to_string();
    if !persona.personality_traits.0.is_empty() {
        prompt.push_str("\n\nPersonality traits: ");
        prompt.push_str(&persona.personality_traits.0.join(", "));
        prompt.push('.');
    }
    prompt.push_str(&format!(
        "\n\nYour relationship to the user: {}. Behave accordingly: {}.",
        persona.relationship,
        relationship_behaviour(&persona.relationship)
    ));
    prompt.push_str(&format!(
        "\nStay in character as {} and answer in the user's language.",
        persona.display_name
    ));
    prompt
}

/// The default personas shipped with chatgate.
///
/// # Errors
/// When the embedded data is invalid (a build defect, caught by the unit test).
pub fn defaults() -> Result<Vec<NewPersona>, String> {
    let personas: Vec<NewPersona> = serde_json::from_str(include_str!("personas_defaults.json"))
        .map_err(|e| format!("personas_defaults.json: {e}"))?;
    for persona in &personas {
        validate(persona)
            .map_err(|e| format!("personas_defaults.json, {}: {}", persona.slug, e.message))?;
    }
    Ok(personas)
}

/// Checks a persona's fields.
///
/// # Errors
/// 400 `validation_error` naming the field.
pub fn validate(persona: &NewPersona) -> Result<(), Error> {
    let slug_ok = !persona.slug.is_empty()
        && persona.slug.len() <= 64
        && persona
            .slug
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if !slug_ok {
        return Err(Error::validation(
            "slug",
            "must be 1-64 characters of a-z, 0-9 and '-'",
        ));
    }
    if persona.display_name.trim().is_empty() {
        return Err(Error::validation("display_name", "must not be empty"));
    }
    if !RELATIONSHIPS.contains(&persona.relationship.as_str()) {
        return Err(Error::validation(
            "relationship",
            format!("must be one of {}", RELATIONSHIPS.join(", ")),
        ));
    }
    if persona.system_prompt.trim().is_empty() {
        return Err(Error::validation("system_prompt", "must not be empty"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_cover_every_relationship() {
        let personas = defaults().expect("valid defaults");
        for relationship in RELATIONSHIPS {
            assert!(
                personas.iter().any(|p| p.relationship == relationship),
                "no default {relationship} persona"
            );
        }
    }

    #[test]
    fn system_prompt_combines_instructions_traits_and_relationship() {
        let now = crate::store::now();
        let persona = Persona {
            id: crate::store::Id::new(),
            slug: "alex".into(),
            display_name: "Alex".into(),
            avatar_url: None,
            description: String::new(),
            category: "general".into(),
            relationship: "colleague".into(),
            system_prompt: "You are Alex.".into(),
            personality_traits: sqlx::types::Json(vec!["witty".into(), "kind".into()]),
            model: None,
            is_active: true,
            created_at: now,
            updated_at: now,
        };
        let prompt = system_prompt(&persona);
        assert!(prompt.starts_with("You are Alex."));
        assert!(prompt.contains("Personality traits: witty, kind."));
        assert!(prompt.contains("colleague") && prompt.contains("professional and helpful"));
    }
}

/// Personas change rarely and are read on every message: a small cache in front of the store. Admin writes on
/// this instance invalidate it at once; other instances see a change within [`PersonaCache::TTL`].
#[derive(Debug, Default)]
pub struct PersonaCache {
    entries: std::sync::RwLock<
        std::collections::HashMap<crate::store::Id, (Persona, std::time::Instant)>,
    >,
}

impl PersonaCache {
    /// How long a cached persona is trusted.
    pub const TTL: std::time::Duration = std::time::Duration::from_secs(30);

    /// The persona, from the cache or the store.
    ///
    /// # Errors
    /// When the store fails.
    pub async fn get(
        &self,
        store: &dyn crate::store::Store,
        id: crate::store::Id,
    ) -> crate::store::StoreResult<Option<Persona>> {
        if let Some((persona, at)) = self
            .entries
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&id)
            && at.elapsed() < Self::TTL
        {
            return Ok(Some(persona.clone()));
        }
        let persona = store.get_persona(id).await?;
        let mut entries = self
            .entries
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match &persona {
            Some(persona) => {
                entries.insert(id, (persona.clone(), std::time::Instant::now()));
            }
            None => {
                entries.remove(&id);
            }
        }
        Ok(persona)
    }

    /// Forgets a persona after an admin changed it.
    pub fn invalidate(&self, id: crate::store::Id) {
        self.entries
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&id);
    }
}
