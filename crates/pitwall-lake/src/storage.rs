//! Where table files live: a local directory (`file://`) or an S3-compatible object
//! store (`s3://bucket/prefix`: AWS, MinIO, garage, Ceph), behind iceberg's `Storage`
//! trait so the commit path, the writers and every reader (DataFusion scans included)
//! use the same one. S3 goes through the `object_store` crate.

use std::collections::HashMap;
use std::fmt;
use std::ops::Range;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;
use iceberg::io::{
    FileMetadata, FileRead, FileWrite, InputFile, LocalFsStorage, OutputFile, Storage,
    StorageConfig, StorageFactory,
};
use iceberg::{Error as IcebergError, ErrorKind};
use object_store::aws::AmazonS3Builder;
use object_store::buffered::BufWriter;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt};
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;

/// How to reach an S3-compatible store (`[lake.s3]`). Empty credentials are taken from
/// the usual AWS environment variables (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
/// `AWS_SESSION_TOKEN`, `AWS_REGION`, `AWS_ENDPOINT_URL`).
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct S3Config {
    /// `http://127.0.0.1:3900` for a local server; empty for AWS itself.
    pub endpoint: String,
    /// The region the bucket is in (S3-compatible servers usually accept any).
    pub region: String,
    /// `http://endpoint/bucket/key` instead of `http://bucket.endpoint/key`: what MinIO
    /// and garage serve.
    pub path_style: bool,
    /// Access key id; empty = `AWS_ACCESS_KEY_ID`.
    pub access_key_id: String,
    /// Secret access key; empty = `AWS_SECRET_ACCESS_KEY`.
    pub secret_access_key: String,
    /// Session token for temporary credentials; empty = `AWS_SESSION_TOKEN` (if set).
    pub session_token: String,
}

impl Default for S3Config {
    fn default() -> Self {
        S3Config {
            endpoint: String::new(),
            region: "us-east-1".to_owned(),
            path_style: false,
            access_key_id: String::new(),
            secret_access_key: String::new(),
            session_token: String::new(),
        }
    }
}

impl fmt::Debug for S3Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Config")
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("path_style", &self.path_style)
            .field("access_key_id", &self.access_key_id)
            .field(
                "secret_access_key",
                &if self.secret_access_key.is_empty() {
                    ""
                } else {
                    "***"
                },
            )
            .finish_non_exhaustive()
    }
}

impl S3Config {
    /// The settings with empty entries filled from the AWS environment variables.
    pub fn resolved(&self) -> S3Config {
        let env = |key: &str| std::env::var(key).ok().filter(|v| !v.is_empty());
        let or_env = |value: &str, key: &str| {
            if value.is_empty() {
                env(key).unwrap_or_default()
            } else {
                value.to_owned()
            }
        };
        S3Config {
            endpoint: or_env(&self.endpoint, "AWS_ENDPOINT_URL"),
            region: if self.region.is_empty() {
                env("AWS_REGION").unwrap_or_else(|| "us-east-1".into())
            } else {
                self.region.clone()
            },
            path_style: self.path_style,
            access_key_id: or_env(&self.access_key_id, "AWS_ACCESS_KEY_ID"),
            secret_access_key: or_env(&self.secret_access_key, "AWS_SECRET_ACCESS_KEY"),
            session_token: or_env(&self.session_token, "AWS_SESSION_TOKEN"),
        }
    }

    /// A client for `bucket`.
    pub fn store(&self, bucket: &str) -> Result<Arc<dyn ObjectStore>, object_store::Error> {
        // A request gives up after about 15 s (object_store's default is 3 minutes): a
        // commit that cannot reach the store fails soon, the pipeline says so on
        // /health and tries the whole commit again with its own backoff, for as long
        // as the outage lasts.
        let retry = object_store::RetryConfig {
            backoff: object_store::BackoffConfig {
                init_backoff: std::time::Duration::from_millis(100),
                max_backoff: std::time::Duration::from_secs(4),
                base: 2.0,
            },
            max_retries: 5,
            retry_timeout: std::time::Duration::from_secs(15),
        };
        let mut b = AmazonS3Builder::new()
            .with_bucket_name(bucket)
            .with_region(&self.region)
            .with_virtual_hosted_style_request(!self.path_style)
            .with_retry(retry);
        if !self.endpoint.is_empty() {
            b = b
                .with_endpoint(&self.endpoint)
                .with_allow_http(self.endpoint.starts_with("http://"));
        }
        if !self.access_key_id.is_empty() {
            b = b
                .with_access_key_id(&self.access_key_id)
                .with_secret_access_key(&self.secret_access_key);
        }
        if !self.session_token.is_empty() {
            b = b.with_token(&self.session_token);
        }
        Ok(Arc::new(b.build()?))
    }
}

