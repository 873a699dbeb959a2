//! Turning the server's frames into events for the app and answers for pending sends.

use confab_protocol::{ErrorCode, ServerFrame};
use tokio::time::Instant;

use super::backoff::backoff;
use super::channel::Item;
use super::driver::{Driver, Flow};
use super::event::{Event, Sent};
use crate::error::{Error, ErrorKind};

impl Driver {
    pub(super) fn on_frame(&mut self, frame: ServerFrame) -> Option<Flow> {
        match frame {
            ServerFrame::Message { message, cursor } => {
                self.resume_cursor = Some(cursor.clone());
                let event = if self.dedupe.first_time(&message) {
                    Some(Event::Message {
                        message,
                        cursor: cursor.clone(),
                    })
                } else {
                    tracing::debug!(id = %message.id, "dropping repeated message");
                    None
                };
                self.emit(Item {
                    event,
                    cursor: Some(cursor),
                    urgent_ack: false,
                });
            }
            ServerFrame::Synced { cursor } => {
                self.resume_cursor = Some(cursor.clone());
                self.emit(Item {
                    event: Some(Event::Synced {
                        cursor: cursor.clone(),
                    }),
                    cursor: Some(cursor),
                    urgent_ack: true,
                });
            }
            ServerFrame::Sent {
                client_id,
                id,
                conversation,
                seq,
                ts,
            } => {
                // No match: the answer to an earlier attempt of a send that already finished.
                if let Some(send) = self.sends.remove(&client_id) {
                    send.finish(&Ok(Sent {
                        client_id,
                        id,
                        conversation,
                        seq,
                        ts,
                    }));
                }
            }
            ServerFrame::Error {
                code,
                message,
                reference,
            } => return self.on_error(code, message, reference),
            ServerFrame::Receipt {
                conversation,
                user_id,
                kind,
                seq,
            } => self.emit(Item::event(Event::Receipt {
                conversation,
                user_id,
                kind,
                seq,
            })),
            ServerFrame::Presence {
                user_id,
                status,
                last_seen,
            } => self.emit(Item::event(Event::Presence {
                user_id,
                status,
                last_seen,
            })),
            ServerFrame::Typing { from, conversation } => {
                self.emit(Item::event(Event::Typing { from, conversation }))
            }
            ServerFrame::Pong => {}
            ServerFrame::Welcome { .. } => tracing::warn!("unexpected second welcome"),
        }
        None
    }

    fn on_error(
        &mut self,
        code: ErrorCode,
        message: String,
        reference: Option<String>,
    ) -> Option<Flow> {
        let now = Instant::now();
        let (min, max) = (self.config.min_backoff, self.config.max_backoff);
        if let Some(send) = reference.as_deref().and_then(|r| self.sends.get_mut(r)) {
            if matches!(code, ErrorCode::RateLimited | ErrorCode::Unavailable) {
                send.retries += 1;
                send.in_flight = false;
                send.due = now + backoff(min, max, send.retries - 1);
                tracing::debug!(client_id = %send.client_id, %code, "send will be retried");
                return None;
            }
            let client_id = send.client_id.clone();
            if let Some(send) = self.sends.remove(&client_id) {
                send.finish(&Err(Error::new(ErrorKind::Server { code, message })));
            }
            return None;
        }
        let fatal = code == ErrorCode::Unauthorized;
        if fatal {
            // The token was revoked: reconnecting would only be refused again.
            self.fatal = Some(Error::new(ErrorKind::Server {
                code,
                message: message.clone(),
            }));
        }
        self.emit(Item::event(Event::Error {
            code,
            message,
            reference,
        }));
        fatal.then_some(Flow::Stop)
    }
}
