//! Every endpoint through `tower::ServiceExt::oneshot`, on every backend.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::http::StatusCode;
use presence::serde_json::{Value, json};
use presence::{Access, ChannelConfig, Channels, PresenceKey, Topic};
use presence_axum::Config;
use support::{App, Backend, Members, json};

fn config() -> Config {
    Config {
        // Changes arrive as they come unless a test merges them.
        coalesce: Duration::ZERO,
        ..Config::default()
    }
}

async fn app(backend: Backend) -> Option<App> {
    Some(App::new(backend.open().await?, config()))
}

async fn present(app: &App, topic: &str) -> Vec<String> {
    let topic = Topic::new(topic).unwrap();
    app.store
        .members(&topic)
        .await
        .unwrap()
        .into_iter()
        .flat_map(|m| {
            m.connections
                .into_iter()
                .map(move |c| format!("{}/{}", m.member, c.connection))
        })
        .collect()
}

async fn bad_input_is_a_400_naming_the_field_and_changes_nothing(backend: Backend) {
    let Some(app) = app(backend).await else {
        return;
    };
    // With nobody present, a refused request must not enter anyone...
    refuse_every_bad_request(&app).await;
    assert!(
        present(&app, "room/1").await.is_empty(),
        "a refused request entered nobody"
    );
    assert!(present(&app, "room/2").await.is_empty());
    // ...and with bob present, it must not leave him nor change his meta.
    let (status, _, _) = app
        .update(
            Some("bob"),
            json!({ "client_id": "tab", "present": ["room/1"], "meta": { "room/1": { "v": 1 } } }),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    refuse_every_bad_request(&app).await;
    assert_eq!(present(&app, "room/1").await, ["bob/tab"], "nobody left");
    let topic = Topic::new("room/1").unwrap();
    let bob = app.store.members(&topic).await.unwrap().remove(0);
    assert_eq!(
        bob.connections[0].meta.to_value(),
        json!({ "v": 1 }),
        "no meta changed"
    );
    // A valid request after all of them still works: nothing was half-done.
    let (status, _, answer) = app
        .update(
            Some("bob"),
            json!({ "client_id": "tab", "present": ["room/1"] }),
        )
        .await;
    assert_eq!(
        (status, json(&answer)),
        (StatusCode::OK, json!({ "room/1": true }))
    );
}

/// Every kind of bad request to `/update`, `/state`, `/events` and
/// `/leave` (as bob, client `tab`, about `room/1`): each answers `400`
/// naming the field.
async fn refuse_every_bad_request(app: &App) {
    let long = "x".repeat(256);
    let deep = (0..70).fold(json!(1), |inner, _| json!({ "a": inner }));
    let cases: Vec<(Value, &str)> = vec![
        (json!({ "present": ["room/1"] }), "client_id"),
        (
            json!({ "client_id": "", "present": ["room/1"] }),
            "client_id",
        ),
        (
            json!({ "client_id": long, "present": ["room/1"] }),
            "client_id",
        ),
        (
            json!({ "client_id": 5, "present": ["room/1"] }),
            "client_id",
        ),
        (
            json!({ "client_id": "tab", "present": "room/1" }),
            "present",
        ),
        (
            json!({ "client_id": "tab", "present": ["room/1", ""] }),
            "present",
        ),
        (
            json!({ "client_id": "tab", "present": ["room/1", "a\u{0}b"] }),
            "present",
        ),
        (
            json!({ "client_id": "tab", "present": ["room/1"], "leave": [7] }),
            "leave",
        ),
        (
            json!({ "client_id": "tab", "present": ["room/1"], "leave": ["room/1"] }),
            "leave",
        ),
        (
            json!({ "client_id": "tab", "present": ["room/1"], "meta": { "room/2": {} } }),
            "meta",
        ),
        (
            json!({ "client_id": "tab", "present": ["room/1"], "meta": { "room/1": [1] } }),
            "meta",
        ),
        (
            json!({ "client_id": "tab", "present": ["room/1"], "meta": { "room/1": { "x": "y".repeat(5000) } } }),
            "meta",
        ),
        (
            json!({ "client_id": "tab", "present": ["room/1"], "meta": { "room/1": deep } }),
            "meta",
        ),
        (
            json!({ "client_id": "tab", "present": ["room/1"], "extra": 1 }),
            "extra",
        ),
        (json!(["room/1"]), "body"),
    ];
    for (body, field) in cases {
        let (status, _, answer) = app.update(Some("bob"), body.clone()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        let answer = json(&answer);
        assert_eq!(answer["field"], field, "{body}: {answer}");
        assert!(answer["error"].as_str().is_some_and(|e| !e.is_empty()));
    }
    let (status, _, answer) = app
        .post(
            "/presence/update",
            Some("bob"),
            "application/json",
            "{not json",
        )
        .await;
    assert_eq!(
        (status, json(&answer)["field"].clone()),
        (StatusCode::BAD_REQUEST, json!("body"))
    );
    let (status, _, answer) = app
        .post(
            "/presence/update",
            Some("bob"),
            "text/plain",
            r#"{"client_id":"tab","present":["room/1"]}"#,
        )
        .await;
    assert_eq!(
        (status, json(&answer)["field"].clone()),
        (StatusCode::BAD_REQUEST, json!("content-type"))
    );
    let big = format!(
        r#"{{"client_id":"tab","present":["room/1"],"pad":"{}"}}"#,
        "p".repeat(300_000)
    );
    let (status, _, answer) = app
        .post("/presence/update", Some("bob"), "application/json", big)
        .await;
    assert_eq!(
        (status, json(&answer)["field"].clone()),
        (StatusCode::PAYLOAD_TOO_LARGE, json!("body"))
    );

    for (query, field) in [
        ("", "channel"),
        ("channel=", "channel"),
        ("channels=room/1", "channels"),
        ("channel=room/1&channel=a%00b", "channel"),
    ] {
        for endpoint in ["state", "events"] {
            let (status, answer) = app
                .get(&format!("/presence/{endpoint}?{query}"), Some("bob"))
                .await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{endpoint}?{query}");
            assert_eq!(json(&answer)["field"], field, "{endpoint}?{query}");
        }
    }
    for (body, field) in [
        ("leave=room/1", "client_id"),
        ("client_id=&leave=room/1", "client_id"),
        ("client_id=tab&leave=", "leave"),
        ("client_id=tab&what=1", "what"),
    ] {
        let (status, _, answer) = app
            .post(
                "/presence/leave",
                Some("bob"),
                "application/x-www-form-urlencoded",
                body,
            )
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(json(&answer)["field"], field, "{body}");
    }
}

async fn fifty_one_channels_are_refused(backend: Backend) {
    let Some(app) = app(backend).await else {
        return;
    };
    let names: Vec<String> = (0..51).map(|i| format!("room/{i}")).collect();
    // Bob is in room/0, so a refused leave of 51 channels would show.
    let (status, _, _) = app
        .update(
            Some("bob"),
            json!({ "client_id": "tab", "present": ["room/0"] }),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _, answer) = app
        .update(Some("bob"), json!({ "client_id": "tab", "present": names }))
        .await;
    assert_eq!(
        (status, json(&answer)["field"].clone()),
        (StatusCode::BAD_REQUEST, json!("present"))
    );
    let (status, _, answer) = app
        .update(Some("bob"), json!({ "client_id": "tab", "leave": names }))
        .await;
    assert_eq!(
        (status, json(&answer)["field"].clone()),
        (StatusCode::BAD_REQUEST, json!("leave"))
    );
    let query: Vec<String> = names.iter().map(|n| format!("channel={n}")).collect();
    let query = query.join("&");
    for endpoint in ["state", "events"] {
        let (status, answer) = app
            .get(&format!("/presence/{endpoint}?{query}"), None)
            .await;
        assert_eq!(
            (status, json(&answer)["field"].clone()),
            (StatusCode::BAD_REQUEST, json!("channel"))
        );
    }
    let form: Vec<String> = names.iter().map(|n| format!("leave={n}")).collect();
    let (status, _, _) = app
        .post(
            "/presence/leave",
            Some("bob"),
            "application/x-www-form-urlencoded",
            format!("client_id=tab&{}", form.join("&")),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(present(&app, "room/0").await, ["bob/tab"], "nobody left");
    assert!(present(&app, "room/50").await.is_empty(), "nobody entered");
    // Fifty are fine.
    let (status, _, answer) = app
        .update(
            Some("bob"),
            json!({ "client_id": "tab", "present": names[..50] }),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(json(&answer).as_object().unwrap().len(), 50);
}

async fn update_enters_heartbeats_sets_meta_and_leaves(backend: Backend) {
    let Some(app) = app(backend).await else {
        return;
    };
    let (status, headers, answer) = app
        .update(
            Some("bob"),
            json!({ "client_id": "tab-1", "present": ["room/1", "stage/1", "nowhere/1", "small/1"], "meta": { "room/1": { "typing": false } } }),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        json(&answer),
        json!({ "room/1": true, "stage/1": false, "nowhere/1": false, "small/1": true })
    );
    assert_eq!(headers["x-presence-heartbeat-ms"], "30000");
    assert_eq!(present(&app, "room/1").await, ["bob/tab-1"]);
    assert!(
        present(&app, "stage/1").await.is_empty(),
        "bob may view but not enter the stage"
    );

    // A heartbeat without meta keeps it; with meta, sets it.
    let key = PresenceKey::new("room/1", "bob", "tab-1").unwrap();
    app.update(
        Some("bob"),
        json!({ "client_id": "tab-1", "present": ["room/1"] }),
    )
    .await;
    let meta = |app: &App| {
        let key = key.clone();
        let store = app.store.clone();
        async move {
            store
                .member(&key.topic, &key.member)
                .await
                .unwrap()
                .unwrap()
                .connections[0]
                .meta
                .to_value()
        }
    };
    assert_eq!(meta(&app).await, json!({ "typing": false }));
    app.update(Some("bob"), json!({ "client_id": "tab-1", "present": ["room/1"], "meta": { "room/1": { "typing": true } } }))
        .await;
    assert_eq!(meta(&app).await, json!({ "typing": true }));

    // A full room answers false, the same as a missing one.
    for user in ["carol", "dave"] {
        let (_, _, answer) = app
            .update(
                Some(user),
                json!({ "client_id": "t", "present": ["small/1"] }),
            )
            .await;
        let expected = user == "carol";
        assert_eq!(json(&answer), json!({ "small/1": expected }), "{user}");
    }

    // Leaving: through /update, and through a beacon.
    let (_, _, answer) = app
        .update(
            Some("bob"),
            json!({ "client_id": "tab-1", "leave": ["room/1", "nowhere/2"] }),
        )
        .await;
    assert_eq!(
        json(&answer),
        json!({ "room/1": false, "nowhere/2": false })
    );
    assert!(present(&app, "room/1").await.is_empty());
    app.update(
        Some("bob"),
        json!({ "client_id": "tab-2", "present": ["room/1", "room/2"] }),
    )
    .await;
    let (status, _, answer) = app
        .post(
            "/presence/leave",
            Some("bob"),
            "text/plain;charset=UTF-8",
            "client_id=tab-2&leave=room/1&leave=room/2",
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(json(&answer), json!({ "room/1": false, "room/2": false }));
    assert!(present(&app, "room/1").await.is_empty() && present(&app, "room/2").await.is_empty());
    // Another member's beacon cannot remove bob.
    app.update(
        Some("bob"),
        json!({ "client_id": "tab-3", "present": ["room/1"] }),
    )
    .await;
    app.post(
        "/presence/leave",
        Some("eve"),
        "application/x-www-form-urlencoded",
        "client_id=tab-3&leave=room/1",
    )
    .await;
    assert_eq!(present(&app, "room/1").await, ["bob/tab-3"]);
}

async fn identity_is_needed_to_change_presence(backend: Backend) {
    let Some(app) = app(backend).await else {
        return;
    };
    let (status, _, answer) = app
        .update(None, json!({ "client_id": "tab", "present": ["room/1"] }))
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(json(&answer)["error"].is_string());
    let (status, _, _) = app
        .post(
            "/presence/leave",
            None,
            "application/x-www-form-urlencoded",
            "client_id=tab&leave=room/1",
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    // An anonymous viewer sees public channels only.
    app.update(
        Some("alice"),
        json!({ "client_id": "t", "present": ["room/1", "staff/1"] }),
    )
    .await;
    let (status, answer) = app
        .get("/presence/state?channel=room/1&channel=staff/1", None)
        .await;
    assert_eq!(status, StatusCode::OK);
    let answer = json(&answer);
    assert_eq!(answer["room/1"]["counts"]["members"], 1);
    assert_eq!(answer["staff/1"], Value::Null);
}

async fn cross_site_posts_are_refused(backend: Backend) {
    let Some(app) = app(backend).await else {
        return;
    };
    for (name, value) in [
        ("sec-fetch-site", "cross-site"),
        ("origin", "https://evil.example"),
    ] {
        for (path, content_type, body) in [
            (
                "/presence/update",
                "application/json",
                r#"{"client_id":"t","present":["room/1"]}"#,
            ),
            (
                "/presence/leave",
                "application/x-www-form-urlencoded",
                "client_id=t&leave=room/1",
            ),
        ] {
            let request = axum::http::Request::post(path)
                .header("x-user", "bob")
                .header("host", "app.example")
                .header("content-type", content_type)
                .header(name, value)
                .body(axum::body::Body::from(body))
                .unwrap();
            let (status, _, _) = app.send(request).await;
            assert_eq!(status, StatusCode::FORBIDDEN, "{path} with {name}: {value}");
        }
    }
    let request = axum::http::Request::post("/presence/update")
        .header("x-user", "bob")
        .header("host", "app.example")
        .header("origin", "https://app.example")
        .header("sec-fetch-site", "same-origin")
        .header("content-type", "application/json")
        .body(axum::body::Body::from(
            r#"{"client_id":"t","present":["room/1"]}"#,
        ))
        .unwrap();
    assert_eq!(app.send(request).await.0, StatusCode::OK);
    assert!(present(&app, "room/1").await == ["bob/t"]);
}

async fn hidden_and_missing_channels_answer_byte_for_byte_the_same(backend: Backend) {
    let Some(app) = app(backend).await else {
        return;
    };
    // Alice is in her staff room; bob may not see it.
    app.update(
        Some("alice"),
        json!({ "client_id": "t", "present": ["staff/1"] }),
    )
    .await;
    let (_, hidden) = app
        .get("/presence/state?channel=staff/1", Some("bob"))
        .await;
    let (_, missing) = app
        .get("/presence/state?channel=staff/2x", Some("bob"))
        .await;
    let rename =
        |bytes: &[u8], from: &str, to: &str| String::from_utf8_lossy(bytes).replace(from, to);
    assert_eq!(
        rename(&hidden, "staff/1", "C"),
        rename(&missing, "staff/2x", "C")
    );
    assert_eq!(json(&hidden), json!({ "staff/1": null }));
    let (_, missing) = app
        .get("/presence/state?channel=nowhere/1", Some("bob"))
        .await;
    assert_eq!(
        rename(&hidden, "staff/1", "C"),
        rename(&missing, "nowhere/1", "C")
    );

    let (s1, h1, hidden) = app
        .update(
            Some("bob"),
            json!({ "client_id": "t", "present": ["staff/1"] }),
        )
        .await;
    let (s2, h2, missing) = app
        .update(
            Some("bob"),
            json!({ "client_id": "t", "present": ["nowhere/1"] }),
        )
        .await;
    assert_eq!(
        (s1, rename(&hidden, "staff/1", "C")),
        (s2, rename(&missing, "nowhere/1", "C"))
    );
    assert_eq!(h1.len(), h2.len());
    let (_, _, hidden) = app
        .update(
            Some("bob"),
            json!({ "client_id": "t", "leave": ["staff/1"] }),
        )
        .await;
    let (_, _, missing) = app
        .update(
            Some("bob"),
            json!({ "client_id": "t", "leave": ["nowhere/1"] }),
        )
        .await;
    assert_eq!(
        rename(&hidden, "staff/1", "C"),
        rename(&missing, "nowhere/1", "C")
    );
    assert_eq!(
        present(&app, "staff/1").await,
        ["alice/t"],
        "bob's leave touched nothing"
    );

    let mut hidden = app.events("channel=staff/1", Some("bob"), None).await;
    let mut missing = app.events("channel=nowhere/1", Some("bob"), None).await;
    let (h, m) = (hidden.next().await.unwrap(), missing.next().await.unwrap());
    assert_eq!((h.event.as_str(), h.id.clone()), ("state", None));
    assert_eq!(h.data, json!({ "channel": "staff/1", "missing": true }));
    assert_eq!(
        rename(&hidden.received, "staff/1", "C"),
        rename(&missing.received, "nowhere/1", "C")
    );
    assert_eq!(m.data["missing"], true);
}

async fn the_rate_limit_answers_429_with_a_wait(backend: Backend) {
    let Some(app) = app(backend).await else {
        return;
    };
    for i in 0..20 {
        let (status, _, _) = app
            .update(
                Some("bob"),
                json!({ "client_id": "tab", "present": ["room/1"] }),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "update {i}");
    }
    let (status, headers, answer) = app
        .update(
            Some("bob"),
            json!({ "client_id": "tab", "present": ["room/2"] }),
        )
        .await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    let wait: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=10).contains(&wait), "retry after {wait} s");
    assert_eq!(json(&answer)["wait_seconds"], wait);
    assert!(
        present(&app, "room/2").await.is_empty(),
        "a refused update changed nothing"
    );
    // Another client of the same member, and another member, have their own.
    let (status, _, _) = app
        .update(
            Some("bob"),
            json!({ "client_id": "tab-2", "present": ["room/2"] }),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _, _) = app
        .update(
            Some("carol"),
            json!({ "client_id": "tab", "present": ["room/2"] }),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
}

async fn the_connection_cap_holds_under_50_concurrent_requests(backend: Backend) {
    let Some(store) = backend.open().await else {
        return;
    };
    let app = std::sync::Arc::new(App::new(
        store,
        Config {
            max_connections_per_member: 3,
            ..config()
        },
    ));
    let requests = (0..50).map(|i| {
        let app = app.clone();
        tokio::spawn(async move {
            let (status, _, answer) = app
                .update(
                    Some("bob"),
                    json!({ "client_id": format!("tab-{i}"), "present": ["room/1"] }),
                )
                .await;
            assert_eq!(status, StatusCode::OK);
            json(&answer)["room/1"] == true
        })
    });
    let entered = futures::future::join_all(requests)
        .await
        .into_iter()
        .filter(|entered| *entered.as_ref().unwrap())
        .count();
    assert_eq!(entered, 3);
    assert_eq!(present(&app, "room/1").await.len(), 3);
    // A connection inside heartbeats as usual; another member has room.
    let first = present(&app, "room/1").await[0]
        .split('/')
        .nth(1)
        .unwrap()
        .to_owned();
    let (_, _, answer) = app
        .update(
            Some("bob"),
            json!({ "client_id": first, "present": ["room/1"] }),
        )
        .await;
    assert_eq!(json(&answer)["room/1"], true);
    let (_, _, answer) = app
        .update(
            Some("carol"),
            json!({ "client_id": "t", "present": ["room/1"] }),
        )
        .await;
    assert_eq!(json(&answer)["room/1"], true);
}

async fn state_lists_enriched_members_without_connection_ids(backend: Backend) {
    let Some(app) = app(backend).await else {
        return;
    };
    app.update(Some("alice"), json!({ "client_id": "secret-tab-a", "present": ["room/1"], "meta": { "room/1": { "typing": true } } }))
        .await;
    app.update(
        Some("alice"),
        json!({ "client_id": "secret-tab-b", "present": ["room/1"] }),
    )
    .await;
    app.update(
        Some("bob"),
        json!({ "client_id": "secret-tab-c", "present": ["room/1"] }),
    )
    .await;
    let (status, body) = app
        .get(
            "/presence/state?channel=room/1&channel=room/1",
            Some("carol"),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let text = String::from_utf8_lossy(&body).to_string();
    assert!(
        !text.contains("secret-tab"),
        "connection ids stay private: {text}"
    );
    let answer = json(&body);
    let room = &answer["room/1"];
    assert_eq!(room["counts"], json!({ "members": 2, "connections": 3 }));
    assert_eq!(room["count_only"], false);
    assert_eq!(room["last_id"], Value::Null, "no stream is open");
    let alice = &room["members"][0];
    assert_eq!(alice["id"], "alice");
    assert_eq!(alice["profile"], json!({ "name": "ALICE" }));
    assert_eq!(alice["connections"].as_array().unwrap().len(), 2);
    assert!(
        alice["connections"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["meta"]["typing"] == true)
    );
}

async fn count_only_responses_and_streams_hold_no_member_id(backend: Backend) {
    let Some(app) = app(backend).await else {
        return;
    };
    let mut stream = app.events("channel=lobby/1", Some("viewer"), None).await;
    let first = stream.next().await.unwrap();
    assert_eq!(
        (first.event.as_str(), first.data["count_only"].clone()),
        ("state", json!(true))
    );
    for (user, tab) in [
        ("zelda-secret", "tab-q"),
        ("yannick-secret", "tab-r"),
        ("zelda-secret", "tab-s"),
    ] {
        app.update(
            Some(user),
            json!({ "client_id": tab, "present": ["lobby/1"] }),
        )
        .await;
    }
    let mut state = Members::default();
    state.apply(&first);
    stream
        .until(&mut state, |s| {
            s.counts == json!({ "members": 2, "connections": 3 })
        })
        .await;
    app.update(
        Some("yannick-secret"),
        json!({ "client_id": "tab-r", "leave": ["lobby/1"] }),
    )
    .await;
    stream.until(&mut state, |s| s.counts["members"] == 1).await;
    let (_, body) = app
        .get("/presence/state?channel=lobby/1", Some("viewer"))
        .await;
    assert_eq!(
        json(&body)["lobby/1"]["counts"],
        json!({ "members": 1, "connections": 2 })
    );
    // A late viewer's state too.
    let mut late = app.events("channel=lobby/1", None, None).await;
    late.next().await.unwrap();
    for bytes in [&stream.received[..], &late.received[..], &body[..]] {
        let text = String::from_utf8_lossy(bytes);
        for secret in ["zelda", "yannick", "tab-"] {
            assert!(!text.contains(secret), "{secret} in {text}");
        }
        assert!(!text.contains("\"members\":["), "no member list: {text}");
    }
}

async fn events_send_the_state_then_diffs(backend: Backend) {
    let Some(app) = app(backend).await else {
        return;
    };
    app.update(
        Some("alice"),
        json!({ "client_id": "a1", "present": ["room/1"] }),
    )
    .await;
    let mut stream = app.events("channel=room/1", Some("carol"), None).await;
    let first = stream.next().await.unwrap();
    assert_eq!(first.event, "state");
    assert_eq!(first.data["channel"], "room/1");
    assert_eq!(first.data["members"][0]["profile"]["name"], "ALICE");
    let first_id = first.id.clone().unwrap();
    assert_eq!(first.data["id"], first_id.as_str());
    let mut state = Members::default();
    state.apply(&first);

    app.update(
        Some("bob"),
        json!({ "client_id": "b1", "present": ["room/1"] }),
    )
    .await;
    let diff = stream.next().await.unwrap();
    assert_eq!(diff.event, "diff");
    assert_eq!(diff.data["joins"][0]["id"], "bob");
    assert_eq!(diff.data["joins"][0]["profile"]["name"], "BOB");
    assert_eq!(
        diff.data["counts"],
        json!({ "members": 2, "connections": 2 })
    );
    let (epoch, seq) = first_id.split_once('.').unwrap();
    assert_eq!(
        diff.id.as_deref(),
        Some(format!("{epoch}.{}", seq.parse::<u64>().unwrap() + 1).as_str())
    );
    state.apply(&diff);

    // Typing is a meta change: a diff with bob's whole view.
    app.update(Some("bob"), json!({ "client_id": "b1", "present": ["room/1"], "meta": { "room/1": { "typing": true } } }))
        .await;
    stream
        .until(&mut state, |s| {
            s.members
                .get("bob")
                .is_some_and(|b| b["connections"][0]["meta"]["typing"] == true)
        })
        .await;
    app.update(
        Some("alice"),
        json!({ "client_id": "a1", "leave": ["room/1"] }),
    )
    .await;
    stream.until(&mut state, |s| s.ids() == ["bob"]).await;
    // While /events is open, /state answers from the stream's state, with its id.
    let (_, body) = app
        .get("/presence/state?channel=room/1", Some("carol"))
        .await;
    let answer = json(&body);
    assert_eq!(answer["room/1"]["last_id"], json!(state.last_id));
    assert_eq!(answer["room/1"]["members"][0]["id"], "bob");

    // Several channels in one stream: each its own state, one id per channel.
    let mut both = app
        .events(
            "channel=room/1&channel=nowhere/1&channel=lobby/1",
            Some("carol"),
            None,
        )
        .await;
    let mut seen = Vec::new();
    for _ in 0..3 {
        let event = both.next().await.unwrap();
        seen.push(event.data["channel"].as_str().unwrap().to_owned());
        if let Some(id) = &event.id {
            assert_eq!(id.split(',').count(), 3, "{id}");
        }
    }
    seen.sort();
    assert_eq!(seen, ["lobby/1", "nowhere/1", "room/1"]);
}

async fn last_event_id_continues_or_resyncs(backend: Backend) {
    let Some(app) = app(backend).await else {
        return;
    };
    let mut first = app.events("channel=room/1", Some("carol"), None).await;
    let state = first.next().await.unwrap();
    app.update(
        Some("alice"),
        json!({ "client_id": "a", "present": ["room/1"] }),
    )
    .await;
    let joined = first.next().await.unwrap();
    let left_at = joined.id.clone().unwrap();
    // While carol is away, bob joins and alice leaves.
    drop(first);
    app.update(
        Some("bob"),
        json!({ "client_id": "b", "present": ["room/1"] }),
    )
    .await;
    app.update(
        Some("alice"),
        json!({ "client_id": "a", "leave": ["room/1"] }),
    )
    .await;
    // A viewer keeps the feed open meanwhile, so the diffs are numbered.
    let mut keeper = app.events("channel=room/1", Some("dan"), None).await;
    let mut kept = Members::default();
    kept.apply(&keeper.next().await.unwrap());
    keeper.until(&mut kept, |s| s.ids() == ["bob"]).await;

    // Continuing from her last id: only the diffs she missed, no state.
    let mut back = app
        .events("channel=room/1", Some("carol"), Some(&left_at))
        .await;
    let mut members = Members::default();
    members.apply(&state);
    members.apply(&joined);
    let diffs = back.until(&mut members, |s| s.ids() == ["bob"]).await;
    assert!(diffs >= 1);
    assert!(!String::from_utf8_lossy(&back.received).contains("event: state"));

    // An id from another epoch, a bogus one, or one from the future: a state.
    for stale in [
        "zzzz.3",
        "garbage",
        &format!("{}.999999", left_at.split('.').next().unwrap()),
    ] {
        let mut again = app
            .events("channel=room/1", Some("carol"), Some(stale))
            .await;
        let event = again.next().await.unwrap();
        assert_eq!(event.event, "state", "after {stale}");
        assert_eq!(event.data["members"][0]["id"], "bob");
    }
    // The query parameter does what the header does.
    let mut by_query = app
        .events(
            &format!(
                "channel=room/1&last_event_id={}",
                kept.last_id.clone().unwrap()
            ),
            Some("carol"),
            None,
        )
        .await;
    assert!(
        by_query
            .next_within(Duration::from_millis(300))
            .await
            .is_none(),
        "nothing new to send"
    );
}

async fn a_backend_failure_is_a_503(backend: Backend) {
    let Some((store, breaker)) = backend.open_breakable().await else {
        return;
    };
    let app = App::new(store, config());
    app.update(
        Some("bob"),
        json!({ "client_id": "t", "present": ["room/1"] }),
    )
    .await;
    breaker.break_store().await;
    let (status, _, answer) = app
        .update(
            Some("bob"),
            json!({ "client_id": "t", "present": ["room/1"] }),
        )
        .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    let text = String::from_utf8_lossy(&answer);
    assert!(
        !text.contains("closed") && !text.contains("schema"),
        "nothing about the store leaks: {text}"
    );
    assert!(json(&answer)["error"].is_string());
    let (status, _) = app.get("/presence/state?channel=room/1", None).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    let (status, _) = app.get("/presence/events?channel=room/2", None).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
}

/// Keep-alive comments flow on an idle stream, and at each one the
/// viewer's right to see its channels is checked again: a viewer the app
/// stopped letting see a channel gets the same "missing" state a channel
/// that does not exist gives, and nothing of it after.
async fn keep_alives_flow_and_recheck_who_may_see(backend: Backend) {
    let Some(store) = backend.open().await else {
        return;
    };
    let open = Arc::new(AtomicBool::new(true));
    let resolver_open = open.clone();
    let channels = Channels::new(store)
        .cache_for(Duration::from_millis(1))
        .channel("secret/", move |_topic| {
            let open = resolver_open.load(Ordering::SeqCst);
            async move {
                Some(if open {
                    ChannelConfig::public()
                } else {
                    ChannelConfig {
                        view: Access::only(["alice"]).ok()?,
                        enter: Access::only(["alice"]).ok()?,
                        ..ChannelConfig::public()
                    }
                })
            }
        });
    let app = App::with_channels(
        channels,
        Config {
            keep_alive: Duration::from_millis(100),
            ..config()
        },
    );
    let mut viewer = app.events("channel=secret/1", Some("carol"), None).await;
    let state = viewer.next().await.unwrap();
    assert_eq!(state.event, "state");
    assert!(
        state.data["missing"].is_null(),
        "carol sees it: {:?}",
        state.data
    );
    assert!(
        viewer
            .next_within(Duration::from_millis(350))
            .await
            .is_none(),
        "no event on an idle channel"
    );
    let comments = String::from_utf8_lossy(&viewer.received)
        .matches(": keep-alive\n\n")
        .count();
    assert!(comments >= 1, "keep-alive comments on an idle stream");

    open.store(false, Ordering::SeqCst);
    let revoked = viewer.next().await.expect("the stream goes on");
    assert_eq!(
        (revoked.event.as_str(), revoked.data.clone()),
        ("state", json!({ "channel": "secret/1", "missing": true })),
        "a revoked channel reads as a missing one"
    );
    // Nothing of the channel reaches carol after that.
    let (status, _, _) = app
        .update(
            Some("alice"),
            json!({ "client_id": "tab", "present": ["secret/1"] }),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        viewer
            .next_within(Duration::from_millis(350))
            .await
            .is_none(),
        "alice's join is not sent to carol"
    );
    assert!(!String::from_utf8_lossy(&viewer.received).contains("alice"));
}

on_every_backend!(
    keep_alives_flow_and_recheck_who_may_see,
    bad_input_is_a_400_naming_the_field_and_changes_nothing,
    fifty_one_channels_are_refused,
    update_enters_heartbeats_sets_meta_and_leaves,
    identity_is_needed_to_change_presence,
    cross_site_posts_are_refused,
    hidden_and_missing_channels_answer_byte_for_byte_the_same,
    the_rate_limit_answers_429_with_a_wait,
    the_connection_cap_holds_under_50_concurrent_requests,
    state_lists_enriched_members_without_connection_ids,
    count_only_responses_and_streams_hold_no_member_id,
    events_send_the_state_then_diffs,
    last_event_id_continues_or_resyncs,
    a_backend_failure_is_a_503,
);
