//! Set-up shared by the LISTEN/NOTIFY tests: a pgtier for a trust user, clients that collect
//! their notifications and notices, a direct connection to the primary.
#![allow(dead_code)]

use std::time::Duration;

use futures_util::StreamExt;
use pgtier_kit::fixture::{scram_role, ConfigBuilder};
use pgtier_kit::{Cluster, Pgtier};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};
use tokio::sync::oneshot;
use tokio_postgres::{AsyncMessage, Client, NoTls, SimpleQueryMessage};

/// Longest wait for a notification that must arrive.
pub const ARRIVES: Duration = Duration::from_secs(20);

/// A notification or notice as the client saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Got {
    /// (channel, payload, sender pid).
    Note(String, String, i32),
    /// A NoticeResponse: (SQLSTATE, message).
    Notice(String, String),
}

/// A client with its asynchronous messages and, once its connection ends, why (a SQLSTATE).
pub struct Listener {
    pub c: Client,
    pub got: UnboundedReceiver<Got>,
    pub ended: oneshot::Receiver<Option<String>>,
}

/// pgtier for trust user `user`, its database `app` on the servers' database named `user`:
/// channels are per database, so tests running at once never see each other's
/// notifications.
pub fn start(user: &str, extra_global: &[&str], pool_size: u32) -> Pgtier {
    let c = Cluster::shared();
    scram_role(c, user, user).unwrap();
    c.create_role_and_db(user, user, user).unwrap();
    let mut b = ConfigBuilder::new(c)
        .user(
            user,
            &format!("auth = \"trust\"\nserver_password = \"{user}\""),
        )
        .user("admin", "password = \"admin\"")
        .global("admin_users = [\"admin\"]")
        .database(&format!("dbname = \"{user}\"\npool_size = {pool_size}"));
    for g in extra_global {
        b = b.global(g);
    }
    b.start().unwrap()
}

pub async fn listener(port: u16, user: &str) -> Listener {
    listener_dsn(&format!(
        "host=127.0.0.1 port={port} user={user} dbname=app connect_timeout=30"
    ))
    .await
}

pub async fn listener_dsn(dsn: &str) -> Listener {
    let (c, mut conn) = tokio_postgres::connect(dsn, NoTls).await.unwrap();
    let (tx, got) = unbounded_channel();
    let (end_tx, ended) = oneshot::channel();
    tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| conn.poll_message(cx));
        let mut end = None;
        while let Some(m) = messages.next().await {
            match m {
                Ok(AsyncMessage::Notification(n)) => {
                    let _ = tx.send(Got::Note(
                        n.channel().to_owned(),
                        n.payload().to_owned(),
                        n.process_id(),
                    ));
                }
                Ok(AsyncMessage::Notice(n)) => {
                    let _ = tx.send(Got::Notice(
                        n.code().code().to_owned(),
                        n.message().to_owned(),
                    ));
                }
                Ok(_) => {}
                Err(e) => {
                    end = e.as_db_error().map(|d| d.code().code().to_owned());
                    break;
                }
            }
        }
        let _ = end_tx.send(end);
    });
    Listener { c, got, ended }
}

/// A connection straight to the primary (as `user`, to the database [`start`] gave it).
pub async fn direct(user: &str) -> Client {
    let port = Cluster::shared().primary().port();
    let dsn = format!("host=127.0.0.1 port={port} user={user} password={user} dbname={user}");
    let (c, conn) = tokio_postgres::connect(&dsn, NoTls).await.unwrap();
    tokio::spawn(conn);
    c
}

pub async fn value(c: &Client, sql: &str) -> String {
    c.simple_query(sql)
        .await
        .unwrap()
        .iter()
        .find_map(|m| match m {
            SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
            _ => None,
        })
        .expect("a row")
}

pub async fn next(l: &mut Listener) -> Got {
    tokio::time::timeout(ARRIVES, l.got.recv())
        .await
        .expect("a notification within 20 s")
        .expect("connection open")
}
