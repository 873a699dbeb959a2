//! What arrived at the receiver, set against what was sent: notifications per device, their
//! latency, and the decrypted sample's checks.
//!
//! A notification says which message it is for only inside its encrypted payload, and only
//! a sample is decrypted. So each device's notifications are matched to its messages in
//! order: the k-th to arrive at a device is taken for the k-th message acked to it. That is
//! exact while the push server sends a device's notifications one after another, which it
//! does as long as it keeps up (a device gets one message per `recipients / rate` seconds);
//! the decrypted sample says how often it held (`in_order`). When it falls behind, a newer
//! message replaces a device's waiting notification (coalescing), the later messages are
//! matched to earlier arrivals, and the latency is an estimate, on the late side.

use std::collections::BTreeMap;
use std::time::Instant;

use confab_client::Id;
use confab_protocol::PushPayload;
use serde::{Deserialize, Serialize};

use super::receiver::Arrival;
use crate::body;
use crate::connect::count;
use crate::stats::{self, LatencySummary};

/// A message acked to a subscribed device, as the bench knows it.
#[derive(Clone, Debug)]
pub(super) struct Sent {
    /// When the schedule meant it to leave, ns after the phase's start.
    pub(super) intended_ns: u64,
    /// The id the server gave it, if its echo came back.
    pub(super) id: Option<Id>,
    pub(super) from: Id,
}

/// What the receiver got in the push phase, against what was sent.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Notifications {
    /// Acked messages to subscribed devices: one notification each, unless coalesced.
    pub expected: u64,
    /// Notifications the receiver took.
    pub arrived: u64,
    /// Of those, before the schedule's end.
    pub arrived_in_window: u64,
    /// Arrivals per second of the schedule's duration, counting those before its end.
    pub per_sec_in_window: f64,
    /// Arrivals per second from the schedule's start to the last one (at least the
    /// schedule's duration): what the push server sustains once it falls behind.
    pub per_sec_to_last: f64,
    /// Seconds from the schedule's start to the last arrival.
    pub last_arrival_s: f64,
    /// Devices messages were acked to, and those of them that got a notification.
    pub devices: u64,
    pub devices_notified: u64,
    /// Fewest and most notifications one device got.
    pub per_device_min: u64,
    pub per_device_max: u64,
    /// Acked messages left without a notification of their own (coalesced, or missing).
    pub without_own: u64,
    /// Notifications beyond a device's messages (repeats, or an earlier run's).
    pub extra: u64,
    /// Requests to an endpoint of no device.
    pub unknown: u64,
    /// Each notification's arrival − the intended send time of the message matched to it
    /// by order: exact while nothing is coalesced, overstated when messages are.
    pub latency_ms: LatencySummary,
    /// Each decrypted genuine notification's arrival − the intended send time of the
    /// message it carries: exact, for the sample only.
    pub sample_latency_ms: LatencySummary,
    /// Notifications decrypted with their device's key.
    pub decrypted: u64,
    /// Of those, a `message` payload of this run, from the sender of one of the device's
    /// messages, with one of their ids.
    pub genuine: u64,
    /// Of the genuine, those for the very message matched by order.
    pub in_order: u64,
    /// Decrypted notifications that failed a check, by reason.
    pub bad: BTreeMap<String, u64>,
    /// The wait ended with everything accounted for (all arrived, or the server idle with
    /// nothing left to send), not at the timeout.
    pub complete: bool,
    /// Seconds from the schedule's end to the end of the wait.
    pub waited_s: f64,
}

