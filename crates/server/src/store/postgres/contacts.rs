//! [`Contacts`] on PostgreSQL: contacts, blocks and last seen.

use async_trait::async_trait;
use confab_protocol::Id;
use deadpool_postgres::GenericClient;

use super::PostgresStore;
use super::retry::PgError;
use super::rows::{execute, id_col, query, query_opt};
use crate::store::sql_integers::id_to_sql;
use crate::store::{ContactEntry, Contacts, StoreError, StoreResult, friends_sql};

async fn user_exists(c: &impl GenericClient, user: Id) -> Result<bool, PgError> {
    Ok(
        query_opt(c, "SELECT 1 FROM users WHERE id = $1", &[&id_to_sql(user)])
            .await?
            .is_some(),
    )
}

async fn has_contact(c: &impl GenericClient, owner: Id, contact: Id) -> Result<bool, PgError> {
    Ok(query_opt(
        c,
        "SELECT 1 FROM contacts WHERE owner = $1 AND contact = $2",
        &[&id_to_sql(owner), &id_to_sql(contact)],
    )
    .await?
    .is_some())
}

#[async_trait]
impl Contacts for PostgresStore {
    async fn add_contact(&self, owner: Id, contact: Id, now: i64) -> StoreResult<bool> {
        self.write(move |tx| {
            Box::pin(async move {
                if !user_exists(tx, contact).await? {
                    return Err(StoreError::NotFound(format!("no user {contact}")).into());
                }
                execute(
                    tx,
                    "INSERT INTO contacts (owner, contact, created_at) VALUES ($1, $2, $3)
                     ON CONFLICT DO NOTHING",
                    &[&id_to_sql(owner), &id_to_sql(contact), &now],
                )
                .await?;
                Ok(has_contact(tx, contact, owner).await?)
            })
        })
        .await
    }

    async fn remove_contact(&self, owner: Id, contact: Id) -> StoreResult<bool> {
        self.write(move |tx| {
            Box::pin(async move {
                let removed = execute(
                    tx,
                    "DELETE FROM contacts WHERE owner = $1 AND contact = $2",
                    &[&id_to_sql(owner), &id_to_sql(contact)],
                )
                .await?;
                Ok(removed > 0 && has_contact(tx, contact, owner).await?)
            })
        })
        .await
    }

    async fn contacts(&self, owner: Id) -> StoreResult<Vec<ContactEntry>> {
        self.run(move |c| {
            Box::pin(async move {
                let rows = query(
                    c,
                    "SELECT c.contact, u.username,
                            EXISTS (SELECT 1 FROM contacts r
                                    WHERE r.owner = c.contact AND r.contact = c.owner),
                            EXISTS (SELECT 1 FROM blocks b
                                    WHERE (b.owner = c.owner AND b.blocked = c.contact)
                                       OR (b.owner = c.contact AND b.blocked = c.owner)),
                            u.last_seen
                     FROM contacts c JOIN users u ON u.id = c.contact
                     WHERE c.owner = $1 ORDER BY u.username_key",
                    &[&id_to_sql(owner)],
                )
                .await?;
                let mut entries = Vec::with_capacity(rows.len());
                for r in rows {
                    entries.push(ContactEntry {
                        user_id: id_col(&r, 0)?,
                        username: r.try_get(1)?,
                        mutual: r.try_get(2)?,
                        blocked: r.try_get(3)?,
                        last_seen: r.try_get(4)?,
                    });
                }
                Ok(entries)
            })
        })
        .await
    }

    async fn friends(&self, user: Id) -> StoreResult<Vec<Id>> {
        self.run(move |c| {
            Box::pin(async move {
                let rows = query(
                    c,
                    "SELECT c.contact FROM contacts c
                     JOIN contacts r ON r.owner = c.contact AND r.contact = c.owner
                     WHERE c.owner = $1
                       AND NOT EXISTS (SELECT 1 FROM blocks b
                                       WHERE (b.owner = $1 AND b.blocked = c.contact)
                                          OR (b.owner = c.contact AND b.blocked = $1))",
                    &[&id_to_sql(user)],
                )
                .await?;
                Ok(rows
                    .iter()
                    .map(|r| id_col(r, 0))
                    .collect::<Result<Vec<_>, _>>()?)
            })
        })
        .await
    }

    async fn set_block(&self, owner: Id, other: Id, blocked: bool, now: i64) -> StoreResult<()> {
        self.write(move |tx| {
            Box::pin(async move {
                if !user_exists(tx, other).await? {
                    return Err(StoreError::NotFound(format!("no user {other}")).into());
                }
                if blocked {
                    execute(
                        tx,
                        "INSERT INTO blocks (owner, blocked, created_at) VALUES ($1, $2, $3)
                         ON CONFLICT DO NOTHING",
                        &[&id_to_sql(owner), &id_to_sql(other), &now],
                    )
                    .await?;
                } else {
                    execute(
                        tx,
                        "DELETE FROM blocks WHERE owner = $1 AND blocked = $2",
                        &[&id_to_sql(owner), &id_to_sql(other)],
                    )
                    .await?;
                }
                Ok(())
            })
        })
        .await
    }

    async fn are_friends(&self, a: Id, b: Id) -> StoreResult<bool> {
        let sql = format!("SELECT {}", friends_sql("$1", "$2"));
        self.run(move |c| {
            let sql = sql.clone();
            Box::pin(async move {
                let row = query_opt(c, &sql, &[&id_to_sql(a), &id_to_sql(b)]).await?;
                Ok(row
                    .map(|r| r.try_get::<_, bool>(0))
                    .transpose()?
                    .unwrap_or(false))
            })
        })
        .await
    }

    async fn blocked_between(&self, a: Id, b: Id) -> StoreResult<bool> {
        self.run(move |c| {
            Box::pin(async move {
                Ok(query_opt(
                    c,
                    "SELECT 1 FROM blocks WHERE (owner = $1 AND blocked = $2)
                                             OR (owner = $2 AND blocked = $1)",
                    &[&id_to_sql(a), &id_to_sql(b)],
                )
                .await?
                .is_some())
            })
        })
        .await
    }

    async fn set_last_seen(&self, user: Id, ts: i64) -> StoreResult<()> {
        self.write(move |tx| {
            Box::pin(async move {
                execute(
                    tx,
                    "UPDATE users SET last_seen = GREATEST(last_seen, $2) WHERE id = $1",
                    &[&id_to_sql(user), &ts],
                )
                .await?;
                Ok(())
            })
        })
        .await
    }
}
