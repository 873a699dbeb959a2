//! The PostgreSQL side of `store::groups`: concurrent writes, repeats, catch-up spans and
//! marks, receipts, the conversation list and history.

use std::sync::Arc;

use confab_protocol::{ConversationSummary, GroupSummary, Id, MemberMarks, MessagePage, Role};
use confab_testkit::postgres::Database;

use super::PostgresStore;
use super::group_tests::*;
use crate::store::groups::{ChangeGroup, GroupChange, GroupSpan, Groups, NewGroup};
use crate::store::{
    Accounts, Conversations, MessageStore, NewDevice, NewMessage, StoreError, Streams,
    conversation_id,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
pub(super) async fn concurrent_writes_to_a_group_take_gapless_seqs() {
    let Some(db) = Database::from_env().await else {
        return;
    };
    let store = Arc::new(six_users(&db.url(), 8).await);
    store
        .create_group(new_group(7, 1, &[2, 3, 4]))
        .await
        .unwrap();
    let tasks = (0..8u64).map(|t| {
        let store = store.clone();
        tokio::spawn(async move {
            let mut seqs = Vec::new();
            for i in 0..10 {
                let id = 10_000 + t * 100 + i;
                let m = group_msg(id, 7, 1 + t % 4, &format!("t{t}-{i}"));
                let r = store.append_group(m).await.unwrap();
                assert!(!r.duplicate);
                assert_eq!(ids(&r.recipients), [1, 2, 3, 4]);
                seqs.push(r.message.seq);
            }
            seqs
        })
    });
    // Changes between the sends take their seqs from the same counter.
    let changes = {
        let store = store.clone();
        tokio::spawn(async move {
            for i in 0..5u64 {
                let title = format!("t{i}");
                let r = store
                    .change_group(change(7, 1, 500 + i * 2, GroupChange::Rename(title)))
                    .await
                    .unwrap();
                assert_eq!(r.len(), 1);
            }
        })
    };
    let mut seqs: Vec<u64> = futures::future::try_join_all(tasks)
        .await
        .unwrap()
        .into_iter()
        .flatten()
        .collect();
    changes.await.unwrap();
    seqs.sort_unstable();
    assert_eq!(seqs.len(), 80);
    let stored = store.group_messages(Id(7), 0, None, 1000).await.unwrap();
    let stored: Vec<u64> = stored.iter().map(|m| m.seq).collect();
    assert_eq!(stored, (1..=86).collect::<Vec<_>>(), "gapless, 1 + 80 + 5");
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
pub(super) async fn two_admins_removing_each_other_leave_one_removed() {
    let Some(db) = Database::from_env().await else {
        return;
    };
    let store = Arc::new(six_users(&db.url(), 4).await);
    for round in 0..10u64 {
        let group = 100 + round;
        store
            .create_group(new_group(group, 1, &[2, 3]))
            .await
            .unwrap();
        for (user, ids) in [(2, 10), (3, 20)] {
            store
                .change_group(change(
                    group,
                    1,
                    group * 1000 + ids,
                    GroupChange::SetRole(Id(user), Role::Admin),
                ))
                .await
                .unwrap();
        }
        let [a, b] = [(2, 3, 30), (3, 2, 40)].map(|(actor, target, ids)| {
            let store = store.clone();
            tokio::spawn(async move {
                store
                    .change_group(change(
                        group,
                        actor,
                        group * 1000 + ids,
                        GroupChange::Remove(Id(target)),
                    ))
                    .await
            })
        });
        let outcomes = [a.await.unwrap(), b.await.unwrap()];
        let removed = outcomes.iter().filter(|r| r.is_ok()).count();
        assert_eq!(removed, 1, "round {round}: {outcomes:?}");
        let refused = outcomes.iter().find_map(|r| r.as_ref().err()).unwrap();
        assert!(matches!(refused, StoreError::NotFound(_)), "{refused:?}");
        let left = members(&store, 1, group).await;
        assert_eq!(left.len(), 2, "round {round}: {left:?}");
        let seqs: Vec<u64> = store
            .group_messages(Id(group), 0, None, 10)
            .await
            .unwrap()
            .iter()
            .map(|m| m.seq)
            .collect();
        assert_eq!(seqs, [1, 2, 3, 4]);
    }
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
pub(super) async fn a_repeated_send_is_answered_with_the_first() {
    let Some(db) = Database::from_env().await else {
        return;
    };
    let store = Arc::new(six_users(&db.url(), 4).await);
    store.create_group(new_group(7, 1, &[2, 3])).await.unwrap();
    let first = store.append_group(group_msg(100, 7, 2, "a")).await.unwrap();
    assert!(!first.duplicate);
    assert_eq!(first.message.seq, 2);
    assert_eq!(first.message.to, None);
    assert_eq!(first.message.body, "m100");
    let again = store.append_group(group_msg(101, 7, 2, "a")).await.unwrap();
    assert!(again.duplicate);
    assert!(again.recipients.is_empty());
    assert_eq!(*again.message, *first.message);

    // Several identical sends at once store one message.
    let racing = (0..4u64).map(|i| {
        let store = store.clone();
        tokio::spawn(async move { store.append_group(group_msg(200 + i, 7, 3, "b")).await })
    });
    let answers = futures::future::try_join_all(racing).await.unwrap();
    let answers: Vec<_> = answers.into_iter().map(Result::unwrap).collect();
    assert_eq!(answers.iter().filter(|a| !a.duplicate).count(), 1);
    let id = answers[0].message.id;
    assert!(
        answers
            .iter()
            .all(|a| a.message.id == id && a.message.seq == 3)
    );

    // A sender removed since still gets the answer of its send, and no new one.
    store
        .change_group(change(7, 1, 300, GroupChange::Remove(Id(2))))
        .await
        .unwrap();
    let late = store.append_group(group_msg(102, 7, 2, "a")).await.unwrap();
    assert!(late.duplicate);
    assert_eq!(late.message.id, Id(100));
    let err = store
        .append_group(group_msg(103, 7, 2, "c"))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::NotFound(_)), "{err:?}");
    let err = store
        .append_group(group_msg(104, 8, 1, "d"))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::NotFound(_)), "no group: {err:?}");
    let seqs: Vec<u64> = store
        .group_messages(Id(7), 0, None, 10)
        .await
        .unwrap()
        .iter()
        .map(|m| m.seq)
        .collect();
    assert_eq!(seqs, [1, 2, 3, 4], "refusals take no seq");
    store.close().await;
}

