//! The Iceberg REST catalog (Polaris, Nessie, Lakekeeper, Gravitino, rustberg, and the
//! managed ones): `lake.catalog = "http://host:port"`. Namespaces and tables are
//! listed, created, loaded and evolved through `iceberg-catalog-rest`; pitwall's own
//! fenced commits (appends with their offsets, compaction, expiry, backfill) go to the
//! REST commit endpoint as the spec's updates (`add-snapshot`, `set-snapshot-ref`,
//! `remove-snapshots`) with the requirements `assert-table-uuid` and
//! `assert-ref-snapshot-id`: the server applies them only if nobody committed since
//! the snapshot they were built on, and answers 409 otherwise, which is the SQL
//! catalog's compare-and-set in REST form.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::sync::Arc;

use iceberg::spec::{MAIN_BRANCH, TableMetadata};
use iceberg::{CatalogBuilder, TableIdent, TableRequirement, TableUpdate};
use iceberg_catalog_rest::{RestCatalog, RestCatalogBuilder};
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// How to talk to an Iceberg REST catalog (`[lake.rest]`).
#[derive(Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct RestConfig {
    /// The warehouse the server should use (its `warehouse` parameter: a name for
    /// Polaris and Lakekeeper, a location for others); empty = the server's default.
    pub warehouse: String,
    /// A bearer token sent on every request; empty = none (or the one `credential`
    /// is exchanged for).
    pub token: String,
    /// OAuth2 client credentials, `client_id:client_secret`, exchanged for a token at
    /// the server's `/v1/oauth/tokens` (or `oauth2-server-uri`).
    pub credential: String,
    /// The OAuth2 scope asked for with `credential`.
    pub scope: String,
    /// Where `credential` is exchanged; empty = `{catalog}/v1/oauth/tokens`.
    pub oauth2_server_uri: String,
    /// Extra HTTP headers sent on every request, e.g. `X-API-Key` or `X-Iceberg-Access-Delegation`.
    pub headers: BTreeMap<String, String>,
}

impl fmt::Debug for RestConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hide = |s: &str| if s.is_empty() { "" } else { "***" };
        f.debug_struct("RestConfig")
            .field("warehouse", &self.warehouse)
            .field("token", &hide(&self.token))
            .field("credential", &hide(&self.credential))
            .field("scope", &self.scope)
            .field("oauth2_server_uri", &self.oauth2_server_uri)
            .field(
                "headers",
                &self
                    .headers
                    .keys()
                    .map(|k| (k, "***"))
                    .collect::<BTreeMap<_, _>>(),
            )
            .finish()
    }
}

/// Whether `catalog` names a REST catalog.
pub(crate) fn is_rest(catalog: &str) -> bool {
    catalog.starts_with("http://") || catalog.starts_with("https://")
}

/// Commits to one REST catalog: the endpoint base (with the server's prefix) and the
/// headers every request carries.
#[derive(Clone)]
pub(crate) struct RestCommitter {
    http: reqwest::Client,
    /// `{uri}/v1/{prefix}/`, ready for `namespaces/…`.
    base: String,
    headers: reqwest::header::HeaderMap,
}

impl fmt::Debug for RestCommitter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RestCommitter")
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

fn unreachable(uri: &str, e: &dyn fmt::Display) -> Error {
    Error::Catalog(format!(
        "cannot use the Iceberg REST catalog at {uri}: {e}; check that it is running and reachable, and lake.rest's token, credential or headers"
    ))
}

