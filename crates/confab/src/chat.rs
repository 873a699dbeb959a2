//! `confab chat`: a minimal terminal client built on the SDK, for demos and smoke tests.

use std::collections::HashMap;
use std::process::ExitCode;

use clap::Args;
use confab_client::{Api, Client, ClientConfig, Event, Id, SendTo};
use tokio::io::{AsyncBufReadExt, BufReader};

#[derive(Args)]
pub struct ChatArgs {
    /// The server's base URL.
    #[arg(long, env = "CONFAB_SERVER", default_value = "http://127.0.0.1:8080")]
    server: String,
    /// Log in as this user (a new device each run).
    #[arg(long)]
    user: String,
    #[arg(long, env = "CONFAB_PASSWORD")]
    password: String,
    /// Send each line of stdin to this username. Without it (or a group), only listen.
    #[arg(long, conflicts_with_all = ["group", "new_group"])]
    to: Option<String>,
    /// Send each line of stdin into this group (its conversation id, `g…`).
    #[arg(long, conflicts_with = "new_group")]
    group: Option<String>,
    /// Create a group with this title (and `--members`), print its conversation id, and send
    /// each line of stdin into it.
    #[arg(long, requires = "members")]
    new_group: Option<String>,
    /// The other members of `--new-group`, by username, comma-separated.
    #[arg(long, value_delimiter = ',')]
    members: Vec<String>,
}

pub async fn run(args: ChatArgs) -> ExitCode {
    match chat(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("confab chat: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn chat(args: ChatArgs) -> Result<(), confab_client::Error> {
    let api = Api::new(&args.server);
    let session = api
        .login(&args.user, &args.password, Some("confab chat"))
        .await?;
    let mut names: HashMap<Id, String> = HashMap::from([(session.user_id, args.user.clone())]);
    let target = if let Some(name) = &args.to {
        let user = api.user(&session.token, name).await?;
        names.insert(user.user_id, user.username.clone());
        Some(SendTo::User(user.user_id))
    } else if let Some(title) = &args.new_group {
        let mut members = Vec::new();
        for name in &args.members {
            members.push(api.user(&session.token, name).await?.user_id);
        }
        let group = api.create_group(&session.token, title, &members).await?;
        println!("{}", group.conversation);
        Some(SendTo::Conversation(group.conversation))
    } else {
        args.group.clone().map(SendTo::Conversation)
    };
    let client = Client::connect(ClientConfig::new(&args.server, &session.token)).await?;

    if let Some(target) = target {
        // Sender mode: send stdin line by line, each acknowledged before the next, then exit.
        let mut lines = BufReader::new(tokio::io::stdin()).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            if line.trim().is_empty() {
                continue;
            }
            let sent = match &target {
                SendTo::User(to) => client.send(*to, &line).await?,
                SendTo::Conversation(c) => client.send_in(c, &line).await?,
            };
            eprintln!("sent #{} in {}", sent.seq, sent.conversation);
        }
        client.close().await;
        return Ok(());
    }

    // Listener mode: print every message as it arrives (history first).
    while let Some(event) = client.next_event().await {
        match event {
            Event::Message { message, .. } => {
                let from = match names.get(&message.from) {
                    Some(n) => n.clone(),
                    None => message.from.to_string(),
                };
                // A group's messages name their group; its changes are shown as events.
                let place = match message.to {
                    Some(_) => String::new(),
                    None => format!("[{}] ", message.conversation),
                };
                match &message.system {
                    Some(event) => println!("{place}-- {from}: {:?}", event.event),
                    None => println!("{place}{from}: {}", message.body),
                }
            }
            Event::Synced { .. } => {
                eprintln!("-- up to date; waiting for messages (Ctrl-C to quit)")
            }
            Event::Presence {
                user_id, status, ..
            } => eprintln!("-- {user_id} is {status:?}"),
            Event::Disconnected { reason } => eprintln!("-- disconnected: {reason}; reconnecting"),
            Event::Error { code, message, .. } => eprintln!("-- error {code}: {message}"),
            _ => {}
        }
    }
    Ok(())
}