pub(super) async fn device(store: &PostgresStore, id: u64, user: u64, now: i64) -> Id {
    store
        .create_device(NewDevice {
            id: Id(id),
            user_id: Id(user),
            name: None,
            token_hash: [u8::try_from(id % 256).unwrap(); 32],
            now,
        })
        .await
        .unwrap();
    Id(id)
}

pub(super) fn span(group: u64, after: u64, upto: Option<u64>) -> GroupSpan {
    GroupSpan {
        group: Id(group),
        after,
        upto,
    }
}

#[tokio::test]
pub(super) async fn a_device_catches_up_on_its_spans_from_its_marks() {
    let Some(db) = Database::from_env().await else {
        return;
    };
    let store = six_users(&db.url(), 2).await;
    let early = device(&store, 50, 2, 5).await;
    store.create_group(new_group(7, 1, &[2])).await.unwrap();
    store.create_group(new_group(8, 1, &[3])).await.unwrap();
    for i in 0..3 {
        store
            .append_group(group_msg(100 + i, 7, 1, &format!("a{i}")))
            .await
            .unwrap();
    }
    assert_eq!(
        store.group_spans(early, Id(2)).await.unwrap(),
        [span(7, 0, None)]
    );
    assert_eq!(
        store
            .group_messages(Id(7), 0, None, 2)
            .await
            .unwrap()
            .iter()
            .map(|m| m.seq)
            .collect::<Vec<_>>(),
        [1, 2]
    );
    assert_eq!(
        store
            .group_messages(Id(7), 1, Some(3), 10)
            .await
            .unwrap()
            .iter()
            .map(|m| m.seq)
            .collect::<Vec<_>>(),
        [2, 3]
    );

    // Acknowledged up to 3: the device's mark, and the user's delivered mark.
    store.set_group_mark(early, Id(2), Id(7), 3).await.unwrap();
    assert_eq!(
        store.group_spans(early, Id(2)).await.unwrap(),
        [span(7, 3, None)]
    );
    // A mark never moves back, nor past the last message.
    store.set_group_mark(early, Id(2), Id(7), 1).await.unwrap();
    assert_eq!(
        store.group_spans(early, Id(2)).await.unwrap(),
        [span(7, 3, None)]
    );
    store.set_group_mark(early, Id(2), Id(7), 99).await.unwrap();
    assert_eq!(
        store.group_spans(early, Id(2)).await.unwrap(),
        [span(7, 4, None)],
        "nothing to read, and still a member"
    );
    let receipts = store.group_receipts(Id(1), Id(7)).await.unwrap().unwrap();
    assert_eq!(
        receipts[1],
        MemberMarks {
            user_id: Id(2),
            read_seq: 0,
            delivered_seq: 4
        }
    );

    // Removed at 6 after a message at 5: the device that existed then reads up to 6.
    store.append_group(group_msg(110, 7, 1, "b")).await.unwrap();
    let removed = store
        .change_group(ChangeGroup {
            now: 40,
            ..change(7, 1, 120, GroupChange::Remove(Id(2)))
        })
        .await
        .unwrap();
    assert_eq!(removed[0].message.seq, 6);
    store.append_group(group_msg(111, 7, 1, "c")).await.unwrap();
    assert_eq!(
        store.group_spans(early, Id(2)).await.unwrap(),
        [span(7, 4, Some(6))]
    );
    // A device made when the removal happened learns of it; one made later does not.
    let at_removal = device(&store, 51, 2, 40).await;
    assert_eq!(
        store.group_spans(at_removal, Id(2)).await.unwrap(),
        [span(7, 0, Some(6))]
    );
    let late = device(&store, 52, 2, 41).await;
    assert!(store.group_spans(late, Id(2)).await.unwrap().is_empty());
    // Acknowledged to the span's end: nothing left, and delivered stops at the removal.
    store.set_group_mark(early, Id(2), Id(7), 7).await.unwrap();
    assert!(store.group_spans(early, Id(2)).await.unwrap().is_empty());

    // Added again at 8: a second span, from the event that added them.
    store
        .change_group(change(7, 1, 130, GroupChange::Add(Id(2))))
        .await
        .unwrap();
    assert_eq!(
        store.group_spans(late, Id(2)).await.unwrap(),
        [span(7, 7, None)]
    );
    assert_eq!(
        store.group_spans(at_removal, Id(2)).await.unwrap(),
        [span(7, 0, Some(6)), span(7, 7, None)]
    );
    // Delivered marks live on the latest span.
    store.set_group_mark(late, Id(2), Id(7), 8).await.unwrap();
    let receipts = store.group_receipts(Id(2), Id(7)).await.unwrap().unwrap();
    assert_eq!(
        receipts
            .iter()
            .find(|m| m.user_id == Id(2))
            .unwrap()
            .delivered_seq,
        8
    );
    // Another user's spans and groups are not the device's.
    assert_eq!(
        store.group_spans(late, Id(3)).await.unwrap(),
        [span(8, 0, None)]
    );
    store.close().await;
}

