//! Last words to a client: a FATAL ErrorResponse (pgtier's own, or a server's relayed
//! unchanged), delivered within a bounded time, then the socket is closed.

use std::time::Duration;

use crate::frontend::stream::ClientStream;
use bytes::BytesMut;
use tokio::io::AsyncWriteExt;

use crate::backend::{BackendError, PoolError};
use crate::protocol::messages::{error_response, Severity};
use crate::protocol::SqlState;

/// How long pgtier tries to deliver a final error before closing anyway.
const FAREWELL_TIMEOUT: Duration = Duration::from_secs(2);

/// Sends a FATAL error (bounded in time) and closes the socket.
pub async fn farewell(stream: &mut ClientStream, code: SqlState, message: &str) {
    let mut buf = BytesMut::new();
    error_response(&mut buf, Severity::Fatal, code, message);
    let _ = crate::timers::timeout(FAREWELL_TIMEOUT, async {
        stream.write_all(&buf).await?;
        stream.shutdown().await
    })
    .await;
}

/// Sends a FATAL error only if the socket takes all of it at once (never waits: for a client
/// that stopped reading); returns whether it went out.
pub fn farewell_now(stream: &mut ClientStream, code: SqlState, message: &str) -> bool {
    let mut buf = BytesMut::new();
    error_response(&mut buf, Severity::Fatal, code, message);
    // A partial write leaves a cut frame before the close: the client sees a lost connection.
    stream.try_write_all(&buf)
}

/// Sends a raw ErrorResponse frame from a server (unchanged) and closes.
pub async fn relay_farewell(stream: &mut ClientStream, frame: &[u8]) {
    let _ = crate::timers::timeout(FAREWELL_TIMEOUT, async {
        stream.write_all(frame).await?;
        stream.shutdown().await
    })
    .await;
}

/// Tells the client why it gets no server connection, then closes.
pub async fn pool_farewell(stream: &mut ClientStream, err: &PoolError) {
    match err {
        PoolError::Connect(BackendError::Refused { frame, .. }) => {
            relay_farewell(stream, frame).await
        }
        PoolError::WaitTimeout { .. } | PoolError::CapReached { .. } => {
            farewell(
                stream,
                SqlState::TOO_MANY_CONNECTIONS,
                &format!("pgtier: {err}"),
            )
            .await
        }
        PoolError::Connect(_) => {
            farewell(stream, SqlState::CANNOT_CONNECT, &format!("pgtier: {err}")).await
        }
    }
}