/// Connects to the REST catalog at `uri`: exchanges the credential for a token if one
/// is given, reads the server's `/v1/config` (its prefix and overrides), and builds
/// the catalog for everything but pitwall's own commits.
pub(crate) async fn connect(
    uri: &str,
    cfg: &RestConfig,
    storage: Arc<dyn iceberg::io::StorageFactory>,
) -> Result<(RestCatalog, RestCommitter)> {
    let uri = uri.trim_end_matches('/');
    let http = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(60))
        .build()
        .map_err(|e| unreachable(uri, &e))?;
    let mut headers = reqwest::header::HeaderMap::new();
    for (k, v) in &cfg.headers {
        let name =
            reqwest::header::HeaderName::from_bytes(k.as_bytes()).map_err(|e| Error::Config {
                key: "rest.headers",
                message: format!("{k:?} is not an HTTP header name ({e})"),
            })?;
        let value = reqwest::header::HeaderValue::from_str(v).map_err(|e| Error::Config {
            key: "rest.headers",
            message: format!("the value of {k:?} cannot be sent as an HTTP header ({e})"),
        })?;
        headers.insert(name, value);
    }
    let token = if cfg.credential.is_empty() {
        cfg.token.clone()
    } else {
        fetch_token(&http, uri, cfg).await?
    };
    if !token.is_empty() {
        let value =
            reqwest::header::HeaderValue::from_str(&format!("Bearer {token}")).map_err(|e| {
                Error::Config {
                    key: "rest.token",
                    message: format!("the token cannot be sent as an HTTP header ({e})"),
                }
            })?;
        headers.insert(reqwest::header::AUTHORIZATION, value);
    }
    let mut request = http
        .get(format!("{uri}/v1/config"))
        .headers(headers.clone());
    if !cfg.warehouse.is_empty() {
        request = request.query(&[("warehouse", cfg.warehouse.as_str())]);
    }
    let response = request.send().await.map_err(|e| unreachable(uri, &e))?;
    let status = response.status();
    let body = response.text().await.map_err(|e| unreachable(uri, &e))?;
    if !status.is_success() {
        return Err(unreachable(
            uri,
            &format!("GET /v1/config answered {status}: {}", error_message(&body)),
        ));
    }
    #[derive(Deserialize, Default)]
    struct ServerConfig {
        #[serde(default)]
        defaults: HashMap<String, String>,
        #[serde(default)]
        overrides: HashMap<String, String>,
    }
    let server: ServerConfig = serde_json::from_str(&body).map_err(|e| {
        unreachable(
            uri,
            &format!("GET /v1/config gave something else than a catalog config ({e})"),
        )
    })?;
    let pick = |k: &str| {
        server
            .overrides
            .get(k)
            .or_else(|| server.defaults.get(k))
            .cloned()
    };
    let base_uri = pick("uri").unwrap_or_else(|| uri.to_owned());
    let base_uri = base_uri.trim_end_matches('/');
    let base = match pick("prefix").filter(|p| !p.is_empty()) {
        Some(prefix) => format!("{base_uri}/v1/{}/", prefix.trim_matches('/')),
        None => format!("{base_uri}/v1/"),
    };

    let mut props = HashMap::from([("uri".to_owned(), uri.to_owned())]);
    if !cfg.warehouse.is_empty() {
        props.insert("warehouse".to_owned(), cfg.warehouse.clone());
    }
    if !token.is_empty() {
        props.insert("token".to_owned(), token);
    }
    for (k, v) in &cfg.headers {
        props.insert(format!("header.{k}"), v.clone());
    }
    let catalog = RestCatalogBuilder::default()
        .with_storage_factory(storage)
        .load(crate::CATALOG_NAME, props)
        .await
        .map_err(|e| unreachable(uri, &e))?;
    Ok((
        catalog,
        RestCommitter {
            http,
            base,
            headers,
        },
    ))
}

/// The OAuth2 client-credentials exchange.
async fn fetch_token(http: &reqwest::Client, uri: &str, cfg: &RestConfig) -> Result<String> {
    let (id, secret) = cfg
        .credential
        .split_once(':')
        .unwrap_or(("", cfg.credential.as_str()));
    let endpoint = if cfg.oauth2_server_uri.is_empty() {
        format!("{uri}/v1/oauth/tokens")
    } else {
        cfg.oauth2_server_uri.clone()
    };
    let mut form = vec![
        ("grant_type", "client_credentials"),
        ("client_secret", secret),
    ];
    if !id.is_empty() {
        form.push(("client_id", id));
    }
    let scope = if cfg.scope.is_empty() {
        "catalog"
    } else {
        cfg.scope.as_str()
    };
    form.push(("scope", scope));
    let response = http
        .post(&endpoint)
        .form(&form)
        .send()
        .await
        .map_err(|e| unreachable(&endpoint, &e))?;
    let status = response.status();
    let body = response
        .text()
        .await
        .map_err(|e| unreachable(&endpoint, &e))?;
    if !status.is_success() {
        return Err(Error::Config {
            key: "rest.credential",
            message: format!(
                "{endpoint} refused the credential ({status}: {}); check the client id and secret",
                error_message(&body)
            ),
        });
    }
    #[derive(Deserialize)]
    struct Token {
        access_token: String,
    }
    serde_json::from_str::<Token>(&body)
        .map(|t| t.access_token)
        .map_err(|e| Error::Config {
            key: "rest.credential",
            message: format!("{endpoint} answered without an access_token ({e})"),
        })
}

/// The message of a REST error body (`{"error": {"message": …}}`), or the body.
fn error_message(body: &str) -> String {
    serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| {
            v.pointer("/error/message")
                .and_then(|m| m.as_str())
                .map(str::to_owned)
        })
        .unwrap_or_else(|| body.chars().take(300).collect())
}

