//! Small end-to-end runs against an in-process server. Correctness only: nothing here asserts
//! on a latency or throughput number.

use std::net::Ipv4Addr;
use std::time::Duration;

use confab_server::{Config, Server};

use crate::connect::SourcePlan;
use crate::idle::{IdleArgs, run_idle};
use crate::pairs::{LoadArgs, PaceArgs};
use crate::target::{SeededAccount, Target, TargetArgs};

/// A server with `users` seeded accounts and limits high enough not to get in the way.
async fn server(users: usize) -> (Server, Target, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: dir.path().to_owned(),
        ..Config::default()
    };
    config.gateway.send_rate_per_sec = 1e6;
    config.gateway.send_burst = 1_000_000;
    config.gateway.frame_rate_per_sec = 1e6;
    config.gateway.frame_burst = 1_000_000;
    // The push bench's receiver is on 127.0.0.1, over plain http.
    config.push.allow_private = true;
    // Seed first: the store is opened by one owner at a time.
    let seeded = confab_server::admin::seed(&config, "e2e", users, "e2e-password", |_| {})
        .await
        .unwrap();
    let accounts: Vec<SeededAccount> =
        serde_json::from_value(serde_json::to_value(&seeded).unwrap()).unwrap();
    let server = Server::start(config).await.unwrap();
    let target = Target::in_process(server.addr, accounts);
    (server, target, dir)
}

