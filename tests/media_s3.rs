//! Media in an S3-compatible bucket, shared by two instances on one database: uploaded through one, served and
//! sent upstream by the other, swept by either; a refused upload leaves neither an object nor an unfinished
//! multipart upload behind. The bucket is moto's S3 server (`pip install 'moto[server]'`, as `.ci/run` does);
//! without `moto_server` the test says SKIPPED.

#![allow(
    clippy::disallowed_methods,
    reason = "test and benchmark harnesses spawn their own fakes and clients; the server's tasks go through chatgate::tasks"
)]

mod common;

use std::time::Duration;

use base64::Engine;
use common::{Backend, ChildServer, TestDb, TestServer};
use serde_json::{Value, json};

/// Keys under `prefix` in the bucket, and the multipart uploads still open there.
async fn bucket_state(endpoint: &str, bucket: &str) -> (Vec<String>, usize) {
    let client = reqwest::Client::new();
    let listing = client
        .get(format!("{endpoint}/{bucket}?list-type=2"))
        .send()
        .await
        .expect("list")
        .text()
        .await
        .expect("xml");
    let keys = listing
        .split("<Key>")
        .skip(1)
        .filter_map(|k| k.split("</Key>").next())
        .map(str::to_string)
        .collect();
    let uploads = client
        .get(format!("{endpoint}/{bucket}?uploads"))
        .send()
        .await
        .expect("uploads")
        .text()
        .await
        .expect("xml");
    (keys, uploads.matches("<Upload>").count())
}

fn png() -> Vec<u8> {
    base64::engine::general_purpose::STANDARD
        .decode("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg==")
        .expect("png")
}

async fn upload(server: &TestServer, bytes: Vec<u8>) -> reqwest::Response {
    server
        .client
        .post(format!("{}/api/v1/media", server.url))
        .bearer_auth(server.token("alice"))
        .multipart(reqwest::multipart::Form::new().part(
            "file",
            reqwest::multipart::Part::bytes(bytes).file_name("photo.png"),
        ))
        .send()
        .await
        .expect("upload")
}

backend_tests!(two_instances_share_media_in_a_bucket);

async fn two_instances_share_media_in_a_bucket(backend: Backend) {
    if !ChildServer::installed("moto_server") {
        common::skipped(
            "S3 media tests: moto_server is not installed (pip install 'moto[server]')",
        );
        return;
    }
    let Some(db) = TestDb::new(backend).await else {
        return;
    };
    let s3 = ChildServer::start("moto_server", &["-H", "127.0.0.1", "-p", "{port}"], "/").await;
    let bucket = format!("chatgate-{}", uuid::Uuid::new_v4().simple());
    let created = reqwest::Client::new()
        .put(format!("{}/{bucket}", s3.url))
        .send()
        .await
        .expect("create bucket");
    assert!(created.status().is_success());
    let config = |db: &TestDb| {
        let toml = format!(
            "[database]\nurl = \"{}\"\n[auth]\njwt_secret = \"{}\"\n[providers.mock]\ndelay_ms = 0\n\
             [models.mock]\nprovider = \"mock\"\nmodel = \"mock-1\"\n[defaults]\nmodel = \"mock\"\n\
             [titles]\nenabled = false\n\
             [media]\nstorage = \"s3://{bucket}/uploads\"\nmax_image_bytes = 65536\n\
             storage_options = {{ aws_endpoint = \"{}\", aws_allow_http = \"true\", aws_region = \"us-east-1\", \
             aws_access_key_id = \"test\", aws_secret_access_key = \"test\" }}\n",
            db.url,
            common::SECRET,
            s3.url
        );
        chatgate::config::Config::from_toml(&toml).expect("config")
    };
    let shared = db.shared();
    let one = TestServer::start_with(config(&db), db).await;
    let two = TestServer::start_with(config(&shared), shared).await;

    // Uploaded through one instance, into the bucket.
    let response = upload(&one, png()).await;
    assert_eq!(response.status(), 201);
    let media: Value = response.json().await.expect("json");
    let id = media["id"].as_str().expect("id").to_string();
    let (keys, open) = bucket_state(&s3.url, &bucket).await;
    assert_eq!(keys, vec![format!("uploads/{id}.png")]);
    assert_eq!(open, 0);

    // Served, and sent upstream, by the other.
    let served = two
        .get(&format!("/api/v1/media/{id}"), "alice")
        .send()
        .await
        .expect("get");
    assert_eq!(served.status(), 200);
    assert_eq!(
        served.bytes().await.expect("bytes").as_ref(),
        png().as_slice()
    );
    let conversation = two.conversation("alice").await;
    let response = two
        .send_message(
            &conversation,
            "alice",
            json!({ "content": "what is it?", "message_type": "multimodal", "media_ids": [id] }),
        )
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.expect("json");
    assert!(
        body["assistant_message"]["content"]
            .as_str()
            .is_some_and(|c| c.contains("I see 1 image."))
    );

    // Refused mid-stream: no object, no unfinished multipart upload.
    let mut big = png();
    big.resize(200_000, 0);
    let response = upload(&two, big).await;
    assert_eq!(response.status(), 413);
    let (keys, open) = bucket_state(&s3.url, &bucket).await;
    assert_eq!(keys.len(), 1);
    assert_eq!(open, 0, "the refused upload was aborted");

    // The conversation goes through one instance; the other's sweep removes the object.
    let response = one
        .delete(&format!("/api/v1/conversations/{conversation}"), "alice")
        .send()
        .await
        .expect("delete");
    assert_eq!(response.status(), 204);
    let swept = two
        .state
        .media
        .sweep(&*two.state.store, Duration::ZERO)
        .await
        .expect("sweep");
    assert_eq!(swept, 1);
    let (keys, _) = bucket_state(&s3.url, &bucket).await;
    assert!(keys.is_empty(), "{keys:?}");
}