#[tokio::test]
pub(super) async fn read_marks_and_receipts_are_for_members() {
    let Some(db) = Database::from_env().await else {
        return;
    };
    let store = six_users(&db.url(), 2).await;
    store.create_group(new_group(7, 1, &[2, 3])).await.unwrap();
    store.append_group(group_msg(100, 7, 1, "a")).await.unwrap();
    assert_eq!(
        store.mark_group_read(Id(2), Id(7), 1).await.unwrap(),
        Some(1)
    );
    assert_eq!(store.mark_group_read(Id(2), Id(7), 1).await.unwrap(), None);
    assert_eq!(store.mark_group_read(Id(2), Id(7), 0).await.unwrap(), None);
    // Clamped to the last message.
    assert_eq!(
        store.mark_group_read(Id(2), Id(7), 50).await.unwrap(),
        Some(2)
    );
    assert_eq!(store.mark_group_read(Id(2), Id(7), 50).await.unwrap(), None);
    for (user, group) in [(4, 7), (1, 8)] {
        let err = store
            .mark_group_read(Id(user), Id(group), 1)
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::NotFound(_)), "{err:?}");
    }
    let receipts = store.group_receipts(Id(3), Id(7)).await.unwrap().unwrap();
    assert_eq!(
        receipts,
        [
            MemberMarks {
                user_id: Id(1),
                read_seq: 0,
                delivered_seq: 0
            },
            MemberMarks {
                user_id: Id(2),
                read_seq: 2,
                delivered_seq: 0
            },
            MemberMarks {
                user_id: Id(3),
                read_seq: 0,
                delivered_seq: 0
            },
        ]
    );
    assert_eq!(store.group_receipts(Id(4), Id(7)).await.unwrap(), None);
    // A removed member: no receipts, no marks, and not in the others' receipts.
    store
        .change_group(change(7, 1, 110, GroupChange::Remove(Id(2))))
        .await
        .unwrap();
    assert_eq!(store.group_receipts(Id(2), Id(7)).await.unwrap(), None);
    let err = store.mark_group_read(Id(2), Id(7), 3).await.unwrap_err();
    assert!(matches!(err, StoreError::NotFound(_)), "{err:?}");
    let receipts = store.group_receipts(Id(1), Id(7)).await.unwrap().unwrap();
    assert_eq!(
        receipts.iter().map(|m| m.user_id.0).collect::<Vec<_>>(),
        [1, 3]
    );
    // The group's read marks are not the 1:1 ones.
    let err = store.mark_read(Id(1), "g7", 1).await.unwrap_err();
    assert!(matches!(err, StoreError::NotFound(_)), "{err:?}");
    store.close().await;
}