/// Splits `s3://bucket/key` (also `s3a://`, `s3n://`) into the bucket and the key.
pub fn split_s3(location: &str) -> Option<(&str, &str)> {
    let rest = ["s3://", "s3a://", "s3n://"]
        .iter()
        .find_map(|s| location.strip_prefix(s))?;
    let (bucket, key) = rest.split_once('/').unwrap_or((rest, ""));
    (!bucket.is_empty()).then_some((bucket, key))
}

/// Builds [`LakeStorage`] for the catalog's tables.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct LakeStorageFactory {
    /// Settings for `s3://` locations.
    pub s3: S3Config,
}

#[typetag::serde]
impl StorageFactory for LakeStorageFactory {
    fn build(&self, _config: &StorageConfig) -> iceberg::Result<Arc<dyn Storage>> {
        Ok(Arc::new(LakeStorage::new(self.s3.resolved())))
    }
}

/// Local files through iceberg's own storage; `s3://` through `object_store`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LakeStorage {
    s3: S3Config,
}

/// S3 clients by settings and bucket, shared by the whole process: iceberg makes a
/// storage for every table it loads, and a new client costs a connection and loading
/// the system's root certificates (tens of milliseconds).
type Clients = HashMap<(String, String), Arc<dyn ObjectStore>>;
static CLIENTS: std::sync::LazyLock<Mutex<Clients>> = std::sync::LazyLock::new(Default::default);

impl LakeStorage {
    /// Storage with these S3 settings (already resolved).
    pub fn new(s3: S3Config) -> Self {
        LakeStorage { s3 }
    }

    /// The store and key of an `s3://` location, or `None` for a local one.
    pub fn object(
        &self,
        location: &str,
    ) -> iceberg::Result<Option<(Arc<dyn ObjectStore>, ObjectPath)>> {
        let Some((bucket, key)) = split_s3(location) else {
            return Ok(None);
        };
        let settings = serde_json::to_string(&self.s3).map_err(|e| error(location, e))?;
        let mut clients = CLIENTS.lock().unwrap_or_else(|e| e.into_inner());
        let store = match clients.get(&(settings.clone(), bucket.to_owned())) {
            Some(s) => Arc::clone(s),
            None => {
                let s = self.s3.store(bucket).map_err(|e| error(location, e))?;
                clients.insert((settings, bucket.to_owned()), Arc::clone(&s));
                s
            }
        };
        Ok(Some((store, ObjectPath::from(key))))
    }
}

fn error(location: &str, e: impl fmt::Display) -> IcebergError {
    IcebergError::new(ErrorKind::Unexpected, format!("{location}: {e}"))
}

/// What a read of a file that is not there says, on a local disk or S3 alike.
const NO_SUCH_FILE: &str = "no such file";

/// The error for reading `location`, which is not there.
fn missing(location: &str) -> IcebergError {
    IcebergError::new(
        ErrorKind::DataInvalid,
        format!("{location}: {NO_SUCH_FILE}"),
    )
}

/// Whether `e` says a file that was read is not there (deleted after it was found:
/// a metadata file superseded and removed by a commit between reading the catalog's
/// pointer and the file).
pub(crate) fn is_missing(e: &IcebergError) -> bool {
    e.kind() == ErrorKind::DataInvalid && e.message().ends_with(NO_SUCH_FILE)
}

/// A local read that failed: [`missing`] if the file is not there, else the error.
async fn local_failure(path: &str, e: IcebergError) -> IcebergError {
    match LocalFsStorage.exists(path).await {
        Ok(false) => missing(path),
        _ => e,
    }
}

