//! The holder: keeps a process's sockets open and reads them in one task, counting the ones
//! that close.

use std::pin::Pin;

use futures_util::stream::{self, SelectAll, Stream, StreamExt};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message as WsMessage;

use crate::connect::RawSocket;

/// An event of a held socket.
enum Held {
    Frame,
    End,
}

type HeldStream = Pin<Box<dyn Stream<Item = Held> + Send>>;

/// Holds sockets: reads them all (which also answers the server's pings) in one task and
/// counts the ones that close. Stop it to close them all.
pub(super) struct Holder {
    pub(super) add: mpsc::UnboundedSender<RawSocket>,
    stop: oneshot::Sender<()>,
    task: JoinHandle<u64>,
}

impl Holder {
    pub(super) fn start() -> Holder {
        let (add, mut added) = mpsc::unbounded_channel::<RawSocket>();
        let (stop, mut stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let mut all: SelectAll<HeldStream> = SelectAll::new();
            let mut dropped = 0u64;
            loop {
                tokio::select! {
                    biased;
                    _ = &mut stopped => break,
                    Some(ws) = added.recv() => {
                        let s = ws
                            .map(|m| match m {
                                Ok(WsMessage::Close(_)) | Err(_) => Held::End,
                                Ok(_) => Held::Frame,
                            })
                            .chain(stream::once(async { Held::End }))
                            // A socket ends once, however it ends (an error, then the end).
                            .scan(false, |ended, ev| {
                                let out = (!*ended).then(|| {
                                    *ended = matches!(ev, Held::End);
                                    ev
                                });
                                std::future::ready(out)
                            });
                        all.push(Box::pin(s));
                    }
                    Some(ev) = all.next(), if !all.is_empty() => {
                        if let Held::End = ev {
                            dropped += 1;
                        }
                    }
                }
            }
            dropped
        });
        Holder { add, stop, task }
    }

    /// Closes every socket; returns how many had closed on their own.
    pub(super) async fn stop(self) -> u64 {
        let _ = self.stop.send(());
        self.task.await.unwrap_or(0)
    }
}