#[tokio::test]
pub(super) async fn the_conversation_list_merges_groups_by_last_message() {
    let Some(db) = Database::from_env().await else {
        return;
    };
    let store = six_users(&db.url(), 2).await;
    let one_to_one = |id: u64, to: u64| NewMessage {
        id: Id(id),
        from: Id(1),
        to: Id(to),
        client_id: format!("c{id}"),
        body: "hi".into(),
        ts: 1,
    };
    // Last message ids, newest first: g8 (60), 1:3 (50), g7 (40), 1:2 (30); group 9 has
    // user 1 removed, so it is not listed.
    store.append(one_to_one(10, 2)).await.unwrap();
    store
        .create_group(NewGroup {
            message_id: Id(20),
            ..new_group(7, 2, &[1, 3])
        })
        .await
        .unwrap();
    store.append(one_to_one(30, 2)).await.unwrap();
    store.append_group(group_msg(40, 7, 3, "x")).await.unwrap();
    store
        .create_group(NewGroup {
            message_id: Id(45),
            ..new_group(9, 2, &[1])
        })
        .await
        .unwrap();
    store.append(one_to_one(50, 3)).await.unwrap();
    store
        .create_group(NewGroup {
            message_id: Id(60),
            ..new_group(8, 1, &[])
        })
        .await
        .unwrap();
    store
        .change_group(change(9, 2, 70, GroupChange::Remove(Id(1))))
        .await
        .unwrap();
    store.mark_group_read(Id(1), Id(7), 1).await.unwrap();

    let page = store.conversations(Id(1), None, 10).await.unwrap();
    assert!(!page.more);
    let order: Vec<_> = page
        .conversations
        .iter()
        .map(|c| c.conversation.as_str())
        .collect();
    let c13 = conversation_id(Id(1), Id(3));
    let c12 = conversation_id(Id(1), Id(2));
    assert_eq!(order, ["g8", c13.as_str(), "g7", c12.as_str()]);
    let g7 = &page.conversations[2];
    assert_eq!(
        *g7,
        ConversationSummary {
            conversation: "g7".into(),
            peer: None,
            last_seq: 2,
            last_message: Some(store.group_messages(Id(7), 1, None, 1).await.unwrap()[0].clone()),
            read_seq: 1,
            peer_read_seq: None,
            peer_delivered_seq: None,
            group: Some(GroupSummary {
                title: "group 7".into(),
                members_count: 3,
            }),
        }
    );
    assert_eq!(g7.last_message.as_ref().unwrap().id, Id(40));
    assert_eq!(
        page.conversations[0].group.as_ref().unwrap().members_count,
        1
    );
    let c12_entry = &page.conversations[3];
    assert_eq!(c12_entry.peer, Some(Id(2)));
    assert_eq!(c12_entry.peer_read_seq, Some(0));
    assert!(c12_entry.group.is_none());

    // Pages of two: the cursor is the last message's id, exclusive, across both kinds.
    let first = store.conversations(Id(1), None, 2).await.unwrap();
    assert!(first.more);
    assert_eq!(first.conversations, page.conversations[..2]);
    let second = store.conversations(Id(1), Some(Id(50)), 2).await.unwrap();
    assert!(!second.more);
    assert_eq!(second.conversations, page.conversations[2..]);
    let third = store.conversations(Id(1), Some(Id(40)), 1).await.unwrap();
    assert!(!third.more);
    assert_eq!(third.conversations, page.conversations[3..]);
    let groups_only = store.conversations(Id(1), Some(Id(61)), 1).await.unwrap();
    assert!(groups_only.more);
    assert_eq!(groups_only.conversations, page.conversations[..1]);
    // The removed member's list no longer holds group 9; its owner's does.
    let owner = store.conversations(Id(2), None, 10).await.unwrap();
    assert!(owner.conversations.iter().any(|c| c.conversation == "g9"));
    store.close().await;
}