/// An object store read that failed, as an iceberg error.
fn object_failure(path: &str, e: object_store::Error) -> IcebergError {
    match e {
        object_store::Error::NotFound { .. } => missing(path),
        e => error(path, e),
    }
}

#[async_trait]
#[typetag::serde]
impl Storage for LakeStorage {
    async fn exists(&self, path: &str) -> iceberg::Result<bool> {
        match self.object(path)? {
            None => LocalFsStorage.exists(path).await,
            Some((store, key)) => match store.head(&key).await {
                Ok(_) => Ok(true),
                Err(object_store::Error::NotFound { .. }) => Ok(false),
                Err(e) => Err(error(path, e)),
            },
        }
    }

    async fn metadata(&self, path: &str) -> iceberg::Result<FileMetadata> {
        match self.object(path)? {
            None => LocalFsStorage.metadata(path).await,
            Some((store, key)) => {
                let meta = store.head(&key).await.map_err(|e| error(path, e))?;
                Ok(FileMetadata { size: meta.size })
            }
        }
    }

    async fn read(&self, path: &str) -> iceberg::Result<Bytes> {
        match self.object(path)? {
            None => match LocalFsStorage.read(path).await {
                Ok(bytes) => Ok(bytes),
                Err(e) => Err(local_failure(path, e).await),
            },
            Some((store, key)) => {
                let got = store.get(&key).await.map_err(|e| object_failure(path, e))?;
                got.bytes().await.map_err(|e| error(path, e))
            }
        }
    }

    async fn reader(&self, path: &str) -> iceberg::Result<Box<dyn FileRead>> {
        match self.object(path)? {
            None => LocalFsStorage.reader(path).await,
            Some((store, key)) => Ok(Box::new(ObjectRead {
                store,
                key,
                location: path.to_owned(),
            })),
        }
    }

    async fn write(&self, path: &str, bs: Bytes) -> iceberg::Result<()> {
        match self.object(path)? {
            None => LocalFsStorage.write(path, bs).await,
            Some((store, key)) => {
                store
                    .put(&key, bs.into())
                    .await
                    .map_err(|e| error(path, e))?;
                Ok(())
            }
        }
    }

    async fn writer(&self, path: &str) -> iceberg::Result<Box<dyn FileWrite>> {
        match self.object(path)? {
            None => LocalFsStorage.writer(path).await,
            Some((store, key)) => Ok(Box::new(ObjectWrite {
                // Files up to 16 MiB are one PUT; larger ones go up in parts of that size.
                writer: Some(BufWriter::with_capacity(store, key, 16 << 20)),
                location: path.to_owned(),
            })),
        }
    }

    async fn delete(&self, path: &str) -> iceberg::Result<()> {
        match self.object(path)? {
            None => LocalFsStorage.delete(path).await,
            Some((store, key)) => match store.delete(&key).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
                Err(e) => Err(error(path, e)),
            },
        }
    }

    async fn delete_prefix(&self, path: &str) -> iceberg::Result<()> {
        match self.object(path)? {
            None => LocalFsStorage.delete_prefix(path).await,
            Some((store, key)) => {
                let mut listing = store.list(Some(&key));
                while let Some(meta) = listing.next().await {
                    let meta = meta.map_err(|e| error(path, e))?;
                    match store.delete(&meta.location).await {
                        Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                        Err(e) => return Err(error(path, e)),
                    }
                }
                Ok(())
            }
        }
    }

    async fn delete_stream(&self, mut paths: BoxStream<'static, String>) -> iceberg::Result<()> {
        while let Some(path) = paths.next().await {
            self.delete(&path).await?;
        }
        Ok(())
    }

    fn new_input(&self, path: &str) -> iceberg::Result<InputFile> {
        Ok(InputFile::new(Arc::new(self.clone()), path.to_owned()))
    }

    fn new_output(&self, path: &str) -> iceberg::Result<OutputFile> {
        Ok(OutputFile::new(Arc::new(self.clone()), path.to_owned()))
    }
}

