//! The store conformance suite: the same assertions on SQLite and PostgreSQL.

#![allow(
    clippy::disallowed_methods,
    reason = "test and benchmark harnesses spawn their own fakes and clients; the server's tasks go through chatgate::tasks"
)]

mod common;

use chatgate::store::{
    ConversationFilter, HistoryPage, HistoryTurn, Id, MessageStatus, MessageType, NewMessage,
    NewPersona, PersonaFilter, Role, Store, StoreError, UsageRecord, now,
};
use common::{Backend, TestDb};
use serde_json::json;

backend_tests!(
    personas_seed_idempotently_and_crud,
    conversations_are_scoped_to_their_owner,
    conversation_list_pages_newest_first_with_previews,
    history_pages_by_offset_and_cursor_in_both_orders,
    generation_saves_message_and_usage_together,
    deleting_a_conversation_takes_its_messages,
    token_counts_are_recorded_once,
    prompt_history_is_the_latest_branch_newest_first,
);

async fn open(backend: Backend) -> Option<(TestDb, std::sync::Arc<dyn Store>)> {
    let db = TestDb::new(backend).await?;
    let store = db.store().await;
    Some((db, store))
}

fn persona(slug: &str) -> NewPersona {
    serde_json::from_value(json!({
        "slug": slug, "display_name": "Test", "relationship": "friend", "system_prompt": "Be a test.",
        "personality_traits": ["calm"], "category": "tests"
    }))
    .expect("persona")
}

/// A persona and a conversation of alice's with it.
async fn alice_conversation(
    store: &std::sync::Arc<dyn Store>,
) -> (chatgate::store::Persona, chatgate::store::Conversation) {
    let p = store.create_persona(&persona("p")).await.expect("persona");
    let c = store
        .create_conversation("alice", p.id, None)
        .await
        .expect("create");
    (p, c)
}

fn user_message(conversation_id: Id, content: &str) -> NewMessage {
    NewMessage {
        id: Id::new(),
        conversation_id,
        parent_id: None,
        role: Role::User,
        content: content.into(),
        message_type: MessageType::Text,
        media: json!([]),
        status: MessageStatus::Complete,
        model: None,
        provider: None,
        finish_reason: None,
        error: None,
        created_at: now(),
        content_tokens: None,
    }
}

async fn personas_seed_idempotently_and_crud(backend: Backend) {
    let Some((_db, store)) = open(backend).await else {
        return;
    };
    let defaults = chatgate::personas::defaults().expect("defaults");
    assert_eq!(
        store.seed_personas(&defaults).await.expect("seed") as usize,
        defaults.len()
    );
    assert_eq!(
        store.seed_personas(&defaults).await.expect("seed again"),
        0,
        "seeding twice inserts nothing"
    );

    let created = store
        .create_persona(&persona("tester"))
        .await
        .expect("create");
    assert_eq!(created.personality_traits.0, ["calm"]);
    assert!(matches!(
        store.create_persona(&persona("tester")).await,
        Err(StoreError::Conflict(_))
    ));
    assert_eq!(
        store.get_persona(created.id).await.expect("get"),
        Some(created.clone())
    );

    let filter = PersonaFilter {
        category: Some("tests".into()),
        include_inactive: false,
        limit: 10,
        offset: 0,
    };
    assert_eq!(store.list_personas(&filter).await.expect("list").len(), 1);
    let mut retired = persona("tester");
    retired.is_active = false;
    let updated = store
        .update_persona(created.id, &retired)
        .await
        .expect("update")
        .expect("exists");
    assert!(!updated.is_active);
    assert!(
        store.list_personas(&filter).await.expect("list").is_empty(),
        "inactive personas are not listed"
    );
    assert_eq!(
        store
            .list_personas(&PersonaFilter {
                include_inactive: true,
                ..filter
            })
            .await
            .expect("list")
            .len(),
        1
    );

    // In use: refused; unused: deleted.
    store
        .create_conversation("u", created.id, None)
        .await
        .expect("conversation");
    assert!(matches!(
        store.delete_persona(created.id).await,
        Err(StoreError::Conflict(_))
    ));
    let unused = store
        .create_persona(&persona("unused"))
        .await
        .expect("create");
    assert!(store.delete_persona(unused.id).await.expect("delete"));
    assert!(!store.delete_persona(unused.id).await.expect("delete again"));
}