#[tokio::test]
pub(super) async fn a_members_history_starts_where_they_were_added() {
    let Some(db) = Database::from_env().await else {
        return;
    };
    let store = six_users(&db.url(), 2).await;
    store.create_group(new_group(7, 1, &[2])).await.unwrap();
    for i in 0..3 {
        store
            .append_group(group_msg(100 + i, 7, 1, &format!("a{i}")))
            .await
            .unwrap();
    }
    // 3 is added at 5 and sees from there on.
    store
        .change_group(change(7, 1, 110, GroupChange::Add(Id(3))))
        .await
        .unwrap();
    store.append_group(group_msg(120, 7, 2, "b")).await.unwrap();
    let seqs = |page: Option<MessagePage>| {
        let page = page.expect("a member sees the history");
        (
            page.messages.iter().map(|m| m.seq).collect::<Vec<_>>(),
            page.more,
        )
    };
    assert_eq!(
        seqs(store.messages(Id(3), "g7", None, 10).await.unwrap()),
        (vec![5, 6], false)
    );
    assert_eq!(
        seqs(store.messages(Id(2), "g7", None, 10).await.unwrap()),
        (vec![1, 2, 3, 4, 5, 6], false)
    );
    // Newest page first, ascending within; `before` exclusive.
    assert_eq!(
        seqs(store.messages(Id(2), "g7", None, 2).await.unwrap()),
        (vec![5, 6], true)
    );
    assert_eq!(
        seqs(store.messages(Id(2), "g7", Some(5), 3).await.unwrap()),
        (vec![2, 3, 4], true)
    );
    assert_eq!(
        seqs(store.messages(Id(3), "g7", Some(6), 3).await.unwrap()),
        (vec![5], false)
    );
    assert_eq!(
        seqs(store.messages(Id(3), "g7", Some(5), 3).await.unwrap()),
        (vec![], false)
    );
    // Anyone else, a removed member and a group that does not exist: `None` alike.
    assert_eq!(store.messages(Id(4), "g7", None, 10).await.unwrap(), None);
    assert_eq!(store.messages(Id(1), "g8", None, 10).await.unwrap(), None);
    store
        .change_group(change(7, 1, 130, GroupChange::Remove(Id(3))))
        .await
        .unwrap();
    assert_eq!(store.messages(Id(3), "g7", None, 10).await.unwrap(), None);
    // Added again: the history restarts at the new span.
    store
        .change_group(change(7, 1, 140, GroupChange::Add(Id(3))))
        .await
        .unwrap();
    assert_eq!(
        seqs(store.messages(Id(3), "g7", None, 10).await.unwrap()),
        (vec![8], false)
    );
    store.close().await;
}