/// The updates that turn `old` into `new`, as far as pitwall's commits change a table:
/// snapshots added and removed, and branch heads moved.
fn updates(old: &TableMetadata, new: &TableMetadata) -> Vec<TableUpdate> {
    let old_ids: HashSet<i64> = old.snapshots().map(|s| s.snapshot_id()).collect();
    let new_ids: HashSet<i64> = new.snapshots().map(|s| s.snapshot_id()).collect();
    let mut out = Vec::new();
    let mut added: Vec<_> = new
        .snapshots()
        .filter(|s| !old_ids.contains(&s.snapshot_id()))
        .collect();
    added.sort_by_key(|s| s.sequence_number());
    for s in added {
        out.push(TableUpdate::AddSnapshot {
            snapshot: s.as_ref().clone(),
        });
    }
    let mut removed: Vec<i64> = old_ids.difference(&new_ids).copied().collect();
    if !removed.is_empty() {
        removed.sort_unstable();
        out.push(TableUpdate::RemoveSnapshots {
            snapshot_ids: removed,
        });
    }
    if new.current_snapshot_id() != old.current_snapshot_id()
        && let Some(id) = new.current_snapshot_id()
    {
        out.push(TableUpdate::SetSnapshotRef {
            ref_name: MAIN_BRANCH.to_owned(),
            reference: iceberg::spec::SnapshotReference::new(
                id,
                iceberg::spec::SnapshotRetention::branch(None, None, None),
            ),
        });
    }
    out
}