/// 4 users, 200 msgs/s for 1 s, acking every 200 ms, on two workers.
fn four_users_for_a_second() -> crate::pairs::PairsConfig {
    let load = LoadArgs {
        users: 4,
        pace: PaceArgs {
            duration: 1.0,
            body: 64,
            grace: 3.0,
            workers: Some(2),
            ack_interval: 200,
            connect_concurrency: 4,
        },
    };
    load.config(200.0).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pairs_delivers_every_acked_message() {
    let (server, target, _dir) = server(4).await;
    let cfg = four_users_for_a_second();
    let r = crate::pairs::run_pairs(&target, &cfg, false).await.unwrap();
    assert_eq!(r.scheduled, 200);
    assert_eq!(r.sent, 200, "{r:#?}");
    assert_eq!(r.acked, 200, "{r:#?}");
    assert_eq!(r.delivered, r.sent, "{r:#?}");
    assert_eq!(r.undelivered, 0);
    assert_eq!(r.unacked, 0);
    assert_eq!(r.duplicates, 0);
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    assert_eq!(r.latency_ms.count, 200);

    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_on_reused_accounts_are_not_taken_for_retries() {
    let (server, target, _dir) = server(4).await;
    let load = LoadArgs {
        users: 4,
        pace: PaceArgs {
            duration: 0.25,
            body: 48,
            grace: 3.0,
            workers: Some(1),
            ack_interval: 0,
            connect_concurrency: 4,
        },
    };
    let cfg = load.config(200.0).unwrap();
    for _ in 0..2 {
        // Each run has its own client_ids, so the server stores every message anew; whatever
        // of the earlier run is replayed on connect is read before `synced` and ignored.
        let r = crate::pairs::run_pairs(&target, &cfg, false).await.unwrap();
        assert_eq!(r.sent, 50, "{r:#?}");
        assert_eq!(r.delivered, 50, "{r:#?}");
        assert_eq!(r.undelivered, 0);
        assert_eq!(r.foreign, 0);
        assert_eq!(r.duplicates, 0);
    }
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catchup_replays_every_stored_message() {
    let (server, target, _dir) = server(3).await;
    let r = crate::catchup::run_catchup(&target, 300, 2, 100, 50, false)
        .await
        .unwrap();
    assert_eq!(r.acked, 300, "{r:#?}");
    assert_eq!(r.delivered, 300, "{r:#?}");
    assert_eq!(r.missing, 0);
    assert_eq!(r.duplicates, 0);
    assert_eq!(r.foreign, 0);
    assert!(r.synced_ms >= r.welcome_ms);
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_sockets_connect_from_several_source_addresses() {
    let (server, target, _dir) = server(12).await;
    let args = IdleArgs {
        target: TargetArgs::default(),
        connections: 12,
        concurrency: 4,
        hold: 0.2,
        source_base: Ipv4Addr::new(127, 0, 0, 1),
        per_address: Some(5),
        per_process: None,
        timeout: 10.0,
        output: Default::default(),
    };
    let plan = SourcePlan {
        base: args.source_base,
        per_address: 5,
    };
    let r = run_idle(
        &target,
        &args,
        plan,
        1,
        Duration::from_millis(200),
        Duration::from_secs(10),
    )
    .await
    .unwrap();
    assert_eq!(r.connected, 12, "{r:#?}");
    assert_eq!(r.failed, 0);
    assert_eq!(r.dropped, 0);
    assert_eq!(r.source_addresses, 3);
    assert_eq!(r.source_range, "127.0.0.1-127.0.0.3");
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_notifies_every_subscribed_device() {
    // 2 senders, 40 msgs/s for 1 s to 20 recipients: 2 messages each, 500 ms apart, so that
    // even an unoptimised build's push server sends each before the next comes (no
    // coalescing).
    let args = crate::push::PushArgs {
        target: TargetArgs::default(),
        senders: 2,
        recipients: 20,
        rate: 40.0,
        pace: PaceArgs {
            duration: 1.0,
            body: 64,
            grace: 3.0,
            workers: Some(2),
            ack_interval: 200,
            connect_concurrency: 4,
        },
        push_wait: 20.0,
        decrypt_every: 100,
        no_baseline: false,
        output: Default::default(),
    };
    let cfg = crate::push::PushConfig::check(&args).unwrap();
    assert_eq!(
        cfg.decrypt_every, 1,
        "a small run decrypts every notification"
    );
    let (server, target, _dir) = server(cfg.users()).await;
    let r = crate::push::run_push(&target, &cfg, false).await.unwrap();
    assert_eq!(r.push.acked, 40, "{r:#?}");
    assert_eq!(r.push.unacked, 0);
    let n = r.push.notifications.as_ref().unwrap();
    assert!(n.complete, "{n:#?}");
    assert_eq!(n.expected, 40);
    assert_eq!(n.arrived, 40, "one notification per message: {n:#?}");
    assert_eq!((n.devices, n.devices_notified), (20, 20));
    assert_eq!((n.per_device_min, n.per_device_max), (2, 2));
    assert_eq!((n.extra, n.unknown, n.without_own), (0, 0, 0));
    assert_eq!((n.latency_ms.count, n.sample_latency_ms.count), (40, 40));
    assert_eq!(n.decrypted, 40);
    assert_eq!(n.genuine, 40, "{:?}", n.bad);
    assert_eq!(n.in_order, 40);
    assert_eq!(r.push.push_counters.sent, 40);
    assert_eq!(r.push.push_counters.dropped, 0);
    assert!(r.passed());
    let baseline = r.baseline.as_ref().unwrap();
    assert_eq!(baseline.acked, 40, "{baseline:#?}");
    let counted = &baseline.push_counters;
    assert!(counted.commits > 0, "the store committed");
    assert_eq!(
        (
            counted.sent,
            counted.coalesced,
            counted.failed,
            counted.dropped
        ),
        (0, 0, 0, 0),
        "no subscription, no push"
    );
    assert!(baseline.notifications.is_none());
    server.shutdown().await.unwrap();
}

/// A relay on a free loopback port, with `users` accounts.
async fn relay(users: usize) -> Target {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(crate::relay::Relay::new(users).serve(listener));
    Target::in_process(addr, crate::relay::accounts(users))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pairs_against_the_relay_delivers_every_message() {
    let target = relay(4).await;
    let cfg = four_users_for_a_second();
    let r = crate::pairs::run_pairs(&target, &cfg, false).await.unwrap();
    assert_eq!(r.sent, 200, "{r:#?}");
    assert_eq!(r.acked, 200, "{r:#?}");
    assert_eq!(r.delivered, 200, "{r:#?}");
    assert_eq!(r.duplicates, 0);
    assert!(r.errors.is_empty(), "{:?}", r.errors);
}

#[tokio::test]
async fn the_relay_refuses_an_unknown_token() {
    let target = relay(2).await;
    let err = crate::connect::connect_synced(target.ws_url(), "relay-3", None, 1024)
        .await
        .err()
        .expect("user 3 does not exist on a relay of 2");
    assert!(format!("{err:?}").contains("nauthorized"), "{err:?}");
    assert!(
        crate::connect::connect_synced(target.ws_url(), "relay-2", None, 1024)
            .await
            .is_ok()
    );
}