impl LakeStorage {
    /// Every file under `prefix` (a directory or an `s3://` prefix), with when it was
    /// last written (milliseconds since the epoch).
    pub async fn list(&self, prefix: &str) -> iceberg::Result<Vec<(String, i64)>> {
        let mut out = Vec::new();
        match self.object(prefix)? {
            Some((store, key)) => {
                let (bucket, _) = split_s3(prefix).unwrap_or_default();
                let mut listing = store.list(Some(&key));
                while let Some(meta) = listing.next().await {
                    let meta = meta.map_err(|e| error(prefix, e))?;
                    out.push((
                        format!("s3://{bucket}/{}", meta.location),
                        meta.last_modified.timestamp_millis(),
                    ));
                }
            }
            None => {
                let root = local_path(prefix);
                let mut dirs = vec![root];
                while let Some(dir) = dirs.pop() {
                    let entries = match std::fs::read_dir(&dir) {
                        Ok(e) => e,
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                        Err(e) => return Err(error(&dir.display().to_string(), e)),
                    };
                    for entry in entries {
                        let entry = entry.map_err(|e| error(&dir.display().to_string(), e))?;
                        let meta = entry
                            .metadata()
                            .map_err(|e| error(&entry.path().display().to_string(), e))?;
                        if meta.is_dir() {
                            dirs.push(entry.path());
                        } else {
                            let modified = meta
                                .modified()
                                .ok()
                                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                                .map_or(0, |d| d.as_millis() as i64);
                            out.push((format!("file://{}", entry.path().display()), modified));
                        }
                    }
                }
            }
        }
        Ok(out)
    }
}

/// `file:///x`, `file:/x` or `/x` as a local path.
fn local_path(path: &str) -> std::path::PathBuf {
    let p = path
        .strip_prefix("file://")
        .or_else(|| path.strip_prefix("file:"))
        .unwrap_or(path);
    std::path::PathBuf::from(if p.starts_with('/') {
        p.to_owned()
    } else {
        format!("/{p}")
    })
}

struct ObjectRead {
    store: Arc<dyn ObjectStore>,
    key: ObjectPath,
    location: String,
}

#[async_trait]
impl FileRead for ObjectRead {
    async fn read(&self, range: Range<u64>) -> iceberg::Result<Bytes> {
        self.store
            .get_range(&self.key, range)
            .await
            .map_err(|e| error(&self.location, e))
    }
}

struct ObjectWrite {
    writer: Option<BufWriter>,
    location: String,
}

#[async_trait]
impl FileWrite for ObjectWrite {
    async fn write(&mut self, bs: Bytes) -> iceberg::Result<()> {
        let w = self
            .writer
            .as_mut()
            .ok_or_else(|| error(&self.location, "write after close"))?;
        w.put(bs).await.map_err(|e| error(&self.location, e))
    }

    async fn close(&mut self) -> iceberg::Result<()> {
        let mut w = self
            .writer
            .take()
            .ok_or_else(|| error(&self.location, "closed twice"))?;
        w.shutdown().await.map_err(|e| error(&self.location, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s3_locations_split_into_bucket_and_key() {
        assert_eq!(
            split_s3("s3://lake/warehouse/raw/events"),
            Some(("lake", "warehouse/raw/events"))
        );
        assert_eq!(split_s3("s3a://lake/x"), Some(("lake", "x")));
        assert_eq!(split_s3("s3://lake"), Some(("lake", "")));
        assert_eq!(split_s3("s3:///x"), None);
        assert_eq!(split_s3("file:///tmp/x"), None);
    }

    #[test]
    fn secrets_stay_out_of_debug_output() {
        let c = S3Config {
            secret_access_key: "hunter2".into(),
            ..S3Config::default()
        };
        assert!(!format!("{c:?}").contains("hunter2"));
    }

    /// A file that is not there reads as missing (what a load retries on); any other
    /// failure does not.
    #[tokio::test]
    async fn a_missing_local_file_reads_as_missing() {
        let dir = tempfile::tempdir().unwrap();
        let storage = LakeStorage::new(S3Config::default());
        let gone = format!("file://{}/v7.metadata.json", dir.path().display());
        let e = storage.read(&gone).await.unwrap_err();
        assert!(is_missing(&e), "{e}");
        assert!(e.to_string().contains("v7.metadata.json"), "{e}");
        // A directory is there but cannot be read as a file.
        let e = storage
            .read(&format!("file://{}", dir.path().display()))
            .await
            .unwrap_err();
        assert!(!is_missing(&e), "{e}");
    }
}