impl RestCommitter {
    fn table_url(&self, ident: &TableIdent) -> String {
        let ns = ident.namespace().as_ref().join("\u{1f}");
        let enc = |s: &str| {
            s.bytes()
                .map(|b| {
                    if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                        (b as char).to_string()
                    } else {
                        format!("%{b:02X}")
                    }
                })
                .collect::<String>()
        };
        format!(
            "{}namespaces/{}/tables/{}",
            self.base,
            enc(&ns),
            enc(ident.name())
        )
    }

    /// Commits `new` over `old` if the table's main branch still is where `old` has it:
    /// true once committed, false if another writer committed first.
    pub(crate) async fn commit(
        &self,
        ident: &TableIdent,
        old: &TableMetadata,
        new: &TableMetadata,
    ) -> Result<bool> {
        let updates = updates(old, new);
        if updates.is_empty() {
            return Ok(true);
        }
        let requirements = vec![
            TableRequirement::UuidMatch { uuid: old.uuid() },
            TableRequirement::RefSnapshotIdMatch {
                r#ref: MAIN_BRANCH.to_owned(),
                snapshot_id: old.current_snapshot_id(),
            },
        ];
        let body = serde_json::json!({
            "identifier": { "namespace": ident.namespace().as_ref(), "name": ident.name() },
            "requirements": requirements,
            "updates": updates,
        });
        let url = self.table_url(ident);
        let sent = self
            .http
            .post(&url)
            .headers(self.headers.clone())
            .json(&body)
            .send()
            .await;
        let response = match sent {
            Ok(r) => r,
            // The request may or may not have reached the server: look.
            Err(e) => return self.landed(ident, old, new, &e.to_string()).await,
        };
        let status = response.status();
        if status.is_success() {
            return Ok(true);
        }
        let text = response.text().await.unwrap_or_default();
        match status.as_u16() {
            409 => Ok(false),
            // CommitStateUnknownException: the commit may have landed.
            500 | 502 | 503 | 504 => {
                self.landed(
                    ident,
                    old,
                    new,
                    &format!("{status}: {}", error_message(&text)),
                )
                .await
            }
            _ => Err(Error::Catalog(format!(
                "the REST catalog refused the commit to {ident} ({status}: {})",
                error_message(&text)
            ))),
        }
    }

    /// After a commit whose outcome is unknown: true if `new` is what the table holds
    /// now, false if the table is still as before (the commit did not land).
    async fn landed(
        &self,
        ident: &TableIdent,
        old: &TableMetadata,
        new: &TableMetadata,
        why: &str,
    ) -> Result<bool> {
        tracing::warn!(table = %ident, error = why, "a REST commit's outcome is unknown; loading the table to see");
        let response = self
            .http
            .get(self.table_url(ident))
            .headers(self.headers.clone())
            .send()
            .await
            .map_err(|e| Error::Catalog(format!("{ident}: a commit's outcome is unknown ({why}) and the table cannot be loaded ({e})")))?;
        let value: serde_json::Value = response.json().await.map_err(|e| {
            Error::Catalog(format!(
                "{ident}: a commit's outcome is unknown ({why}) and the table cannot be read ({e})"
            ))
        })?;
        let ids: HashSet<i64> = value
            .pointer("/metadata/snapshots")
            .and_then(|s| s.as_array())
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.get("snapshot-id").and_then(serde_json::Value::as_i64))
                    .collect()
            })
            .unwrap_or_default();
        // A commit that adds a snapshot landed if the table has it (others may have
        // built on it since); one that only removes snapshots, if they are gone.
        Ok(
            match new
                .current_snapshot_id()
                .filter(|id| Some(*id) != old.current_snapshot_id())
            {
                Some(id) => ids.contains(&id),
                None => {
                    let kept: HashSet<i64> = new.snapshots().map(|s| s.snapshot_id()).collect();
                    old.snapshots()
                        .all(|s| kept.contains(&s.snapshot_id()) || !ids.contains(&s.snapshot_id()))
                }
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use iceberg::spec::{
        NestedField, Operation, PrimitiveType, Schema, Snapshot, SnapshotReference,
        SnapshotRetention, Summary, TableMetadataBuilder, Type,
    };

    fn table() -> TableMetadata {
        let schema = Schema::builder()
            .with_fields(vec![
                NestedField::required(1, "x", Type::Primitive(PrimitiveType::Long)).into(),
            ])
            .build()
            .unwrap();
        let creation = iceberg::TableCreation::builder()
            .name("t".to_owned())
            .location("file:///tmp/t".to_owned())
            .schema(schema)
            .build();
        TableMetadataBuilder::from_table_creation(creation)
            .unwrap()
            .build()
            .unwrap()
            .metadata
    }

    fn with_snapshot(m: &TableMetadata, id: i64) -> TableMetadata {
        let snapshot = Snapshot::builder()
            .with_snapshot_id(id)
            .with_parent_snapshot_id(m.current_snapshot_id())
            .with_sequence_number(m.next_sequence_number())
            .with_timestamp_ms(m.last_updated_ms() + 1)
            .with_manifest_list(format!("file:///tmp/t/metadata/snap-{id}.avro"))
            .with_summary(Summary {
                operation: Operation::Append,
                additional_properties: Default::default(),
            })
            .with_schema_id(m.current_schema_id())
            .build();
        TableMetadataBuilder::new_from_metadata(m.clone(), None)
            .add_snapshot(snapshot)
            .unwrap()
            .set_ref(
                MAIN_BRANCH,
                SnapshotReference::new(id, SnapshotRetention::branch(None, None, None)),
            )
            .unwrap()
            .build()
            .unwrap()
            .metadata
    }

    #[test]
    fn an_append_is_one_snapshot_and_the_branch_moved_and_an_expiry_removes_snapshots() {
        let empty = table();
        let one = with_snapshot(&empty, 11);
        let two = with_snapshot(&one, 22);
        let u = serde_json::to_value(updates(&one, &two)).unwrap();
        assert_eq!(u[0]["action"], "add-snapshot");
        assert_eq!(u[0]["snapshot"]["snapshot-id"], 22);
        assert_eq!(u[0]["snapshot"]["parent-snapshot-id"], 11);
        assert_eq!(u[1]["action"], "set-snapshot-ref");
        assert_eq!(
            (
                u[1]["ref-name"].as_str(),
                u[1]["snapshot-id"].as_i64(),
                u[1]["type"].as_str()
            ),
            (Some("main"), Some(22), Some("branch"))
        );
        assert_eq!(u.as_array().unwrap().len(), 2);
        let expired = TableMetadataBuilder::new_from_metadata(two.clone(), None)
            .remove_snapshots(&[11])
            .build()
            .unwrap()
            .metadata;
        let u = serde_json::to_value(updates(&two, &expired)).unwrap();
        assert_eq!(
            u,
            serde_json::json!([{"action": "remove-snapshots", "snapshot-ids": [11]}])
        );
        assert!(updates(&two, &two).is_empty());
    }

    #[test]
    fn secrets_stay_out_of_debug_output() {
        let cfg = RestConfig {
            token: "tok-123".into(),
            credential: "id:sec-456".into(),
            headers: [("X-API-Key".to_owned(), "key-789".to_owned())].into(),
            ..Default::default()
        };
        let shown = format!("{cfg:?}");
        assert!(
            !shown.contains("tok-123") && !shown.contains("sec-456") && !shown.contains("key-789"),
            "{shown}"
        );
        assert!(shown.contains("X-API-Key"), "{shown}");
    }
}
