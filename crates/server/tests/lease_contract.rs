//! The node-id lease (`confab_server::sequencer::lease::NodeLease`), which lives in Redis: these tests run
//! when `CONFAB_TEST_REDIS` names a Redis server (e.g. `redis://127.0.0.1:6379`) and say they
//! are skipped otherwise. Every test uses a fresh cluster name and deletes its keys at the end.

use std::collections::HashMap;
use std::time::Duration;

use confab_server::sequencer::lease::NodeLease;
use confab_testkit::redis::delete_keys;
use confab_testkit::{engines, names};

const LEASE_TTL: Duration = Duration::from_millis(300);

async fn lease(url: &str, cluster: &str) -> NodeLease {
    NodeLease::acquire(url, cluster, LEASE_TTL)
        .await
        .expect("lease")
}

#[tokio::test]
async fn two_leases_get_different_ids_and_keep_them() {
    let Some(url) = engines::redis() else {
        return;
    };
    let cluster = names::fresh("test-");
    let (a, b) = (lease(&url, &cluster).await, lease(&url, &cluster).await);
    assert_ne!(a.node_id(), b.node_id());
    // Renewal keeps them well past the ttl.
    tokio::time::sleep(LEASE_TTL * 3).await;
    assert!(!a.lost().is_cancelled() && !b.lost().is_cancelled());
    let c = lease(&url, &cluster).await;
    let ids: HashMap<u16, ()> = [a.node_id(), b.node_id(), c.node_id()]
        .into_iter()
        .map(|id| (id, ()))
        .collect();
    assert_eq!(ids.len(), 3);
    for l in [a, b, c] {
        l.release().await.unwrap();
    }
    delete_keys(&url, &cluster).await;
}

#[tokio::test]
async fn release_frees_the_id_and_a_dropped_lease_expires() {
    let Some(url) = engines::redis() else {
        return;
    };
    let cluster = names::fresh("test-");
    let a = lease(&url, &cluster).await;
    let b = lease(&url, &cluster).await;
    let freed = a.node_id();
    a.release().await.unwrap();
    let c = lease(&url, &cluster).await;
    assert_eq!(c.node_id(), freed, "the lowest free id again");
    let dropped = b.node_id();
    drop(b);
    tokio::time::sleep(LEASE_TTL * 2).await;
    let d = lease(&url, &cluster).await;
    assert_eq!(d.node_id(), dropped, "expired after the ttl");
    c.release().await.unwrap();
    d.release().await.unwrap();
    delete_keys(&url, &cluster).await;
}

#[tokio::test]
async fn no_lease_when_every_id_is_taken() {
    let Some(url) = engines::redis() else {
        return;
    };
    let cluster = names::fresh("test-");
    let client = redis::Client::open(url.as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let mut taken = redis::cmd("MSET");
    for n in 0..=confab_server::sequencer::MAX_NODE {
        taken.arg(format!("{cluster}:node:{n}")).arg("other");
    }
    let _: () = taken.query_async(&mut conn).await.unwrap();
    let result = NodeLease::acquire(&url, &cluster, LEASE_TTL).await;
    assert!(
        matches!(
            result,
            Err(confab_server::sequencer::lease::LeaseError::Exhausted)
        ),
        "{:?}",
        result.map(|l| l.node_id())
    );
    delete_keys(&url, &cluster).await;
}

#[tokio::test]
async fn a_stolen_lease_is_lost() {
    let Some(url) = engines::redis() else {
        return;
    };
    let cluster = names::fresh("test-");
    let a = lease(&url, &cluster).await;
    let (id, lost) = (a.node_id(), a.lost());
    let client = redis::Client::open(url.as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let _: () = redis::cmd("SET")
        .arg(format!("{cluster}:node:{id}"))
        .arg("someone else")
        .query_async(&mut conn)
        .await
        .unwrap();
    tokio::time::timeout(LEASE_TTL * 3, lost.cancelled())
        .await
        .expect("lost() fires");
    // Releasing a lost lease leaves the new owner's key alone.
    a.release().await.unwrap();
    let owner: String = redis::cmd("GET")
        .arg(format!("{cluster}:node:{id}"))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(owner, "someone else");
    delete_keys(&url, &cluster).await;
}
