//! Reading a text file as a stream of large blocks.
//!
//! object_store streams a local file 8 KiB at a time, each read a hop to tokio's blocking
//! pool, so a fast decoder waits on thread wake-ups. As DataFusion's file openers do, a local
//! file is read here straight from the `File` object_store opened, a few MiB per hop; remote
//! objects keep the store's own stream.

use std::io::{Read, Seek, SeekFrom};
use std::ops::Range;

use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;
use object_store::{GetResult, GetResultPayload};

/// Bytes read from a local file per blocking call.
const BLOCK: u64 = 4 << 20;

/// The bytes of `result`, in blocks of up to [`BLOCK`] for a local file.
pub(super) fn blocks(result: GetResult) -> BoxStream<'static, object_store::Result<Bytes>> {
    let range = result.range.clone();
    match result.payload {
        GetResultPayload::File(file, path) => local(file, path, range),
        GetResultPayload::Stream(stream) => stream,
    }
}

fn local(
    file: std::fs::File,
    path: std::path::PathBuf,
    range: Range<u64>,
) -> BoxStream<'static, object_store::Result<Bytes>> {
    let end = range.end;
    futures::stream::try_unfold((file, range.start), move |(mut file, at)| {
        let path = path.clone();
        async move {
            if at >= end {
                return Ok(None);
            }
            let read = tokio::task::spawn_blocking(move || {
                file.seek(SeekFrom::Start(at))?;
                let mut block = Vec::new();
                (&mut file)
                    .take(BLOCK.min(end - at))
                    .read_to_end(&mut block)?;
                Ok::<_, std::io::Error>((file, block))
            })
            .await;
            let (file, block) = match read {
                Ok(Ok(done)) => done,
                Ok(Err(e)) => return Err(io_error(&path, e)),
                Err(e) => return Err(io_error(&path, std::io::Error::other(e))),
            };
            if block.is_empty() {
                // The file is shorter than when it was opened.
                return Ok(None);
            }
            let next = at + block.len() as u64;
            Ok(Some((Bytes::from(block), (file, next))))
        }
    })
    .boxed()
}

fn io_error(path: &std::path::Path, e: std::io::Error) -> object_store::Error {
    object_store::Error::Generic {
        store: "LocalFileSystem",
        source: format!("reading {}: {e}", path.display()).into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::ObjectStoreExt;
    use object_store::local::LocalFileSystem;
    use object_store::path::Path;

    #[tokio::test]
    async fn a_local_file_arrives_whole_in_blocks() {
        let dir = tempfile::tempdir().expect("tempdir");
        let data: Vec<u8> = (0..(BLOCK as usize * 2 + 12_345))
            .map(|i| (i % 251) as u8)
            .collect();
        std::fs::write(dir.path().join("f.json"), &data).expect("write");
        let store = LocalFileSystem::new_with_prefix(dir.path()).expect("store");
        let result = store.get(&Path::from("f.json")).await.expect("get");
        assert!(matches!(result.payload, GetResultPayload::File(..)));
        let parts: Vec<Bytes> = blocks(result).map(|b| b.expect("read")).collect().await;
        assert_eq!(parts.len(), 3);
        assert_eq!(parts.concat(), data);
    }
}
