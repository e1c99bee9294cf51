//! Notes, stored through the request's pooled connection, on PostgreSQL or SQLite.

use std::future::Future;

use pool_core::postgres::{tokio_postgres::NoTls, PostgresManager};
use pool_core::sqlite::{rusqlite, SqliteManager};
use pool_core::ManageConnection;
use serde::{Deserialize, Serialize};

/// A note.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Note {
    pub(crate) id: i64,
    pub(crate) title: String,
    pub(crate) body: String,
}

/// What a client sends to create a note.
#[derive(Debug, Deserialize)]
pub(crate) struct NewNote {
    pub(crate) title: String,
    #[serde(default)]
    pub(crate) body: String,
}

/// The driver's error (reported to the breaker and logged by `DbConn::check`, never shown to
/// clients).
pub(crate) type StoreError<S> = <<S as Store>::Manager as ManageConnection>::Error;

/// One backend's queries.
pub(crate) trait Store: Send + Sync + 'static {
    type Manager: ManageConnection<Error: std::error::Error + Send + Sync + 'static>;

    fn name() -> &'static str;

    fn migrate(
        conn: &mut <Self::Manager as ManageConnection>::Connection,
    ) -> impl Future<Output = Result<(), StoreError<Self>>> + Send;

    fn create(
        conn: &mut <Self::Manager as ManageConnection>::Connection,
        note: NewNote,
    ) -> impl Future<Output = Result<Note, StoreError<Self>>> + Send;

    fn list(
        conn: &mut <Self::Manager as ManageConnection>::Connection,
    ) -> impl Future<Output = Result<Vec<Note>, StoreError<Self>>> + Send;

    fn get(
        conn: &mut <Self::Manager as ManageConnection>::Connection,
        id: i64,
    ) -> impl Future<Output = Result<Option<Note>, StoreError<Self>>> + Send;
}

pub(crate) struct Postgres;

fn pg_note(row: &pool_core::postgres::tokio_postgres::Row) -> Note {
    Note {
        id: row.get(0),
        title: row.get(1),
        body: row.get(2),
    }
}

impl Store for Postgres {
    type Manager = PostgresManager<NoTls>;

    fn name() -> &'static str {
        "PostgreSQL"
    }

    async fn migrate(
        conn: &mut pool_core::postgres::PostgresConnection,
    ) -> Result<(), StoreError<Self>> {
        conn.batch_execute(
            "create table if not exists notes (
                 id bigserial primary key,
                 title text not null,
                 body text not null default ''
             )",
        )
        .await
    }

    async fn create(
        conn: &mut pool_core::postgres::PostgresConnection,
        note: NewNote,
    ) -> Result<Note, StoreError<Self>> {
        let row = conn
            .query_one(
                "insert into notes (title, body) values ($1, $2) returning id",
                &[&note.title, &note.body],
            )
            .await?;
        Ok(Note {
            id: row.get(0),
            title: note.title,
            body: note.body,
        })
    }

    async fn list(
        conn: &mut pool_core::postgres::PostgresConnection,
    ) -> Result<Vec<Note>, StoreError<Self>> {
        let rows = conn
            .query("select id, title, body from notes order by id", &[])
            .await?;
        Ok(rows.iter().map(pg_note).collect())
    }

    async fn get(
        conn: &mut pool_core::postgres::PostgresConnection,
        id: i64,
    ) -> Result<Option<Note>, StoreError<Self>> {
        let row = conn
            .query_opt("select id, title, body from notes where id = $1", &[&id])
            .await?;
        Ok(row.as_ref().map(pg_note))
    }
}

pub(crate) struct Sqlite;

fn note_from(row: &rusqlite::Row<'_>) -> rusqlite::Result<Note> {
    Ok(Note {
        id: row.get(0)?,
        title: row.get(1)?,
        body: row.get(2)?,
    })
}

impl Store for Sqlite {
    type Manager = SqliteManager;

    fn name() -> &'static str {
        "SQLite (embedded)"
    }

    async fn migrate(
        conn: &mut pool_core::sqlite::SqliteConnection,
    ) -> Result<(), StoreError<Self>> {
        conn.call(|c| {
            c.execute_batch(
                "create table if not exists notes (
                     id integer primary key autoincrement,
                     title text not null,
                     body text not null default ''
                 )",
            )
        })
        .await
    }

    async fn create(
        conn: &mut pool_core::sqlite::SqliteConnection,
        note: NewNote,
    ) -> Result<Note, StoreError<Self>> {
        conn.call(move |c| {
            c.execute(
                "insert into notes (title, body) values (?1, ?2)",
                (&note.title, &note.body),
            )?;
            Ok(Note {
                id: c.last_insert_rowid(),
                title: note.title,
                body: note.body,
            })
        })
        .await
    }

    async fn list(
        conn: &mut pool_core::sqlite::SqliteConnection,
    ) -> Result<Vec<Note>, StoreError<Self>> {
        conn.call(|c| {
            let mut stmt = c.prepare("select id, title, body from notes order by id")?;
            let notes = stmt
                .query_map([], note_from)?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(notes)
        })
        .await
    }

    async fn get(
        conn: &mut pool_core::sqlite::SqliteConnection,
        id: i64,
    ) -> Result<Option<Note>, StoreError<Self>> {
        conn.call(move |c| {
            let mut stmt = c.prepare("select id, title, body from notes where id = ?1")?;
            let mut rows = stmt.query_map([id], note_from)?;
            rows.next().transpose()
        })
        .await
    }
}
