//! The store conformance suite: the same assertions on SQLite and PostgreSQL.

#![allow(
    clippy::disallowed_methods,
    reason = "test and benchmark harnesses spawn their own fakes and clients; the server's tasks go through chatgate::tasks"
)]

mod common;

use chatgate::store::{
    ConversationFilter, GroupCommit, HistoryPage, HistoryTurn, Id, Lane, Media, MessageStatus,
    MessageType, MessageWrite, NewMessage, NewPersona, PersonaFilter, Role, Store, StoreError,
    UsageBucket, UsageGroup, UsageQuery, UsageRecord, now,
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
    a_batch_of_writes_is_one_transaction,
    group_commit_isolates_a_refused_write,
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

/// An assistant reply to `question`, in its conversation.
fn reply_to(question: &NewMessage, content: &str) -> NewMessage {
    NewMessage {
        role: Role::Assistant,
        parent_id: Some(question.id),
        ..user_message(question.conversation_id, content)
    }
}

/// Alice's usage record of `reply` (12,450 nano-USD, TTFT 120 ms, 900 ms long).
fn usage_of(
    reply: &NewMessage,
    persona_id: Option<Id>,
    prompt: i64,
    completion: i64,
) -> UsageRecord {
    UsageRecord {
        id: Id::new(),
        user_id: "alice".into(),
        conversation_id: Some(reply.conversation_id),
        message_id: Some(reply.id),
        persona_id,
        model: "default".into(),
        upstream_model: "gpt-4o-mini".into(),
        provider: "openai".into(),
        prompt_tokens: prompt,
        completion_tokens: completion,
        cached_tokens: 0,
        reasoning_tokens: 0,
        estimated: false,
        cost_nanousd: 12_450,
        ttft_ms: Some(120),
        duration_ms: 900,
        created_at: now(),
    }
}

/// The turns of alice's conversation's next prompt.
async fn history(
    store: &std::sync::Arc<dyn Store>,
    conversation: Id,
    before: Option<Id>,
    limit: i64,
) -> Vec<HistoryTurn> {
    store
        .prompt_history("alice", conversation, before, limit)
        .await
        .expect("history")
        .expect("alice's conversation")
        .turns
}

/// Alice's usage today, by persona.
/// Alice's requests in today's rollup, over every persona.
async fn requests_today(store: &std::sync::Arc<dyn Store>) -> i64 {
    usage_by_persona(store)
        .await
        .iter()
        .map(|b| b.requests)
        .sum()
}

async fn usage_by_persona(store: &std::sync::Arc<dyn Store>) -> Vec<UsageBucket> {
    let today = chatgate::store::day_of(now());
    store
        .usage_buckets(&UsageQuery {
            user_id: Some("alice".into()),
            from_day: today.clone(),
            to_day: today,
            group_by: UsageGroup::Persona,
        })
        .await
        .expect("usage")
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
    let question = user_message(c.id, "q");
    store.insert_message(&question).await.expect("insert");
    let reply = reply_to(&question, "answer");
    let usage = usage_of(&reply, Some(p.id), 79, 1);
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
        history(&store, c.id, None, 10).await.is_empty(),
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
    let all = history(&store, c.id, None, 100).await;
    assert_eq!(all, turns(HistoryPage::Offset(0), 100).await);
    assert_eq!(all.len(), 6, "three questions and their latest replies");
    assert_eq!(all[0].content, "regenerated reply 2");
    assert_eq!(all[3].media, json!([{ "id": media_id, "kind": "image" }]));
    assert_eq!(all[5].content_tokens, Some(4));
    // Every window, whether it ends on a replaced reply (read again with the branch filter) or not.
    for limit in 0..=10 {
        assert_eq!(
            history(&store, c.id, None, limit).await,
            turns(HistoryPage::Offset(0), limit).await,
            "the newest {limit}"
        );
    }
    let question = question.expect("asked");
    let before = history(&store, c.id, Some(question), 100).await;
    assert_eq!(before, turns(HistoryPage::Before(question), 100).await);
    assert_eq!(before.len(), 4, "what came before the last question");
    // A cursor from another conversation selects nothing.
    let other = store
        .create_conversation("alice", p.id, None)
        .await
        .expect("create");
    assert!(
        history(&store, other.id, Some(question), 100)
            .await
            .is_empty()
    );
    // Ordered by creation time, not by the order of the writes.
    let t0 = now();
    let mut written = Vec::new();
    for (i, secs) in [2, 0, 1].into_iter().enumerate() {
        let message = NewMessage {
            created_at: t0 + chrono::Duration::seconds(secs),
            ..user_message(other.id, &format!("written {i}"))
        };
        store.insert_message(&message).await.expect("insert");
        written.push(message.id);
    }
    let ids: Vec<_> = history(&store, other.id, None, 10)
        .await
        .into_iter()
        .map(|t| t.id)
        .collect();
    assert_eq!(ids, [written[0], written[2], written[1]], "newest first");
    // The conversation comes with its history, and only to its owner.
    let read = store
        .prompt_history("alice", c.id, None, 1)
        .await
        .expect("read")
        .expect("alice's");
    let listed = store
        .get_conversation("alice", c.id)
        .await
        .expect("get")
        .expect("alice's");
    assert_eq!((read.conversation, read.turns.len()), (listed, 1));
    for (user, id) in [("bob", c.id), ("alice", Id::new())] {
        assert!(
            store
                .prompt_history(user, id, None, 10)
                .await
                .expect("read")
                .is_none(),
            "{user} has no conversation {id}"
        );
    }
}

async fn a_batch_of_writes_is_one_transaction(backend: Backend) {
    let Some((_db, store)) = open(backend).await else {
        return;
    };
    let (p, c) = alice_conversation(&store).await;
    let other = store
        .create_conversation("alice", p.id, None)
        .await
        .expect("create");
    let photo = Media {
        id: Id::new(),
        user_id: "alice".into(),
        content_type: "image/png".into(),
        size_bytes: 3,
        sha256: "00".into(),
        storage_key: "photo".into(),
        created_at: now(),
    };
    store.insert_media(&photo).await.expect("media");

    // Two questions (one with a photo) and their replies, and a usage record of no message, in one batch.
    let question = user_message(c.id, "q1");
    let with_photo = NewMessage {
        message_type: MessageType::Image,
        media: json!([{ "id": photo.id.to_string(), "content_type": "image/png" }]),
        ..user_message(other.id, "look")
    };
    let (first, second) = (reply_to(&question, "a1"), reply_to(&with_photo, "a2"));
    let mut stateless = usage_of(&first, None, 5, 7);
    (stateless.conversation_id, stateless.message_id) = (None, None);
    let writes = [
        MessageWrite::Insert(question.clone()),
        MessageWrite::Insert(with_photo.clone()),
        MessageWrite::Reply(first.clone(), usage_of(&first, Some(p.id), 10, 2)),
        MessageWrite::Reply(second.clone(), usage_of(&second, Some(p.id), 20, 3)),
        MessageWrite::Usage(stateless),
    ];
    let at = store.write_messages(&writes).await.expect("batch");
    for (id, content) in [
        (question.id, "q1"),
        (with_photo.id, "look"),
        (first.id, "a1"),
        (second.id, "a2"),
    ] {
        let read = store
            .get_message("alice", id)
            .await
            .expect("get")
            .expect("written");
        assert_eq!(read.content, content);
    }
    let reply = store
        .get_message("alice", second.id)
        .await
        .expect("get")
        .expect("reply");
    assert_eq!((reply.updated_at, reply.tokens_used), (at, Some(23)));
    // The rollup holds both replies summed in one row of the persona, and the stateless record in its own.
    let mut expected = UsageBucket::empty(p.id.to_string());
    (
        expected.requests,
        expected.prompt_tokens,
        expected.completion_tokens,
        expected.cost_nanousd,
    ) = (2, 30, 5, 24_900);
    let mut none = UsageBucket::empty(String::new());
    (
        none.requests,
        none.prompt_tokens,
        none.completion_tokens,
        none.cost_nanousd,
    ) = (1, 5, 7, 12_450);
    let mut buckets = usage_by_persona(&store).await;
    buckets.sort_by(|a, b| a.key.cmp(&b.key));
    assert_eq!(buckets, vec![none, expected.clone()]);
    // The photo is linked to its message: deleting that conversation takes the upload's record with it.
    assert!(
        store
            .delete_conversation("alice", other.id)
            .await
            .expect("delete")
    );
    assert!(
        store
            .get_media("alice", photo.id)
            .await
            .expect("media")
            .is_none()
    );

    // One refused write (a question in a conversation that is gone) fails the whole batch: nothing of it is
    // written, neither the messages nor the usage nor the rollup.
    let (third, orphan) = (
        user_message(c.id, "q3"),
        user_message(other.id, "into the void"),
    );
    let third_reply = reply_to(&third, "a3");
    let refused = store
        .write_messages(&[
            MessageWrite::Insert(third.clone()),
            MessageWrite::Reply(
                third_reply.clone(),
                usage_of(&third_reply, Some(p.id), 1, 1),
            ),
            MessageWrite::Insert(orphan),
        ])
        .await;
    // The error names what was refused (on PostgreSQL the batch is one statement; its failing table says).
    assert!(
        matches!(&refused, Err(StoreError::Conflict(what)) if what.starts_with("the message ")),
        "{refused:?}"
    );
    for id in [third.id, third_reply.id] {
        assert!(store.get_message("alice", id).await.expect("get").is_none());
    }
    assert!(
        store
            .usage_for_message(third_reply.id)
            .await
            .expect("usage")
            .is_empty()
    );
    assert_eq!(requests_today(&store).await, 3);
    // A usage record of a message that was never written is refused as such, and leaves no rollup behind.
    let never_written = reply_to(&third, "never written");
    let refused = store
        .write_messages(&[MessageWrite::Usage(usage_of(
            &never_written,
            Some(p.id),
            5,
            5,
        ))])
        .await;
    assert!(
        matches!(&refused, Err(StoreError::Conflict(what)) if what.starts_with("a usage record")),
        "{refused:?}"
    );
    assert_eq!(requests_today(&store).await, 3);
    // And an empty batch writes nothing and does not fail.
    store.write_messages(&[]).await.expect("empty batch");
}

async fn group_commit_isolates_a_refused_write(backend: Backend) {
    let Some((_db, store)) = open(backend).await else {
        return;
    };
    let (p, c) = alice_conversation(&store).await;
    let writes = GroupCommit::new(std::sync::Arc::clone(&store), chatgate::tasks::Tasks::new());
    // 60 questions with their replies at once, and one question for a conversation that does not exist: they
    // share transactions, and the refused one must fail alone.
    let questions: Vec<NewMessage> = (0..60)
        .map(|i| user_message(c.id, &format!("q{i}")))
        .collect();
    let orphan = user_message(Id::new(), "nowhere");
    let mut calls = Vec::new();
    for question in &questions {
        let writes = writes.clone();
        let (question, reply) = (question.clone(), reply_to(question, "a"));
        let usage = usage_of(&reply, Some(p.id), 3, 4);
        calls.push(tokio::spawn(async move {
            writes
                .write(MessageWrite::Insert(question), Lane::Request)
                .await?;
            writes
                .write(MessageWrite::Reply(reply, usage), Lane::Background)
                .await
        }));
    }
    let refused = writes
        .write(MessageWrite::Insert(orphan.clone()), Lane::Request)
        .await;
    assert!(
        matches!(refused, Err(StoreError::Conflict(_))),
        "{refused:?}"
    );
    for call in calls {
        call.await.expect("join").expect("written");
    }
    let stored = history(&store, c.id, None, 1_000).await;
    assert_eq!(stored.len(), 120, "every question and reply is stored");
    let buckets = usage_by_persona(&store).await;
    assert_eq!(
        buckets
            .iter()
            .map(|b| (b.requests, b.prompt_tokens, b.completion_tokens))
            .collect::<Vec<_>>(),
        vec![(60, 180, 240)]
    );
    // A write whose caller went away is still written.
    let question = user_message(c.id, "abandoned");
    let abandoned = writes.write(MessageWrite::Insert(question.clone()), Lane::Request);
    let _ = tokio::time::timeout(std::time::Duration::ZERO, abandoned).await;
    let mut stored = None;
    for _ in 0..200 {
        stored = store.get_message("alice", question.id).await.expect("get");
        if stored.is_some() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(stored.map(|m| m.content).as_deref(), Some("abandoned"));
}

/// Ends every other connection to the test database from the server's side, as a restart or a failover does;
/// returns how many it ended.
async fn end_server_connections(db: &TestDb) -> i64 {
    use sqlx::Connection;
    let mut admin = sqlx::PgConnection::connect(&db.url).await.expect("connect");
    let ended: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = current_database() AND pid <> pg_backend_pid()) t",
    )
    .fetch_one(&mut admin)
    .await
    .expect("terminate");
    let _ = admin.close().await;
    ended
}

/// PostgreSQL ended the store's connections. Once they have been idle past the ping window (500 ms), queries find
/// them dead before use and open new ones: none fails. A connection ended within the window fails its next query
/// once (the price of not pinging in front of every query), and the pool replaces it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_connections_the_server_ended_are_replaced() {
    let Some(db) = TestDb::new(Backend::Postgres).await else {
        return;
    };
    let store = db.store().await;
    store.ping().await.expect("ping");
    assert!(
        end_server_connections(&db).await >= 1,
        "no connection to end"
    );
    tokio::time::sleep(std::time::Duration::from_millis(700)).await;
    for attempt in 0..10 {
        store.ping().await.unwrap_or_else(|e| {
            panic!("query {attempt} after the server ended the idle connections: {e}")
        });
    }

    assert!(
        end_server_connections(&db).await >= 1,
        "no connection to end"
    );
    let mut failures = 0;
    while let Err(err) = store.ping().await {
        assert!(
            matches!(&err, StoreError::Database(_)),
            "a broken connection is a database error: {err:?}"
        );
        failures += 1;
        // The test's store has 5 request connections: each fails once at most.
        assert!(
            failures <= 5,
            "still failing after {failures} queries: {err}"
        );
    }
}