impl Notifications {
    /// Matches `arrivals` (since `start`) to `messages` (per device, in the order sent).
    pub(super) fn tally(
        messages: &[Vec<Sent>],
        arrivals: &[Arrival],
        start: Instant,
        window_s: f64,
        run: u32,
    ) -> Notifications {
        let ns = |at: Instant| at.saturating_duration_since(start).as_nanos() as u64;
        let mut by_device: Vec<Vec<&Arrival>> = vec![Vec::new(); messages.len()];
        let mut n = Notifications {
            expected: messages.iter().map(|m| m.len() as u64).sum(),
            arrived: arrivals.len() as u64,
            ..Notifications::default()
        };
        let window_ns = (window_s * 1e9) as u64;
        let mut last_ns = 0;
        for a in arrivals {
            let at = ns(a.at);
            last_ns = last_ns.max(at);
            n.arrived_in_window += u64::from(at <= window_ns);
            match by_device.get_mut(a.device as usize) {
                Some(d) => d.push(a),
                None => n.extra += 1,
            }
        }
        let (mut latency, mut sample_latency) = (stats::histogram(), stats::histogram());
        let mut per_device = Vec::new();
        for (sent, mut got) in messages.iter().zip(by_device) {
            if sent.is_empty() {
                n.extra += got.len() as u64;
                continue;
            }
            per_device.push(got.len() as u64);
            got.sort_by_key(|a| a.at);
            for (k, a) in got.iter().enumerate() {
                let Some(matched) = sent.get(k) else {
                    n.extra += 1;
                    continue;
                };
                stats::record_ns(&mut latency, ns(a.at).saturating_sub(matched.intended_ns));
                if let Some(d) = &a.decrypted {
                    n.decrypted += 1;
                    match check(d, sent, run) {
                        Ok(carried) => {
                            n.genuine += 1;
                            n.in_order += u64::from(matched.id == carried.id);
                            stats::record_ns(
                                &mut sample_latency,
                                ns(a.at).saturating_sub(carried.intended_ns),
                            );
                        }
                        Err(reason) => count(&mut n.bad, &reason),
                    }
                }
            }
            n.without_own += sent.len().saturating_sub(got.len()) as u64;
        }
        n.devices = per_device.len() as u64;
        n.devices_notified = per_device.iter().filter(|&&c| c > 0).count() as u64;
        n.per_device_min = per_device.iter().copied().min().unwrap_or(0);
        n.per_device_max = per_device.iter().copied().max().unwrap_or(0);
        n.latency_ms = LatencySummary::of(&latency);
        n.sample_latency_ms = LatencySummary::of(&sample_latency);
        n.last_arrival_s = last_ns as f64 / 1e9;
        if window_s > 0.0 {
            n.per_sec_in_window = n.arrived_in_window as f64 / window_s;
            n.per_sec_to_last = n.arrived as f64 / n.last_arrival_s.max(window_s);
        }
        n
    }

    /// Notifications the receiver still lacks that the server did not fold into others
    /// (`coalesced`, its own count).
    pub fn missing(&self, coalesced: u64) -> u64 {
        self.expected
            .saturating_sub(self.arrived.min(self.expected))
            .saturating_sub(coalesced)
    }
}

