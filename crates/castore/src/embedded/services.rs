//! [`BlobService`] and [`DirectoryService`] over an [`EmbeddedStore`].

use async_trait::async_trait;
use futures::StreamExt;

use super::{EmbeddedBlobWriter, EmbeddedError, EmbeddedStore};
use crate::directoryservice::{DirectoryCommit, ValidatingPutter};
use crate::{
    B3Digest, BlobReader, BlobService, BlobStream, BlobWriter, ChunkMeta, Directory,
    DirectoryPutter, DirectoryService, Error,
};

impl From<EmbeddedError> for Error {
    fn from(e: EmbeddedError) -> Self {
        match e {
            EmbeddedError::Corrupt(m) => Error::Corrupt(m),
            e => Error::storage(e),
        }
    }
}

#[async_trait]
impl BlobService for EmbeddedStore {
    async fn has(&self, digest: &B3Digest) -> Result<bool, Error> {
        Ok(self.has_blob(digest.as_bytes())?)
    }

    async fn open_read(&self, digest: &B3Digest) -> Result<Option<Box<dyn BlobReader>>, Error> {
        Ok(self
            .open_blob(digest.as_bytes())?
            .map(|r| Box::new(r) as Box<dyn BlobReader>))
    }

    async fn open_read_stream(
        &self,
        digest: &B3Digest,
        offset: u64,
    ) -> Result<Option<BlobStream>, Error> {
        let Some(mut reader) = self.open_blob(digest.as_bytes())? else {
            return Ok(None);
        };
        reader.set_position(offset);
        Ok(Some(
            futures::stream::poll_fn(move |cx| reader.poll_next_bytes(cx)).boxed(),
        ))
    }

    async fn open_write(&self) -> Box<dyn BlobWriter> {
        Box::new(self.blob_writer())
    }

    fn reader_memory(&self) -> u64 {
        super::reader::READER_MEMORY
    }

    async fn chunks(&self, digest: &B3Digest) -> Result<Option<Vec<ChunkMeta>>, Error> {
        Ok(self.blob_chunks(digest.as_bytes())?.map(|list| {
            list.into_iter()
                .map(|(d, size)| ChunkMeta {
                    digest: B3Digest::from(d),
                    size,
                })
                .collect()
        }))
    }
}

#[async_trait]
impl BlobWriter for EmbeddedBlobWriter {
    async fn close(&mut self) -> Result<B3Digest, Error> {
        if self.is_closed() {
            return Err(Error::InvalidArgument("blob writer already closed".into()));
        }
        let d = std::future::poll_fn(|cx| self.poll_close_blob(cx)).await?;
        Ok(B3Digest::from(d))
    }
}

#[async_trait]
impl DirectoryService for EmbeddedStore {
    async fn get(&self, digest: &B3Digest) -> Result<Option<Directory>, Error> {
        let Some(bytes) = self.get_directory(digest.as_bytes())? else {
            return Ok(None);
        };
        let dir = Directory::decode(&bytes).map_err(|e| {
            Error::Corrupt(format!("stored directory {digest} does not decode: {e}"))
        })?;
        if dir.digest() != *digest {
            return Err(Error::Corrupt(format!(
                "stored directory {digest} has another digest"
            )));
        }
        Ok(Some(dir))
    }

    fn put_multiple_start(&self) -> Box<dyn DirectoryPutter + '_> {
        Box::new(ValidatingPutter::new(self))
    }
}

#[async_trait]
impl DirectoryCommit for EmbeddedStore {
    async fn commit(&self, closure: Vec<(B3Digest, Directory)>) -> Result<(), Error> {
        let encoded = closure
            .into_iter()
            .map(|(d, dir)| (*d.as_bytes(), dir.encode()))
            .collect();
        Ok(self.put_directories(encoded).await?)
    }
}
