//! [`GrpcDirectoryService`]: a client of a `tvix.castore.v1.DirectoryService` server.

use crate::GrpcChannel;
use std::collections::HashSet;

use async_trait::async_trait;
use futures::StreamExt;
use futures::stream::BoxStream;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::{DirectoryPutter, DirectoryService};
use crate::proto::directory_service_client::DirectoryServiceClient;
use crate::upload::{Upload, upload};
use crate::{B3Digest, Directory, Error, proto};

/// Talks to a remote DirectoryService. Everything received is validated and checked
/// against the digests asked for; uploads are validated by the server.
#[derive(Clone)]
pub struct GrpcDirectoryService {
    client: DirectoryServiceClient<GrpcChannel>,
    channel: GrpcChannel,
}

impl GrpcDirectoryService {
    /// A client on `channel`.
    pub fn new(channel: GrpcChannel) -> Self {
        Self {
            client: DirectoryServiceClient::new(channel.clone())
                .max_decoding_message_size(crate::channel::MAX_DECODING_MESSAGE_SIZE),
            channel,
        }
    }

    async fn open(
        &self,
        digest: &B3Digest,
        recursive: bool,
    ) -> Result<Option<tonic::Streaming<proto::Directory>>, Error> {
        let request = proto::GetDirectoryRequest {
            by_what: Some(proto::get_directory_request::ByWhat::Digest(
                digest.to_bytes(),
            )),
            recursive,
        };
        match self.client.clone().get(request).await {
            Ok(response) => Ok(Some(response.into_inner())),
            Err(status) if status.code() == tonic::Code::NotFound => Ok(None),
            Err(status) => Err(Error::Remote(status)),
        }
    }
}

fn from_server(d: proto::Directory) -> Result<Directory, Error> {
    Directory::try_from(d)
        .map_err(|e| Error::Corrupt(format!("server sent an invalid directory: {e}")))
}

fn not_found(digest: B3Digest) -> Error {
    Error::NotFound {
        what: "directory",
        digest,
    }
}

#[async_trait]
impl DirectoryService for GrpcDirectoryService {
    async fn get(&self, digest: &B3Digest) -> Result<Option<Directory>, Error> {
        let Some(mut stream) = self.open(digest, false).await? else {
            return Ok(None);
        };
        let first = match stream.next().await {
            None => return Ok(None),
            Some(Err(status)) if status.code() == tonic::Code::NotFound => return Ok(None),
            Some(r) => from_server(r?)?,
        };
        let got = first.digest();
        if got != *digest {
            return Err(Error::Corrupt(format!(
                "asked the server for directory {digest}, got {got}"
            )));
        }
        Ok(Some(first))
    }

    fn get_recursive(&self, root: &B3Digest) -> BoxStream<'_, Result<Directory, Error>> {
        let root = *root;
        Box::pin(async_stream::try_stream! {
            let Some(mut stream) = self.open(&root, true).await? else {
                Err(not_found(root))?;
                return;
            };
            // Digests referenced by what came so far and not received yet.
            let mut expected = HashSet::from([root]);
            let mut received = HashSet::new();
            while let Some(next) = stream.next().await {
                let dir = match next {
                    Err(status) if status.code() == tonic::Code::NotFound && received.is_empty() => {
                        Err(not_found(root))?
                    }
                    other => from_server(other?)?,
                };
                let digest = dir.digest();
                if !expected.remove(&digest) {
                    Err(Error::Corrupt(format!(
                        "server sent directory {digest} in the closure of {root}, unasked or twice"
                    )))?;
                }
                received.insert(digest);
                for (_, child, _) in dir.directories() {
                    if !received.contains(child) {
                        expected.insert(*child);
                    }
                }
                yield dir;
            }
            // An empty stream is how servers (tvix's, cairn's) say the root is
            // absent; earlier cairn servers answered NOT_FOUND, handled above.
            if received.is_empty() {
                Err(not_found(root))?;
            }
            if !expected.is_empty() {
                Err(Error::Corrupt(format!(
                    "server's closure of {root} lacks {} referenced directories",
                    expected.len()
                )))?;
            }
        })
    }

    fn put_multiple_start(&self) -> Box<dyn DirectoryPutter + '_> {
        Box::new(GrpcDirectoryPutter {
            channel: self.channel.clone(),
            call: None,
            failed: false,
        })
    }
}

enum Msg {
    Dir(proto::Directory),
    Finish,
}

type PutTask = JoinHandle<Result<proto::PutDirectoryResponse, tonic::Status>>;

/// Streams a closure to the server, which validates it. The call starts with the
/// first directory; it only ends cleanly on close, and fails (nothing stored, see
/// [`crate::upload`]) when the putter is dropped before.
struct GrpcDirectoryPutter {
    channel: GrpcChannel,
    call: Option<(mpsc::Sender<Msg>, PutTask)>,
    failed: bool,
}

impl GrpcDirectoryPutter {
    /// The server's answer once the call ended (early on a rejection).
    async fn outcome(&mut self) -> Result<proto::PutDirectoryResponse, Error> {
        self.failed = true;
        let (_, task) = self.call.take().ok_or_else(|| {
            Error::InvalidArgument("directory putter already closed or failed".into())
        })?;
        Ok(task
            .await
            .map_err(|e| Error::Io(std::io::Error::other(e)))??)
    }
}

#[async_trait]
impl DirectoryPutter for GrpcDirectoryPutter {
    async fn put(&mut self, directory: Directory) -> Result<(), Error> {
        if self.failed {
            return Err(Error::InvalidArgument(
                "directory putter already closed or failed".into(),
            ));
        }
        let (tx, _) = self.call.get_or_insert_with(|| {
            let (tx, mut rx) = mpsc::channel::<Msg>(64);
            let body = async_stream::stream! {
                while let Some(msg) = rx.recv().await {
                    match msg {
                        Msg::Dir(d) => yield Upload::Item(d),
                        Msg::Finish => return,
                    }
                }
                // Sender gone without Finish: the putter was dropped.
                yield Upload::Abandon;
            };
            let task = tokio::spawn(upload(
                self.channel.clone(),
                "tvix.castore.v1.DirectoryService",
                "Put",
                "/tvix.castore.v1.DirectoryService/Put",
                body,
            ));
            (tx, task)
        });
        if tx.send(Msg::Dir(directory.to_proto())).await.is_err() {
            // The server ended the call: it rejected something.
            return match self.outcome().await {
                Err(e) => Err(e),
                Ok(_) => Err(Error::Corrupt(
                    "server accepted the closure before it was complete".into(),
                )),
            };
        }
        Ok(())
    }

    async fn close(&mut self) -> Result<B3Digest, Error> {
        if self.failed {
            return Err(Error::InvalidArgument(
                "directory putter already closed or failed".into(),
            ));
        }
        let Some((tx, _)) = &self.call else {
            self.failed = true;
            return Err(Error::InvalidArgument("no directories were sent".into()));
        };
        // A send error means the call already ended; the outcome says how.
        let _ = tx.send(Msg::Finish).await;
        let response = self.outcome().await?;
        B3Digest::try_from(&response.root_digest)
            .map_err(|e| Error::Corrupt(format!("server answered a malformed root digest: {e}")))
    }
}