/// The message a decrypted payload carries, if it is one of the device's messages of this
/// run; else why not.
fn check<'a>(
    decrypted: &Result<PushPayload, String>,
    sent: &'a [Sent],
    run: u32,
) -> Result<&'a Sent, String> {
    let payload = decrypted.as_ref().map_err(Clone::clone)?;
    let PushPayload::Message { id, from, body, .. } = payload else {
        return Err("a read, not a message".into());
    };
    let stamp = body.as_deref().and_then(body::decode);
    if stamp.is_none_or(|s| s.run != run) {
        return Err("the preview is not a message of this run".into());
    }
    match sent.iter().find(|s| s.id == Some(*id)) {
        Some(s) if s.from == *from => Ok(s),
        Some(_) => Err("the sender is not the message's".into()),
        None => Err("a message id not sent to this device".into()),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn payload(id: u64, from: u64, run: u32) -> Box<Result<PushPayload, String>> {
        let mut text = String::new();
        body::encode(
            &body::Stamp {
                run,
                seq: 0,
                intended_ns: 0,
                written_ns: 0,
            },
            64,
            &mut text,
        );
        Box::new(Ok(PushPayload::Message {
            conversation: "c".into(),
            id: Id(id),
            seq: 1,
            from: Id(from),
            from_username: "s".into(),
            unread: 1,
            body: Some(text),
        }))
    }

    #[test]
    fn notifications_match_their_devices_messages_in_order() {
        let t0 = Instant::now();
        let ms = |m: u64| t0 + Duration::from_millis(m);
        let sent = |ms: u64, id: u64| Sent {
            intended_ns: ms * 1_000_000,
            id: Some(Id(id)),
            from: Id(9),
        };
        // Device 0: two messages, both notified; device 1: two, one notified (coalesced);
        // device 2: none sent, one arrives anyway.
        let messages = vec![
            vec![sent(0, 100), sent(500, 101)],
            vec![sent(10, 200), sent(510, 201)],
            vec![],
        ];
        let arrivals = vec![
            Arrival {
                device: 0,
                at: ms(520),
                decrypted: Some(payload(101, 9, 7)),
            },
            Arrival {
                device: 0,
                at: ms(20),
                decrypted: Some(payload(100, 9, 7)),
            },
            Arrival {
                device: 1,
                at: ms(1_500),
                decrypted: Some(payload(201, 9, 7)),
            },
            Arrival {
                device: 2,
                at: ms(30),
                decrypted: Some(payload(300, 9, 7)),
            },
            Arrival {
                device: 9,
                at: ms(40),
                decrypted: None,
            },
        ];
        let n = Notifications::tally(&messages, &arrivals, t0, 1.0, 7);
        assert_eq!((n.expected, n.arrived, n.arrived_in_window), (4, 5, 4));
        assert_eq!((n.devices, n.devices_notified), (2, 2));
        assert_eq!((n.per_device_min, n.per_device_max), (1, 2));
        assert_eq!(n.without_own, 1);
        assert_eq!(n.extra, 2, "device 2's and device 9's");
        assert_eq!(n.latency_ms.count, 3);
        assert!(
            (n.latency_ms.max_ms - 1_490.0).abs() < 2.0,
            "{:?}",
            n.latency_ms
        );
        assert!(
            (n.latency_ms.min_ms - 20.0).abs() < 0.1,
            "{:?}",
            n.latency_ms
        );
        assert_eq!((n.decrypted, n.genuine, n.in_order), (3, 3, 2));
        // The coalesced notification carries the later message: 990 ms, not 1,490.
        assert_eq!(n.sample_latency_ms.count, 3);
        assert!(
            (n.sample_latency_ms.max_ms - 990.0).abs() < 1.0,
            "{:?}",
            n.sample_latency_ms
        );
        assert!(n.bad.is_empty(), "{:?}", n.bad);
        assert!((n.last_arrival_s - 1.5).abs() < 1e-9);
        assert!((n.per_sec_to_last - 5.0 / 1.5).abs() < 1e-9);
        assert_eq!(n.missing(1), 0);
        assert_eq!(n.missing(0), 0, "more arrived than were expected");
    }

    #[test]
    fn payloads_that_are_not_the_devices_messages_are_bad() {
        let messages = vec![vec![Sent {
            intended_ns: 0,
            id: Some(Id(1)),
            from: Id(9),
        }]];
        let t0 = Instant::now();
        for (decrypted, reason) in [
            (payload(1, 9, 8), "not a message of this run"),
            (payload(2, 9, 7), "not sent to this device"),
            (payload(1, 8, 7), "sender"),
            (
                Box::new(Err("does not decrypt: x".to_owned())),
                "does not decrypt",
            ),
        ] {
            let arrivals = vec![Arrival {
                device: 0,
                at: t0,
                decrypted: Some(decrypted),
            }];
            let n = Notifications::tally(&messages, &arrivals, t0, 1.0, 7);
            assert_eq!(n.genuine, 0);
            assert!(
                n.bad.keys().any(|k| k.contains(reason)),
                "{reason}: {:?}",
                n.bad
            );
        }
        let none = Notifications::tally(&messages, &[], t0, 1.0, 7);
        assert_eq!((none.missing(0), none.missing(1)), (1, 0));
        assert_eq!(none.latency_ms.count, 0);
    }
}
