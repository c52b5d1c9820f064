//! [`GrpcPathInfoService`]: a client of a `tvix.store.v1.PathInfoService` server.

use async_trait::async_trait;
use cairn_castore::Error;
use cairn_castore::GrpcChannel;
use futures::StreamExt;
use futures::stream::BoxStream;

use super::{PathInfo, PathInfoService};
use crate::proto;
use crate::proto::path_info_service_client::PathInfoServiceClient;

/// Talks to a remote PathInfoService. What the server sends is validated; the
/// server checks content on `put`.
#[derive(Clone)]
pub struct GrpcPathInfoService {
    client: PathInfoServiceClient<GrpcChannel>,
}

impl GrpcPathInfoService {
    /// A client on `channel`.
    pub fn new(channel: GrpcChannel) -> Self {
        Self {
            client: PathInfoServiceClient::new(channel)
                .max_decoding_message_size(cairn_castore::MAX_DECODING_MESSAGE_SIZE),
        }
    }

    /// The raw generated client, for callers that need the whole API (CalculateNAR)
    /// or want to send unvalidated messages.
    pub fn client(&self) -> PathInfoServiceClient<GrpcChannel> {
        self.client.clone()
    }
}

fn from_server(p: proto::PathInfo) -> Result<PathInfo, Error> {
    PathInfo::try_from(p)
        .map_err(|e| Error::Corrupt(format!("server sent an invalid PathInfo: {e}")))
}

#[async_trait]
impl PathInfoService for GrpcPathInfoService {
    async fn get(&self, digest: [u8; 20]) -> Result<Option<PathInfo>, Error> {
        let request = proto::GetPathInfoRequest {
            by_what: Some(proto::get_path_info_request::ByWhat::ByOutputHash(
                bytes::Bytes::copy_from_slice(&digest),
            )),
        };
        match self.client.clone().get(request).await {
            Ok(response) => {
                let info = from_server(response.into_inner())?;
                if *info.store_path.digest() != digest {
                    return Err(Error::Corrupt(format!(
                        "asked for {}, server sent {}",
                        cairn_nix::nixbase32::encode(&digest),
                        info.store_path
                    )));
                }
                Ok(Some(info))
            }
            Err(status) if status.code() == tonic::Code::NotFound => Ok(None),
            Err(status) => Err(Error::Remote(status)),
        }
    }

    async fn put(&self, info: PathInfo) -> Result<PathInfo, Error> {
        let response = self
            .client
            .clone()
            .put(proto::PathInfo::from(&info))
            .await
            .map_err(Error::Remote)?;
        let stored = from_server(response.into_inner())?;
        if stored.store_path != info.store_path {
            return Err(Error::Corrupt(format!(
                "put {}, server answered with {}",
                info.store_path, stored.store_path
            )));
        }
        Ok(stored)
    }

    fn list(&self) -> BoxStream<'static, Result<PathInfo, Error>> {
        let mut client = self.client.clone();
        Box::pin(async_stream::try_stream! {
            let mut stream = client
                .list(proto::ListPathInfoRequest {})
                .await
                .map_err(Error::Remote)?
                .into_inner();
            while let Some(item) = stream.next().await {
                yield from_server(item.map_err(Error::Remote)?)?;
            }
        })
    }
}
