//! Dialing again after a drop, with backoff, while commands keep arriving.

use confab_protocol::ErrorCode;
use tokio::time::{Instant, sleep_until};

use super::backoff::backoff;
use super::channel::{Command, Item};
use super::driver::Driver;
use super::event::Event;
use crate::connection::Connection;
use crate::error::ErrorKind;

impl Driver {
    /// Waits out the backoff and dials until a socket reaches `welcome`; `None` to stop.
    pub(super) async fn reconnect(&mut self) -> Option<Connection> {
        let mut attempt = 0;
        loop {
            let delay = backoff(self.config.min_backoff, self.config.max_backoff, attempt);
            attempt = attempt.saturating_add(1);
            let wake_at = Instant::now() + delay;
            loop {
                let command = tokio::select! {
                    () = sleep_until(wake_at) => break,
                    command = self.commands.recv() => command,
                };
                if !self.handle_offline(command) {
                    return None;
                }
            }
            // Owned copies: the dial runs while commands keep mutating `self`.
            let dial = {
                let url = self.url.clone();
                let token = self.config.token.clone();
                let cursor = self.resume_cursor.clone();
                let limit = self.config.connect_timeout;
                async move { Connection::connect_within(&url, &token, cursor.as_deref(), limit).await }
            };
            tokio::pin!(dial);
            let result = loop {
                let command = tokio::select! {
                    result = &mut dial => break result,
                    command = self.commands.recv() => command,
                };
                if !self.handle_offline(command) {
                    return None;
                }
            };
            match result {
                Ok((conn, _welcome)) => return Some(conn),
                Err(e) if e.code() == Some(ErrorCode::Unauthorized) => {
                    tracing::warn!(error = %e, "token refused; stopping");
                    let (code, message) = match e.kind() {
                        ErrorKind::Server { code, message } => (*code, message.clone()),
                        _ => (ErrorCode::Unauthorized, String::new()),
                    };
                    self.emit(Item::event(Event::Error {
                        code,
                        message,
                        reference: None,
                    }));
                    self.fatal = Some(e);
                    return None;
                }
                Err(e) => tracing::debug!(error = %e, attempt, "reconnect failed"),
            }
        }
    }

    /// Handles a command while there is no socket; false once the client should stop.
    fn handle_offline(&mut self, command: Option<Command>) -> bool {
        match command {
            None => false,
            Some(command) => {
                self.on_command(command);
                !self.stopping
            }
        }
    }
}
