//! The admin API on its Unix socket: entry CRUD, every kind of bad input (refused per item,
//! naming the field, nothing written), uniqueness, unknown IDs, join tokens and health.

mod common;

use common::*;
use sigil_proto::sigil::v1 as pb;
use tonic::Code;

fn valid(agent: &str) -> pb::Entry {
    entry(&format!("spiffe://{TD}/ok"), agent)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_entries_are_refused_per_item_and_nothing_is_written() {
    let srv = TestServer::start().await;
    let parent = format!("spiffe://{TD}/sigil/agent/join_token/t1");
    let base = || entry(&format!("spiffe://{TD}/web"), &parent);
    type Case = (&'static str, pb::Entry);
    let cases: Vec<Case> = vec![
        (
            "spiffe_id",
            pb::Entry {
                spiffe_id: "not a spiffe id".into(),
                ..base()
            },
        ),
        (
            "spiffe_id",
            pb::Entry {
                spiffe_id: String::new(),
                ..base()
            },
        ),
        (
            "spiffe_id",
            pb::Entry {
                spiffe_id: format!("spiffe://{TD}"),
                ..base()
            },
        ),
        (
            "spiffe_id",
            pb::Entry {
                spiffe_id: format!("spiffe://{TD}/a/../b"),
                ..base()
            },
        ),
        (
            "spiffe_id",
            pb::Entry {
                spiffe_id: "spiffe://other.org/web".into(),
                ..base()
            },
        ),
        (
            "spiffe_id",
            pb::Entry {
                spiffe_id: format!("spiffe://{TD}/sigil/server"),
                ..base()
            },
        ),
        (
            "spiffe_id",
            pb::Entry {
                spiffe_id: format!("spiffe://{TD}/sigil/agent/join_token/someone-else"),
                ..base()
            },
        ),
        (
            "parent_id",
            pb::Entry {
                parent_id: "https://example.org/agent".into(),
                ..base()
            },
        ),
        (
            "parent_id",
            pb::Entry {
                parent_id: String::new(),
                ..base()
            },
        ),
        (
            "parent_id",
            pb::Entry {
                parent_id: "spiffe://other.org/sigil/agent/x".into(),
                ..base()
            },
        ),
        (
            "selectors",
            pb::Entry {
                selectors: vec![],
                ..base()
            },
        ),
        (
            "selectors",
            pb::Entry {
                selectors: vec![selector("", "uid:1000")],
                ..base()
            },
        ),
        (
            "selectors",
            pb::Entry {
                selectors: vec![selector("unix", "uid:1000"), selector("unix", "")],
                ..base()
            },
        ),
        (
            "selectors",
            pb::Entry {
                selectors: vec![selector("un ix", "uid:1000")],
                ..base()
            },
        ),
        (
            "x509_svid_ttl",
            pb::Entry {
                x509_svid_ttl: -1,
                ..base()
            },
        ),
        (
            "x509_svid_ttl",
            pb::Entry {
                x509_svid_ttl: 10 * 365 * 24 * 3600,
                ..base()
            },
        ),
        (
            "jwt_svid_ttl",
            pb::Entry {
                jwt_svid_ttl: -300,
                ..base()
            },
        ),
        (
            "dns_names",
            pb::Entry {
                dns_names: vec!["ok.example.org".into(), "bad name!".into()],
                ..base()
            },
        ),
        (
            "dns_names",
            pb::Entry {
                dns_names: vec!["-leading.example.org".into()],
                ..base()
            },
        ),
        (
            "dns_names",
            pb::Entry {
                dns_names: vec![String::new()],
                ..base()
            },
        ),
        (
            "dns_names",
            pb::Entry {
                dns_names: vec!["a..b".into()],
                ..base()
            },
        ),
        (
            "federates_with",
            pb::Entry {
                federates_with: vec!["Not A Domain".into()],
                ..base()
            },
        ),
        (
            "federates_with",
            pb::Entry {
                federates_with: vec![TD.into()],
                ..base()
            },
        ),
        (
            "expires_at",
            pb::Entry {
                expires_at: -1,
                ..base()
            },
        ),
        (
            "hint",
            pb::Entry {
                hint: "h".repeat(2000),
                ..base()
            },
        ),
    ];
    let (fields, entries): (Vec<_>, Vec<_>) = cases.into_iter().unzip();
    let results = srv.try_create(entries).await;
    assert_eq!(results.len(), fields.len());
    for (r, field) in results.iter().zip(&fields) {
        assert!(r.entry.is_none(), "{field}: {r:?}");
        assert_item(r.code, &r.message, Code::InvalidArgument, field);
        assert!(
            r.message.starts_with(&format!("{field}:")),
            "message {:?} should start with the field {field:?}",
            r.message
        );
    }
    assert!(srv.list_entries().await.is_empty(), "nothing was written");
    let rev = srv
        .health()
        .check(pb::HealthCheckRequest {})
        .await
        .unwrap()
        .into_inner()
        .revision;

    // A bad item does not fail the good ones of the same batch.
    let results = srv
        .try_create(vec![
            pb::Entry {
                x509_svid_ttl: -5,
                ..base()
            },
            valid(&parent),
        ])
        .await;
    assert_item(
        results[0].code,
        &results[0].message,
        Code::InvalidArgument,
        "x509_svid_ttl",
    );
    assert_eq!(results[1].code, 0, "{}", results[1].message);
    let listed = srv.list_entries().await;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].spiffe_id, format!("spiffe://{TD}/ok"));
    assert!(listed[0].revision > rev);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_updates_are_refused_and_change_nothing() {
    let srv = TestServer::start().await;
    let parent = format!("spiffe://{TD}/sigil/agent/join_token/t1");
    let e = srv.create_entry(valid(&parent)).await;
    let update = |e: pb::Entry| {
        let mut entries = srv.entries();
        async move {
            entries
                .batch_update_entry(pb::BatchUpdateEntryRequest { entries: vec![e] })
                .await
                .unwrap()
                .into_inner()
                .results
                .remove(0)
        }
    };
    for (field, bad) in [
        (
            "selectors",
            pb::Entry {
                selectors: vec![selector("unix", "")],
                ..e.clone()
            },
        ),
        (
            "x509_svid_ttl",
            pb::Entry {
                x509_svid_ttl: -1,
                ..e.clone()
            },
        ),
        (
            "spiffe_id",
            pb::Entry {
                spiffe_id: "spiffe://other.org/x".into(),
                ..e.clone()
            },
        ),
        (
            "id",
            pb::Entry {
                id: String::new(),
                ..e.clone()
            },
        ),
    ] {
        let r = update(bad).await;
        assert_item(r.code, &r.message, Code::InvalidArgument, field);
    }
    let r = update(pb::Entry {
        id: "no-such-entry".into(),
        ..e.clone()
    })
    .await;
    assert_eq!(Code::from_i32(r.code), Code::NotFound, "{r:?}");

    let stored = srv
        .entries()
        .get_entry(pb::GetEntryRequest { id: e.id.clone() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(stored, e, "refused updates left the entry untouched");

    // A good update is applied and bumps the entry's revision.
    let r = update(pb::Entry {
        dns_names: vec!["new.example.org".into()],
        ..e.clone()
    })
    .await;
    assert_eq!(r.code, 0, "{}", r.message);
    let updated = r.entry.unwrap();
    assert_eq!(updated.dns_names, ["new.example.org"]);
    assert!(updated.revision > e.revision);
    assert_eq!(updated.created_at, e.created_at);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_entry_is_already_exists() {
    let srv = TestServer::start().await;
    let parent = format!("spiffe://{TD}/sigil/agent/join_token/t1");
    let first = pb::Entry {
        selectors: vec![selector("unix", "uid:1000"), selector("unix", "gid:50")],
        ..valid(&parent)
    };
    srv.create_entry(first.clone()).await;
    let results = srv
        .try_create(vec![pb::Entry {
            selectors: vec![selector("unix", "gid:50"), selector("unix", "uid:1000")],
            dns_names: vec!["other.example.org".into()],
            ..valid(&parent)
        }])
        .await;
    assert_eq!(
        Code::from_i32(results[0].code),
        Code::AlreadyExists,
        "{:?}",
        results[0]
    );
    assert!(results[0].entry.is_none());
    // Duplicated selectors collapse, so this is the same set again.
    let results = srv
        .try_create(vec![pb::Entry {
            selectors: vec![
                selector("unix", "gid:50"),
                selector("unix", "uid:1000"),
                selector("unix", "gid:50"),
            ],
            ..valid(&parent)
        }])
        .await;
    assert_eq!(Code::from_i32(results[0].code), Code::AlreadyExists);
    assert_eq!(srv.list_entries().await.len(), 1);

    // A different selector set, or another parent, is a different entry.
    srv.create_entry(pb::Entry {
        selectors: vec![selector("unix", "uid:1000")],
        ..valid(&parent)
    })
    .await;
    srv.create_entry(pb::Entry {
        selectors: vec![selector("unix", "uid:1000"), selector("unix", "gid:50")],
        ..valid(&format!("spiffe://{TD}/sigil/agent/join_token/t2"))
    })
    .await;
    assert_eq!(srv.list_entries().await.len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_ids_are_not_found() {
    let srv = TestServer::start().await;
    let err = srv
        .entries()
        .get_entry(pb::GetEntryRequest {
            id: "no-such-entry".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    let err = srv
        .entries()
        .get_entry(pb::GetEntryRequest { id: String::new() })
        .await
        .unwrap_err();
    assert_status(&err, Code::InvalidArgument, "id");

    let results = srv
        .entries()
        .batch_delete_entry(pb::BatchDeleteEntryRequest {
            ids: vec!["no-such-entry".into(), String::new()],
        })
        .await
        .unwrap()
        .into_inner()
        .results;
    assert_eq!(results[0].id, "no-such-entry");
    assert_eq!(
        Code::from_i32(results[0].code),
        Code::NotFound,
        "{results:?}"
    );
    assert_eq!(Code::from_i32(results[1].code), Code::InvalidArgument);

    let unknown = format!("spiffe://{TD}/sigil/agent/join_token/nobody");
    for call in ["get", "ban", "evict"] {
        let req = pb::GetAgentRequest {
            id: unknown.clone(),
        };
        let mut agents = srv.agents();
        let err = match call {
            "get" => agents.get_agent(req).await.map(|_| ()),
            "ban" => agents.ban_agent(req).await.map(|_| ()),
            _ => agents.evict_agent(req).await.map(|_| ()),
        }
        .unwrap_err();
        assert_eq!(err.code(), Code::NotFound, "{call}: {err:?}");
    }
    let err = srv
        .agents()
        .get_agent(pb::GetAgentRequest {
            id: "not-an-id".into(),
        })
        .await
        .unwrap_err();
    assert_status(&err, Code::InvalidArgument, "id");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entry_lifecycle_and_filters() {
    let srv = TestServer::start().await;
    let a = format!("spiffe://{TD}/sigil/agent/join_token/a");
    let b = format!("spiffe://{TD}/sigil/agent/join_token/b");
    let created = srv
        .create_entries(vec![
            pb::Entry {
                selectors: vec![selector("unix", "uid:1000"), selector("k8s", "ns:prod")],
                hint: "frontend".into(),
                federates_with: vec!["partner.org".into()],
                ..entry(&format!("spiffe://{TD}/web"), &a)
            },
            entry(&format!("spiffe://{TD}/db"), &a),
            entry(&format!("spiffe://{TD}/web"), &b),
        ])
        .await;
    for e in &created {
        assert!(!e.id.is_empty());
        assert!(e.revision > 0 && e.created_at > 0);
    }
    let got = srv
        .entries()
        .get_entry(pb::GetEntryRequest {
            id: created[0].id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got, created[0]);
    assert_eq!(got.federates_with, ["partner.org"]);

    let list = |req: pb::ListEntriesRequest| {
        let mut entries = srv.entries();
        async move {
            let mut ids: Vec<String> = entries
                .list_entries(req)
                .await
                .unwrap()
                .into_inner()
                .entries
                .into_iter()
                .map(|e| e.id)
                .collect();
            ids.sort();
            ids
        }
    };
    let sorted = |v: &[&pb::Entry]| {
        let mut ids: Vec<String> = v.iter().map(|e| e.id.clone()).collect();
        ids.sort();
        ids
    };
    assert_eq!(
        list(pb::ListEntriesRequest {
            by_parent_id: a.clone(),
            ..Default::default()
        })
        .await,
        sorted(&[&created[0], &created[1]])
    );
    assert_eq!(
        list(pb::ListEntriesRequest {
            by_spiffe_id: format!("spiffe://{TD}/web"),
            ..Default::default()
        })
        .await,
        sorted(&[&created[0], &created[2]])
    );
    assert_eq!(
        list(pb::ListEntriesRequest {
            by_selectors: vec![selector("k8s", "ns:prod")],
            ..Default::default()
        })
        .await,
        sorted(&[&created[0]])
    );
    let err = srv
        .entries()
        .list_entries(pb::ListEntriesRequest {
            by_spiffe_id: "garbage".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_status(&err, Code::InvalidArgument, "by_spiffe_id");
    let err = srv
        .entries()
        .list_entries(pb::ListEntriesRequest {
            by_selectors: vec![selector("", "x")],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_status(&err, Code::InvalidArgument, "by_selectors");

    // Pagination: pages of 2 cover all 3 entries once.
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let r = srv
            .entries()
            .list_entries(pb::ListEntriesRequest {
                page_size: 2,
                page_token: token,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert!(r.entries.len() <= 2);
        seen.extend(r.entries.into_iter().map(|e| e.id));
        if r.next_page_token.is_empty() {
            break;
        }
        token = r.next_page_token;
    }
    seen.sort();
    assert_eq!(seen, sorted(&created.iter().collect::<Vec<_>>()));

    let results = srv
        .entries()
        .batch_delete_entry(pb::BatchDeleteEntryRequest {
            ids: vec![created[1].id.clone()],
        })
        .await
        .unwrap()
        .into_inner()
        .results;
    assert_eq!(results[0].code, 0, "{}", results[0].message);
    let err = srv
        .entries()
        .get_entry(pb::GetEntryRequest {
            id: created[1].id.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    // Deleting twice: the second is NotFound.
    let results = srv
        .entries()
        .batch_delete_entry(pb::BatchDeleteEntryRequest {
            ids: vec![created[1].id.clone()],
        })
        .await
        .unwrap()
        .into_inner()
        .results;
    assert_eq!(Code::from_i32(results[0].code), Code::NotFound);
    assert_eq!(srv.list_entries().await.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_token_input_is_validated() {
    let srv = TestServer::start().await;
    let create = |ttl: i64, alias: &str, token: &str| {
        let req = pb::CreateJoinTokenRequest {
            ttl,
            agent_alias_spiffe_id: alias.into(),
            token: token.into(),
        };
        let mut tokens = srv.tokens();
        async move { tokens.create_join_token(req).await }
    };
    let err = create(-1, "", "").await.unwrap_err();
    assert_status(&err, Code::InvalidArgument, "ttl");
    let err = create(600, "", "bad token/../x").await.unwrap_err();
    assert_status(&err, Code::InvalidArgument, "token");
    let err = create(600, "spiffe://other.org/node", "")
        .await
        .unwrap_err();
    assert_status(&err, Code::InvalidArgument, "agent_alias_spiffe_id");
    let err = create(600, "node-without-scheme", "").await.unwrap_err();
    assert_status(&err, Code::InvalidArgument, "agent_alias_spiffe_id");
    let err = create(600, &format!("spiffe://{TD}/sigil/server"), "")
        .await
        .unwrap_err();
    assert_status(&err, Code::InvalidArgument, "agent_alias_spiffe_id");
    assert!(srv.list_entries().await.is_empty(), "no alias was written");

    let before = unix_now();
    let t = create(0, "", "").await.unwrap().into_inner();
    assert!(!t.value.is_empty());
    assert!(
        (t.expires_at - before - 600).abs() <= 2,
        "default TTL 600 s"
    );
    let t = create(60, "", "my-token_1").await.unwrap().into_inner();
    assert_eq!(t.value, "my-token_1");
    let err = create(60, "", "my-token_1").await.unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists, "{err:?}");
    assert!(
        !err.message().contains("my-token_1"),
        "tokens are not echoed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_agent_listing() {
    let srv = TestServer::start().await;
    let h = srv
        .health()
        .check(pb::HealthCheckRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(h.serving);
    assert_eq!(h.trust_domain, TD);

    let a = srv.attest().await;
    let b = srv.attest().await;
    let mut listed: Vec<String> = srv
        .agents()
        .list_agents(pb::ListAgentsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .agents
        .into_iter()
        .map(|a| a.id)
        .collect();
    listed.sort();
    let mut want = vec![a.id_str(), b.id_str()];
    want.sort();
    assert_eq!(listed, want);
    let h2 = srv
        .health()
        .check(pb::HealthCheckRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(
        h2.revision > h.revision,
        "attestations advance the revision"
    );
}