async fn conversations_are_scoped_to_their_owner(backend: Backend) {
    let Some((_db, store)) = open(backend).await else {
        return;
    };
    let p = store.create_persona(&persona("p")).await.expect("persona");
    let c = store
        .create_conversation("alice", p.id, Some("Hello"))
        .await
        .expect("create");
    assert_eq!(
        store.get_conversation("alice", c.id).await.expect("get"),
        Some(c.clone())
    );
    assert_eq!(
        store.get_conversation("bob", c.id).await.expect("get"),
        None
    );
    assert_eq!(
        store
            .update_conversation("bob", c.id, Some(Some("x")), None)
            .await
            .expect("update"),
        None
    );
    assert!(
        !store
            .delete_conversation("bob", c.id)
            .await
            .expect("delete")
    );

    let renamed = store
        .update_conversation("alice", c.id, Some(Some("Renamed")), Some(true))
        .await
        .expect("update")
        .expect("exists");
    assert_eq!(
        (renamed.title.as_deref(), renamed.archived),
        (Some("Renamed"), true)
    );
    let cleared = store
        .update_conversation("alice", c.id, Some(None), None)
        .await
        .expect("update")
        .expect("exists");
    assert_eq!(
        (cleared.title, cleared.archived),
        (None, true),
        "null clears the title; absent keeps archived"
    );
    // reuse_existing finds only unarchived conversations.
    assert_eq!(
        store
            .latest_conversation("alice", p.id)
            .await
            .expect("latest"),
        None
    );
    let fresh = store
        .create_conversation("alice", p.id, None)
        .await
        .expect("create");
    assert_eq!(
        store
            .latest_conversation("alice", p.id)
            .await
            .expect("latest")
            .map(|c| c.id),
        Some(fresh.id)
    );

    let m = store
        .insert_message(&user_message(c.id, "hi"))
        .await
        .expect("message");
    assert_eq!(store.get_message("bob", m.id).await.expect("get"), None);
    assert!(!store.delete_message("bob", m.id).await.expect("delete"));
    assert!(
        store
            .get_message("alice", m.id)
            .await
            .expect("get")
            .is_some()
    );
    assert!(store.delete_message("alice", m.id).await.expect("delete"));
    assert_eq!(store.get_message("alice", m.id).await.expect("get"), None);
}

async fn conversation_list_pages_newest_first_with_previews(backend: Backend) {
    let Some((_db, store)) = open(backend).await else {
        return;
    };
    let p = store.create_persona(&persona("p")).await.expect("persona");
    let q = store.create_persona(&persona("q")).await.expect("persona");
    let mut ids = Vec::new();
    for i in 0..5 {
        let persona_id = if i % 2 == 0 { p.id } else { q.id };
        ids.push(
            store
                .create_conversation("alice", persona_id, None)
                .await
                .expect("create")
                .id,
        );
    }
    store
        .create_conversation("bob", p.id, None)
        .await
        .expect("bob's");
    // Activity moves the oldest conversation to the top; its preview is the latest message, cut.
    let long = "é".repeat(500);
    store
        .insert_message(&user_message(ids[0], "older"))
        .await
        .expect("message");
    store
        .insert_message(&user_message(ids[0], &long))
        .await
        .expect("message");

    let page = |after, persona_id| ConversationFilter {
        persona_id,
        archived: None,
        after,
        limit: 2,
    };
    let first = store
        .list_conversations("alice", &page(None, None))
        .await
        .expect("list");
    assert_eq!(
        first.iter().map(|c| c.conversation.id).collect::<Vec<_>>(),
        [ids[0], ids[4]]
    );
    let preview = first[0].last_message.as_ref().expect("preview");
    assert_eq!(
        preview.content.chars().count(),
        chatgate::store::PREVIEW_CHARS + 1,
        "cut, with an ellipsis"
    );
    assert!(preview.content.ends_with('…'));
    assert!(first[1].last_message.is_none());

    let mut seen: Vec<Id> = first.iter().map(|c| c.conversation.id).collect();
    let mut cursor = first
        .last()
        .map(|c| (c.conversation.last_message_at, c.conversation.id));
    while let Some(after) = cursor {
        let next = store
            .list_conversations("alice", &page(Some(after), None))
            .await
            .expect("list");
        seen.extend(next.iter().map(|c| c.conversation.id));
        cursor = (next.len() == 2)
            .then(|| {
                next.last()
                    .map(|c| (c.conversation.last_message_at, c.conversation.id))
            })
            .flatten();
    }
    assert_eq!(
        seen,
        [ids[0], ids[4], ids[3], ids[2], ids[1]],
        "every conversation once, newest activity first"
    );

    let only_q = store
        .list_conversations(
            "alice",
            &ConversationFilter {
                limit: 10,
                ..page(None, Some(q.id))
            },
        )
        .await
        .expect("list");
    assert_eq!(
        only_q.iter().map(|c| c.conversation.id).collect::<Vec<_>>(),
        [ids[3], ids[1]]
    );
}

