//! The replication connection in CopyBoth mode: WAL messages in, status updates out.

use bytes::{Bytes, BytesMut};
use postgres_protocol::message::{backend::Message, frontend};
use tokio::io::AsyncWriteExt;
use tracing::warn;

use super::client::{proto, Conn};
use super::error::db_error;
use super::protocol::{self, Frame, ReplicationMessage};
use super::ReplicationError;
use crate::lsn::Lsn;

/// A connection in CopyBoth mode: WAL messages in, status updates out.
pub struct ReplicationStream {
    conn: Conn,
    status: BytesMut,
}

impl ReplicationStream {
    /// The connection, now in CopyBoth mode.
    pub(super) fn new(conn: Conn) -> Self {
        ReplicationStream {
            conn,
            status: BytesMut::with_capacity(64),
        }
    }

    /// The next replication message. Cancel-safe (usable in `select!`).
    pub async fn recv(&mut self) -> Result<ReplicationMessage, ReplicationError> {
        loop {
            let frame = self.conn.frame().await?;
            if let Some(m) = Self::message(frame) {
                return m;
            }
        }
    }

    /// The next replication message if it has already been read from the socket; `None`:
    /// wait with [`ReplicationStream::recv`].
    pub fn try_recv(&mut self) -> Option<Result<ReplicationMessage, ReplicationError>> {
        loop {
            let frame = match protocol::next_frame(&mut self.conn.rbuf) {
                Ok(Some(f)) => f,
                Ok(None) => return None,
                Err(e) => return Some(Err(e.into())),
            };
            if let Some(m) = Self::message(frame) {
                return Some(m);
            }
        }
    }

    /// What a frame of the stream means: a message, an error, or nothing (a notice).
    fn message(frame: Frame) -> Option<Result<ReplicationMessage, ReplicationError>> {
        match frame {
            Frame::Message(Message::CopyData(body)) => {
                Some(protocol::decode_copy_data(body.into_bytes()).map_err(Into::into))
            }
            Frame::Message(Message::ErrorResponse(body)) => {
                Some(Err(ReplicationError::Server(db_error(&mut body.fields()))))
            }
            Frame::Message(Message::CopyDone) => Some(Err(ReplicationError::Closed)),
            Frame::Message(Message::NoticeResponse(body)) => {
                warn!(notice = %db_error(&mut body.fields()), "server notice");
                None
            }
            Frame::Message(_) => None,
            Frame::CopyBothResponse => Some(Err(ReplicationError::Protocol(
                "second CopyBothResponse in stream".into(),
            ))),
        }
    }

    /// Sends a standby status update: `write` received, `flush` = `apply` = confirmed.
    pub async fn send_status(
        &mut self,
        write: Lsn,
        flush: Lsn,
        reply_requested: bool,
    ) -> Result<(), ReplicationError> {
        self.status.clear();
        protocol::encode_status_update(
            write,
            flush,
            flush,
            crate::pgtime::now(),
            reply_requested,
            &mut self.status,
        );
        let payload: Bytes = self.status.split().freeze();
        frontend::CopyData::new(payload)
            .map_err(proto)?
            .write(&mut self.conn.wbuf);
        self.conn.flush().await
    }

    /// Ends the stream politely (CopyDone, Terminate) so the slot is released at once.
    pub async fn close(&mut self) -> Result<(), ReplicationError> {
        frontend::copy_done(&mut self.conn.wbuf);
        frontend::terminate(&mut self.conn.wbuf);
        self.conn.flush().await?;
        let _ = self.conn.io.shutdown().await;
        Ok(())
    }
}