async fn history_pages_by_offset_and_cursor_in_both_orders(backend: Backend) {
    let Some((_db, store)) = open(backend).await else {
        return;
    };
    let (p, c) = alice_conversation(&store).await;
    let mut ids = Vec::new();
    for i in 0..6 {
        ids.push(
            store
                .insert_message(&user_message(c.id, &format!("m{i}")))
                .await
                .expect("insert")
                .id,
        );
    }
    let list = |page, limit, asc| {
        let store = store.clone();
        async move {
            store
                .list_messages(c.id, page, limit, asc, false)
                .await
                .expect("list")
                .into_iter()
                .map(|m| m.id)
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(
        list(HistoryPage::Offset(0), 3, false).await,
        [ids[5], ids[4], ids[3]]
    );
    assert_eq!(
        list(HistoryPage::Offset(0), 3, true).await,
        [ids[0], ids[1], ids[2]]
    );
    assert_eq!(
        list(HistoryPage::Offset(2), 2, true).await,
        [ids[2], ids[3]]
    );
    // Before a cursor: the closest older messages, in the order asked for.
    assert_eq!(
        list(HistoryPage::Before(ids[4]), 2, false).await,
        [ids[3], ids[2]]
    );
    assert_eq!(
        list(HistoryPage::Before(ids[4]), 2, true).await,
        [ids[2], ids[3]]
    );
    assert_eq!(
        list(HistoryPage::After(ids[1]), 2, true).await,
        [ids[2], ids[3]]
    );
    assert_eq!(
        list(HistoryPage::After(ids[1]), 2, false).await,
        [ids[3], ids[2]]
    );
    assert!(list(HistoryPage::After(ids[5]), 2, true).await.is_empty());
    // A cursor from another conversation selects nothing.
    let other = store
        .create_conversation("alice", p.id, None)
        .await
        .expect("create");
    let foreign = store
        .insert_message(&user_message(other.id, "x"))
        .await
        .expect("insert")
        .id;
    assert!(
        list(HistoryPage::Before(foreign), 10, true)
            .await
            .is_empty()
    );
}

async fn generation_saves_message_and_usage_together(backend: Backend) {
    let Some((_db, store)) = open(backend).await else {
        return;
    };
    let (p, c) = alice_conversation(&store).await;
    let question = store
        .insert_message(&user_message(c.id, "q"))
        .await
        .expect("insert");
    let mut reply = user_message(c.id, "answer");
    reply.role = Role::Assistant;
    reply.parent_id = Some(question.id);
    let usage = UsageRecord {
        id: Id::new(),
        user_id: "alice".into(),
        conversation_id: Some(c.id),
        message_id: Some(reply.id),
        persona_id: Some(p.id),
        model: "default".into(),
        upstream_model: "gpt-4o-mini".into(),
        provider: "openai".into(),
        prompt_tokens: 79,
        completion_tokens: 1,
        cached_tokens: 0,
        reasoning_tokens: 0,
        estimated: false,
        cost_nanousd: 12_450,
        ttft_ms: Some(120),
        duration_ms: 900,
        created_at: now(),
    };
    let saved = store.save_generation(&reply, &usage).await.expect("save");
    assert_eq!(
        (saved.tokens_used, saved.ttft_ms, saved.response_time_ms),
        (Some(80), Some(120), Some(900))
    );
    let read = store
        .get_message("alice", reply.id)
        .await
        .expect("get")
        .expect("exists");
    assert_eq!(read, saved, "what is read back equals what was returned");
    assert_eq!(
        store.usage_for_message(reply.id).await.expect("usage"),
        std::slice::from_ref(&usage)
    );

    // A failing second write (same message id) leaves no usage row behind: one transaction.
    let mut again = usage.clone();
    again.id = Id::new();
    assert!(store.save_generation(&reply, &again).await.is_err());
    assert_eq!(
        store
            .usage_for_message(reply.id)
            .await
            .expect("usage")
            .len(),
        1
    );
}

async fn deleting_a_conversation_takes_its_messages(backend: Backend) {
    let Some((_db, store)) = open(backend).await else {
        return;
    };
    let (_, c) = alice_conversation(&store).await;
    let m = store
        .insert_message(&user_message(c.id, "bye"))
        .await
        .expect("insert");
    assert!(
        store
            .delete_conversation("alice", c.id)
            .await
            .expect("delete")
    );
    assert_eq!(store.get_message("alice", m.id).await.expect("get"), None);
    assert_eq!(
        store.get_conversation("alice", c.id).await.expect("get"),
        None
    );
    // Writing into a deleted conversation fails cleanly.
    assert!(
        store
            .insert_message(&user_message(c.id, "late"))
            .await
            .is_err()
    );
}

/// `content_tokens` is written with a message when known, recorded later where it is not, and never
/// overwritten; a message deleted meanwhile is skipped without failing the others.
async fn token_counts_are_recorded_once(backend: Backend) {
    let Some((_db, store)) = open(backend).await else {
        return;
    };
    let (_, c) = alice_conversation(&store).await;
    let known = store
        .insert_message(&NewMessage {
            content_tokens: Some(7),
            ..user_message(c.id, "counted at write")
        })
        .await
        .expect("insert");
    let unknown = store
        .insert_message(&user_message(c.id, "counted later"))
        .await
        .expect("insert");
    assert_eq!(
        (known.content_tokens, unknown.content_tokens),
        (Some(7), None)
    );
    let gone = store
        .insert_message(&user_message(c.id, "deleted"))
        .await
        .expect("insert");
    assert!(
        store
            .delete_message("alice", gone.id)
            .await
            .expect("delete")
    );
    store
        .set_content_tokens(&[(known.id, 99), (unknown.id, 3), (gone.id, 5)])
        .await
        .expect("record");
    let counts: Vec<Option<i64>> = store
        .list_messages(c.id, HistoryPage::Offset(0), 10, true, false)
        .await
        .expect("list")
        .iter()
        .map(|m| m.content_tokens)
        .collect();
    assert_eq!(counts, [Some(7), Some(3)]);
}

/// The one-row history read a prompt uses gives what the paged listing gives, field for field.
async fn prompt_history_is_the_latest_branch_newest_first(backend: Backend) {
    let Some((_db, store)) = open(backend).await else {
        return;
    };
    let (p, c) = alice_conversation(&store).await;
    assert!(
        store
            .prompt_history(c.id, None, 10)
            .await
            .expect("empty")
            .is_empty(),
        "a conversation without messages has no history"
    );
    let media_id = Id::new();
    store
        .insert_media(&chatgate::store::Media {
            id: media_id,
            user_id: "alice".into(),
            content_type: "image/png".into(),
            size_bytes: 4,
            sha256: "00".repeat(32),
            storage_key: format!("alice/{media_id}"),
            created_at: now(),
        })
        .await
        .expect("media");
    let mut question = None;
    for i in 0..3 {
        let asked = store
            .insert_message(&NewMessage {
                message_type: if i == 1 {
                    MessageType::Image
                } else {
                    MessageType::Text
                },
                media: if i == 1 {
                    json!([{ "id": media_id, "kind": "image" }])
                } else {
                    json!([])
                },
                content_tokens: (i == 0).then_some(4),
                ..user_message(c.id, &format!("question {i} with \"quotes\" and ünïcode"))
            })
            .await
            .expect("insert");
        // Two replies to each question: the first was regenerated, so history keeps only the second.
        for reply in ["first reply", "regenerated reply"] {
            store
                .insert_message(&NewMessage {
                    parent_id: Some(asked.id),
                    role: Role::Assistant,
                    content: format!("{reply} {i}"),
                    content_tokens: Some(3),
                    ..user_message(c.id, "")
                })
                .await
                .expect("reply");
        }
        question = Some(asked.id);
    }
    let turns = |page, limit| {
        let store = store.clone();
        async move {
            store
                .list_messages(c.id, page, limit, false, false)
                .await
                .expect("list")
                .into_iter()
                .map(|m| HistoryTurn {
                    id: m.id,
                    role: m.role,
                    content: m.content,
                    message_type: m.message_type,
                    media: m.media,
                    content_tokens: m.content_tokens,
                })
                .collect::<Vec<_>>()
        }
    };
    let all = store.prompt_history(c.id, None, 100).await.expect("all");
    assert_eq!(all, turns(HistoryPage::Offset(0), 100).await);
    assert_eq!(all.len(), 6, "three questions and their latest replies");
    assert_eq!(all[0].content, "regenerated reply 2");
    assert_eq!(all[3].media, json!([{ "id": media_id, "kind": "image" }]));
    assert_eq!(all[5].content_tokens, Some(4));
    assert_eq!(
        store.prompt_history(c.id, None, 3).await.expect("limited"),
        turns(HistoryPage::Offset(0), 3).await
    );
    let question = question.expect("asked");
    let before = store
        .prompt_history(c.id, Some(question), 100)
        .await
        .expect("before");
    assert_eq!(before, turns(HistoryPage::Before(question), 100).await);
    assert_eq!(before.len(), 4, "what came before the last question");
    // A cursor from another conversation selects nothing.
    let other = store
        .create_conversation("alice", p.id, None)
        .await
        .expect("create");
    assert!(
        store
            .prompt_history(other.id, Some(question), 100)
            .await
            .expect("foreign")
            .is_empty()
    );
}
