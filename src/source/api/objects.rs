//! ConfigMaps, Secrets and service account tokens from the API server, for API pods: kubelet's
//! "Cache" strategy (each object fetched with a GET when a pod needs it and its copy is older
//! than `syncFrequency`), read by the pod code through the synchronous [`ObjectSource`] seam.
//!
//! ```text
//!   worker, before a container start and every syncFrequency:
//!     ApiObjects::fetch_for(pod).await      GET configmaps/secrets the pod references (stale ones),
//!                                           POST serviceaccounts/<sa>/token (due ones)
//!   then the pure readers (volumes' payload, kubelet_environment) read the cache: ObjectSource
//! ```
//!
//! Rules (kubelet's): a 404 is "not found" (the readers turn it into `configmap "x" not found`
//! unless the reference is optional) and is asked again at the next need; an `immutable` object
//! is never fetched again; a token is requested again when 80 % of its lifetime has passed or
//! it is 24 h old; a token request that fails (a ServiceAccount that does not exist: 404) is
//! retried with kubelet's volume back-off ([`token_retry_delay`]) and named in kubelet's words
//! (`failed to fetch token: serviceaccounts "x" not found`), which the volume turns into a
//! FailedMount. Edge autonomy: every object and token fetched is kept on disk ([`Copies`]),
//! loaded when the agent starts without the API server, and used while the API server cannot
//! be reached; a failed fetch is retried at most every [`ERROR_RETRY`] so an outage does not slow
//! every start. Copies no pod of this node references any more are removed ([`ApiObjects::prune`]).
//!
//! One request in flight per object: when two pods need the same ConfigMap or Secret at once,
//! the second waits for the first one's answer instead of asking again.
//!
//! The decisions ([`needs_fetch`], [`token_due`], [`token_retry_delay`], [`references`]) are
//! pure; the I/O is the [`Client`] calls and, through [`Copies`], the files.

use std::cell::RefCell;
use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::rc::Rc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

use super::copies::Copies;
use crate::api::Client;
use crate::api::request::Resource;
use crate::k8s::Pod;
use crate::k8s::object::{self, DataObject, ObjectSource};
use crate::k8s::volume::Source;

/// How long after a failed fetch (other than a 404) the next is tried.
pub const ERROR_RETRY: Duration = Duration::from_secs(10);
/// A token older than this is requested again whatever its expiry (kubelet's rule).
pub const TOKEN_MAX_AGE: Duration = Duration::from_secs(24 * 3600);
/// The first wait after a failed token request (kubelet's volume operations back-off)...
pub const TOKEN_RETRY_INITIAL: Duration = Duration::from_millis(500);
/// ...doubling after each failure, up to this (kubelet's 2 min 2 s).
pub const TOKEN_RETRY_MAX: Duration = Duration::from_secs(122);

/// ConfigMap or Secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    ConfigMap,
    Secret,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::ConfigMap => "ConfigMap",
            Kind::Secret => "Secret",
        }
    }
    fn resource(self) -> Resource {
        match self {
            Kind::ConfigMap => Resource::CONFIG_MAPS,
            Kind::Secret => Resource::SECRETS,
        }
    }
    fn lower(self) -> &'static str {
        match self {
            Kind::ConfigMap => "configmap",
            Kind::Secret => "secret",
        }
    }
}

/// An object a pod reads.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectKey {
    pub kind: Kind,
    pub namespace: String,
    pub name: String,
}

/// A token a pod's projected volume holds.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TokenKey {
    pub pod_uid: String,
    pub service_account: String,
    pub audience: String,
    pub expiration_seconds: i64,
}

/// What a pod references: objects (volumes, projections, env, envFrom, imagePullSecrets) and
/// tokens. Pure.
pub fn references(pod: &Pod) -> (BTreeSet<ObjectKey>, BTreeSet<TokenKey>) {
    let ns = &pod.metadata.namespace;
    let key = |kind, name: &str| ObjectKey {
        kind,
        namespace: ns.clone(),
        name: name.to_string(),
    };
    let mut objects = BTreeSet::new();
    let mut tokens = BTreeSet::new();
    for v in &pod.spec.volumes {
        match v.source() {
            Some(Source::ConfigMap(c)) => drop(objects.insert(key(Kind::ConfigMap, &c.name))),
            Some(Source::Secret(s)) => drop(objects.insert(key(Kind::Secret, &s.secret_name))),
            Some(Source::Projected(p)) => {
                for s in &p.sources {
                    if let Some(c) = &s.config_map {
                        objects.insert(key(Kind::ConfigMap, &c.name));
                    }
                    if let Some(c) = &s.secret {
                        objects.insert(key(Kind::Secret, &c.name));
                    }
                    if let Some(t) = s.service_account_token.as_ref() {
                        let t = crate::k8s::volume::TokenProjection::of(t);
                        tokens.insert(TokenKey {
                            pod_uid: pod.metadata.uid.clone(),
                            service_account: service_account(pod).to_string(),
                            audience: t.audience,
                            expiration_seconds: t.expiration_seconds,
                        });
                    }
                }
            }
            _ => {}
        }
    }
    for c in pod.spec.init_containers.iter().chain(&pod.spec.containers) {
        for e in &c.env {
            let Some(from) = &e.value_from else { continue };
            if let Some(r) = &from.config_map_key_ref {
                objects.insert(key(Kind::ConfigMap, &r.name));
            }
            if let Some(r) = &from.secret_key_ref {
                objects.insert(key(Kind::Secret, &r.name));
            }
        }
        for from in &c.env_from {
            if let Some(r) = &from.config_map_ref {
                objects.insert(key(Kind::ConfigMap, &r.name));
            }
            if let Some(r) = &from.secret_ref {
                objects.insert(key(Kind::Secret, &r.name));
            }
        }
    }
    for name in pull_secret_names(pod) {
        objects.insert(key(Kind::Secret, &name));
    }
    (objects, tokens)
}

/// What any of `pods` references (the copies to keep). Pure.
pub fn references_of<'a>(
    pods: impl IntoIterator<Item = &'a Pod>,
) -> (BTreeSet<ObjectKey>, BTreeSet<TokenKey>) {
    let (mut objects, mut tokens) = (BTreeSet::new(), BTreeSet::new());
    for pod in pods {
        let (o, t) = references(pod);
        objects.extend(o);
        tokens.extend(t);
    }
    (objects, tokens)
}

/// The pod's service account (`default` when the spec names none, as admission sets it).
pub fn service_account(pod: &Pod) -> &str {
    match pod.spec.service_account_name() {
        "" => "default",
        name => name,
    }
}

/// `spec.imagePullSecrets[].name`, in order.
pub fn pull_secret_names(pod: &Pod) -> Vec<String> {
    pod.spec
        .image_pull_secrets
        .as_ref()
        .and_then(Value::as_array)
        .map(|list| {
            list.iter()
                .filter_map(|r| r.get("name").and_then(Value::as_str))
                .filter(|n| !n.is_empty())
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

/// What is known of one object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Known {
    /// The object as last fetched (or loaded from disk).
    Found {
        object: DataObject,
        immutable: bool,
        /// A Secret's `type` (empty for ConfigMaps).
        secret_type: String,
    },
    /// The API server answered 404.
    NotFound,
}

/// One object in the cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The last answer (None: never answered, only failures so far).
    pub known: Option<Known>,
    /// When the API server last answered (None: loaded from disk, or never).
    pub fetched: Option<Instant>,
    /// The last failure, and when; cleared by an answer.
    pub error: Option<(String, Instant)>,
}

/// Whether an object's copy must be fetched again now. Pure.
pub fn needs_fetch(entry: Option<&Entry>, now: Instant, ttl: Duration) -> bool {
    let Some(e) = entry else { return true };
    if let Some(Known::Found {
        immutable: true, ..
    }) = e.known
        && e.fetched.is_some()
    {
        return false; // kubelet never refreshes an immutable object it has fetched.
    }
    if let Some((_, at)) = &e.error
        && now.saturating_duration_since(*at) < ERROR_RETRY
    {
        return false;
    }
    match (&e.known, e.fetched) {
        (Some(Known::NotFound), _) | (None, _) | (_, None) => true,
        (Some(Known::Found { .. }), Some(at)) => now.saturating_duration_since(at) >= ttl,
    }
}

/// A token as the API server issued it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token {
    pub token: String,
    /// Seconds since the epoch.
    pub issued: i64,
    pub expires: i64,
}

/// Whether a token must be requested again at `now` (seconds since the epoch): kubelet's rule,
/// 80 % of its lifetime passed or older than 24 h. Pure.
pub fn token_due(t: &Token, now: i64) -> bool {
    let lifetime = (t.expires - t.issued).max(0);
    let age = now - t.issued;
    age < 0 || age * 5 >= lifetime * 4 || age >= TOKEN_MAX_AGE.as_secs() as i64
}

/// How long to wait before the next token request after `failures` failed ones in a row
/// (at least one): kubelet's exponential back-off for volume operations. Pure.
pub fn token_retry_delay(failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(16);
    TOKEN_RETRY_INITIAL
        .saturating_mul(1 << doublings)
        .min(TOKEN_RETRY_MAX)
}

/// A token whose requests fail: since when (the last one) and how many in a row.
#[derive(Debug, Clone, Copy)]
struct Failing {
    at: Instant,
    failures: u32,
}

/// Fetches under way, by object. A later need of the same object waits on the receiver, which
/// reports "closed" when the fetch is over (its answer is then in the cache), however it ended.
type InFlightMap = RefCell<HashMap<ObjectKey, async_channel::Receiver<()>>>;

/// Marks a fetch of `key` as under way for as long as it lives (also when the fetch's future is
/// dropped half-way: the waiters are released and fetch themselves).
struct InFlight<'a> {
    map: &'a InFlightMap,
    key: ObjectKey,
    _done: async_channel::Sender<()>,
}

impl<'a> InFlight<'a> {
    fn start(map: &'a InFlightMap, key: &ObjectKey) -> InFlight<'a> {
        let (tx, rx) = async_channel::bounded(1);
        map.borrow_mut().insert(key.clone(), rx);
        InFlight {
            map,
            key: key.clone(),
            _done: tx,
        }
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.map.borrow_mut().remove(&self.key);
    }
}

/// The cache, and the API server it fills from.
pub struct ApiObjects {
    client: Rc<Client>,
    copies: Copies,
    ttl: Duration,
    objects: RefCell<HashMap<ObjectKey, Entry>>,
    in_flight: InFlightMap,
    tokens: RefCell<HashMap<TokenKey, Result<Token, String>>>,
    /// Tokens whose requests fail (retried after [`token_retry_delay`]).
    token_errors: RefCell<HashMap<TokenKey, Failing>>,
}

impl ApiObjects {
    /// A cache keeping its copies in `dir` (`<dataDir>/api-objects`), fresh for `ttl`.
    pub fn new(client: Rc<Client>, dir: PathBuf, ttl: Duration) -> ApiObjects {
        ApiObjects {
            client,
            copies: Copies::new(dir),
            ttl,
            objects: RefCell::new(HashMap::new()),
            in_flight: RefCell::new(HashMap::new()),
            tokens: RefCell::new(HashMap::new()),
            token_errors: RefCell::new(HashMap::new()),
        }
    }

    /// Brings the copies of everything `pod` references up to date (as far as the API server
    /// answers). Failures are kept for the readers to report.
    pub async fn fetch_for(&self, pod: &Pod) {
        let (objects, tokens) = references(pod);
        for key in objects {
            if !self.objects.borrow().contains_key(&key)
                && let Some(known) = self.load(&key)
            {
                let entry = Entry {
                    known: Some(known),
                    fetched: None,
                    error: None,
                };
                self.objects.borrow_mut().insert(key.clone(), entry);
            }
            let under_way = self.in_flight.borrow().get(&key).cloned();
            if let Some(done) = under_way {
                // Another pod's fetch of this object is under way: its answer serves this
                // pod too (closed when it is over: nothing is ever sent).
                let _ = done.recv().await;
                continue;
            }
            let due = needs_fetch(self.objects.borrow().get(&key), Instant::now(), self.ttl);
            if due {
                let _flight = InFlight::start(&self.in_flight, &key);
                self.fetch(&key).await;
            }
        }
        for key in tokens {
            self.fetch_token(pod, &key).await;
        }
    }

    async fn fetch(&self, key: &ObjectKey) {
        let req = key.kind.resource().get(Some(&key.namespace), &key.name);
        let answer = self.client.json::<Value>(&req).await;
        let now = Instant::now();
        let result = match answer {
            Ok(value) => decode(value, key.kind).map(Some),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e.to_string()),
        };
        let mut objects = self.objects.borrow_mut();
        let entry = objects.entry(key.clone()).or_insert(Entry {
            known: None,
            fetched: None,
            error: None,
        });
        match result {
            Ok(Some((known, raw))) => {
                if entry.known.as_ref() != Some(&known) {
                    self.copies.save(key, &raw);
                }
                *entry = Entry {
                    known: Some(known),
                    fetched: Some(now),
                    error: None,
                };
            }
            Ok(None) => {
                if entry.known.as_ref() != Some(&Known::NotFound) {
                    self.copies.remove(key);
                }
                *entry = Entry {
                    known: Some(Known::NotFound),
                    fetched: Some(now),
                    error: None,
                };
            }
            Err(message) => {
                log::warn!(
                    "{} {}/{}: {message}{}",
                    key.kind.lower(),
                    key.namespace,
                    key.name,
                    if entry.known.is_some() {
                        "; using the last copy"
                    } else {
                        ""
                    }
                );
                entry.error = Some((message, now));
            }
        }
    }

    async fn fetch_token(&self, pod: &Pod, key: &TokenKey) {
        let now = unix_now();
        let current = self.tokens.borrow().get(key).cloned();
        let current = current.or_else(|| self.copies.load_token(key).map(Ok));
        if let Some(Ok(t)) = &current
            && !token_due(t, now)
        {
            self.tokens.borrow_mut().insert(key.clone(), Ok(t.clone()));
            return;
        }
        let failing = self.token_errors.borrow().get(key).copied();
        if let Some(f) = failing
            && f.at.elapsed() < token_retry_delay(f.failures)
        {
            return;
        }
        let m = &pod.metadata;
        let mut spec = json!({
            "expirationSeconds": key.expiration_seconds,
            "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": m.name, "uid": m.uid},
        });
        if !key.audience.is_empty() {
            spec["audiences"] = json!([key.audience]);
        }
        let body = json!({
            "apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec,
        });
        let req = Resource::SERVICE_ACCOUNTS.create_subresource(
            Some(&m.namespace),
            &key.service_account,
            "token",
            &body,
        );
        // The log names everything; the volume's message (and its FailedMount) is kubelet's.
        let result = match self.client.json::<Value>(&req).await {
            Ok(answer) => token_of(&answer, now).map_err(|e| (e.to_string(), e.to_string())),
            Err(e) => Err((e.to_string(), server_words(&e))),
        };
        match result {
            Ok(t) => {
                self.token_errors.borrow_mut().remove(key);
                self.copies.save_token(key, &t);
                self.tokens.borrow_mut().insert(key.clone(), Ok(t));
            }
            Err((logged, words)) => {
                let failures = {
                    let mut errors = self.token_errors.borrow_mut();
                    let f = errors.entry(key.clone()).or_insert(Failing {
                        at: Instant::now(),
                        failures: 0,
                    });
                    f.at = Instant::now();
                    f.failures = f.failures.saturating_add(1);
                    f.failures
                };
                let what = format!(
                    "pod {}/{}: serviceaccount {}/{}: token request: {logged}; next try in {:?}",
                    m.namespace,
                    m.name,
                    m.namespace,
                    key.service_account,
                    token_retry_delay(failures)
                );
                match current {
                    // A token that has not expired yet still serves through an outage.
                    Some(Ok(t)) if t.expires > now => {
                        log::warn!("{what}; keeping the current token");
                        self.tokens.borrow_mut().insert(key.clone(), Ok(t));
                    }
                    _ => {
                        log::warn!("{what}");
                        let e = format!("failed to fetch token: {words}");
                        self.tokens.borrow_mut().insert(key.clone(), Err(e));
                    }
                }
            }
        }
    }

    /// Forgets what no pod bound to this node references any more (`objects` and `tokens`,
    /// what the persisted pods reference): cache entries and on-disk copies.
    pub fn prune(&self, objects: &BTreeSet<ObjectKey>, tokens: &BTreeSet<TokenKey>) {
        self.objects.borrow_mut().retain(|k, _| objects.contains(k));
        self.tokens.borrow_mut().retain(|k, _| tokens.contains(k));
        self.token_errors
            .borrow_mut()
            .retain(|k, _| tokens.contains(k));
        for path in self.copies.prune(objects, tokens) {
            log::info!(
                "removed {}: no pod on this node uses it any more",
                path.display()
            );
        }
    }

    /// The Secret's `type` and data, as cached (for imagePullSecrets).
    pub fn secret_with_type(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Option<(String, DataObject)>, String> {
        let key = ObjectKey {
            kind: Kind::Secret,
            namespace: namespace.to_string(),
            name: name.to_string(),
        };
        Ok(self
            .read(&key)?
            .map(|(object, secret_type)| (secret_type, object)))
    }

    fn read(&self, key: &ObjectKey) -> Result<Option<(DataObject, String)>, String> {
        let objects = self.objects.borrow();
        let Some(entry) = objects.get(key) else {
            return Err(format!(
                "{} {:?}: not fetched from the API server yet",
                key.kind.lower(),
                key.name
            ));
        };
        match (&entry.known, &entry.error) {
            (
                Some(Known::Found {
                    object,
                    secret_type,
                    ..
                }),
                _,
            ) => Ok(Some((object.clone(), secret_type.clone()))),
            (Some(Known::NotFound), _) => Ok(None),
            (None, Some((e, _))) => Err(format!(
                "couldn't get {} {}/{}: {e}",
                key.kind.lower(),
                key.namespace,
                key.name
            )),
            (None, None) => Ok(None),
        }
    }

    fn load(&self, key: &ObjectKey) -> Option<Known> {
        let value = self.copies.load(key)?;
        decode(value, key.kind).ok().map(|(known, _)| known)
    }

    /// Forgets the tokens of a pod that is gone (memory and disk).
    pub fn forget_pod(&self, pod_uid: &str) {
        let gone: Vec<TokenKey> = self
            .tokens
            .borrow()
            .keys()
            .filter(|k| k.pod_uid == pod_uid)
            .cloned()
            .collect();
        for key in gone {
            self.copies.remove_token(&key);
            self.tokens.borrow_mut().remove(&key);
            self.token_errors.borrow_mut().remove(&key);
        }
    }
}

impl ObjectSource for ApiObjects {
    fn config_map(&self, namespace: &str, name: &str) -> Result<Option<DataObject>, String> {
        let key = ObjectKey {
            kind: Kind::ConfigMap,
            namespace: namespace.to_string(),
            name: name.to_string(),
        };
        Ok(self.read(&key)?.map(|(o, _)| o))
    }

    fn secret(&self, namespace: &str, name: &str) -> Result<Option<DataObject>, String> {
        Ok(self.secret_with_type(namespace, name)?.map(|(_, o)| o))
    }

    fn service_account_token(
        &self,
        pod: &Pod,
        audience: &str,
        expiration_seconds: i64,
    ) -> Result<String, String> {
        let key = TokenKey {
            pod_uid: pod.metadata.uid.clone(),
            service_account: service_account(pod).to_string(),
            audience: audience.to_string(),
            expiration_seconds,
        };
        match self.tokens.borrow().get(&key) {
            Some(Ok(t)) => Ok(t.token.clone()),
            Some(Err(e)) => Err(e.clone()),
            None => Err(format!(
                "serviceaccount {}/{}: no token requested yet",
                pod.metadata.namespace, key.service_account
            )),
        }
    }
}

/// An API object → what the cache keeps, and the copy kept on disk (metadata trimmed).
fn decode(value: Value, kind: Kind) -> Result<(Known, Value), String> {
    let immutable = value.get("immutable").and_then(Value::as_bool) == Some(true);
    let secret_type = value
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let mut raw = serde_json::Map::new();
    for (k, v) in value.as_object().into_iter().flatten() {
        let v = if k == "metadata" {
            let mut meta = serde_json::Map::new();
            for field in ["name", "namespace"] {
                if let Some(x) = v.get(field) {
                    meta.insert(field.to_string(), x.clone());
                }
            }
            Value::Object(meta)
        } else {
            v.clone()
        };
        raw.insert(k.clone(), v);
    }
    let raw = Value::Object(raw);
    let object = object::decode(raw.clone(), kind.as_str())
        .map_err(|e| format!("{} from the API server: {e}", kind.lower()))?;
    Ok((
        Known::Found {
            object,
            immutable,
            secret_type,
        },
        raw,
    ))
}

/// An API error as kubelet's messages quote it: the server's own message (`serviceaccounts
/// "robot" not found`), or the whole error when there is none (transport, timeout).
fn server_words(e: &crate::api::Error) -> String {
    match e {
        crate::api::Error::Status { message, .. } if !message.is_empty() => message.clone(),
        other => other.to_string(),
    }
}

/// The token and its expiry from a TokenRequest answer.
fn token_of(answer: &Value, now: i64) -> Result<Token, String> {
    let token = answer
        .pointer("/status/token")
        .and_then(Value::as_str)
        .filter(|t| !t.is_empty())
        .ok_or("answer without status.token")?;
    let expires = answer
        .pointer("/status/expirationTimestamp")
        .and_then(Value::as_str)
        .and_then(crate::api::time::parse_time)
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map(|d| d.as_secs() as i64)
        .ok_or("answer without a valid status.expirationTimestamp")?;
    Ok(Token {
        token: token.to_string(),
        issued: now,
        expires,
    })
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn found(immutable: bool) -> Known {
        Known::Found {
            object: DataObject {
                kind: "ConfigMap",
                namespace: "default".into(),
                name: "c".into(),
                data: BTreeMap::new(),
            },
            immutable,
            secret_type: String::new(),
        }
    }

    #[test]
    fn copies_are_fetched_again_after_the_ttl_and_immutable_ones_never() {
        let t0 = Instant::now();
        let ttl = Duration::from_secs(60);
        let entry = |known, fetched, error| Entry {
            known,
            fetched,
            error,
        };
        assert!(needs_fetch(None, t0, ttl));
        let fresh = entry(Some(found(false)), Some(t0), None);
        assert!(!needs_fetch(
            Some(&fresh),
            t0 + Duration::from_secs(59),
            ttl
        ));
        assert!(needs_fetch(Some(&fresh), t0 + ttl, ttl));
        let immutable = entry(Some(found(true)), Some(t0), None);
        assert!(!needs_fetch(Some(&immutable), t0 + 100 * ttl, ttl));
        // Loaded from disk only: fetched at the first need, even when immutable.
        let from_disk = entry(Some(found(true)), None, None);
        assert!(needs_fetch(Some(&from_disk), t0, ttl));
        // A 404 is asked again at every need (the object may have been created since).
        let missing = entry(Some(Known::NotFound), Some(t0), None);
        assert!(needs_fetch(Some(&missing), t0, ttl));
        // A failure waits ERROR_RETRY, with or without a copy.
        let failed = entry(None, None, Some(("down".into(), t0)));
        assert!(!needs_fetch(
            Some(&failed),
            t0 + Duration::from_secs(1),
            ttl
        ));
        assert!(needs_fetch(Some(&failed), t0 + ERROR_RETRY, ttl));
    }

    #[test]
    fn tokens_are_renewed_at_80_percent_of_their_life_or_after_a_day() {
        let t = Token {
            token: "x".into(),
            issued: 1000,
            expires: 1000 + 3600,
        };
        assert!(!token_due(&t, 1000));
        assert!(!token_due(&t, 1000 + 2879));
        assert!(token_due(&t, 1000 + 2880));
        assert!(token_due(&t, 999), "a clock that went back renews");
        let long = Token {
            token: "x".into(),
            issued: 0,
            expires: 7 * 24 * 3600,
        };
        assert!(!token_due(&long, 23 * 3600));
        assert!(token_due(&long, 24 * 3600));
    }

    #[test]
    fn failed_token_requests_back_off_as_kubelets_volume_operations() {
        let secs = |n| token_retry_delay(n).as_secs_f64();
        assert_eq!(
            (1..=9).map(secs).collect::<Vec<_>>(),
            [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 122.0]
        );
        assert_eq!(token_retry_delay(0), TOKEN_RETRY_INITIAL);
        assert_eq!(token_retry_delay(u32::MAX), TOKEN_RETRY_MAX);
    }

    #[test]
    fn api_errors_are_quoted_in_kubelets_words() {
        let not_found = crate::api::Error::from_status(
            "POST /api/v1/namespaces/default/serviceaccounts/robot/token",
            404,
            serde_json::from_value(json!({"kind": "Status", "reason": "NotFound", "code": 404,
                "message": "serviceaccounts \"robot\" not found"}))
            .ok(),
            None,
        );
        assert_eq!(
            server_words(&not_found),
            "serviceaccounts \"robot\" not found"
        );
        let down = crate::api::Error::Transport {
            request: "POST /x".into(),
            detail: "connection refused".into(),
        };
        assert_eq!(server_words(&down), "POST /x: connection refused");
    }

    #[test]
    fn every_reference_of_a_pod_is_found() {
        let pod: Pod = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "p", "namespace": "ns", "uid": "u1"},
            "spec": {
                "serviceAccountName": "robot",
                "imagePullSecrets": [{"name": "regcred"}],
                "volumes": [
                    {"name": "a", "configMap": {"name": "cm-vol"}},
                    {"name": "b", "secret": {"secretName": "s-vol"}},
                    {"name": "c", "projected": {"sources": [
                        {"configMap": {"name": "kube-root-ca.crt"}},
                        {"secret": {"name": "s-proj"}},
                        {"serviceAccountToken": {"path": "token", "audience": "vault", "expirationSeconds": 600}},
                        {"downwardAPI": {"items": [{"path": "ns", "fieldRef": {"fieldPath": "metadata.namespace"}}]}}
                    ]}}
                ],
                "containers": [{"name": "app", "image": "x",
                    "env": [{"name": "A", "valueFrom": {"configMapKeyRef": {"name": "cm-env", "key": "k"}}},
                            {"name": "B", "valueFrom": {"secretKeyRef": {"name": "s-env", "key": "k"}}}],
                    "envFrom": [{"configMapRef": {"name": "cm-from"}}, {"secretRef": {"name": "s-from"}}]}]
            }
        }))
        .unwrap();
        let (objects, tokens) = references(&pod);
        let names: Vec<(Kind, &str)> = objects.iter().map(|k| (k.kind, k.name.as_str())).collect();
        assert_eq!(
            names,
            [
                (Kind::ConfigMap, "cm-env"),
                (Kind::ConfigMap, "cm-from"),
                (Kind::ConfigMap, "cm-vol"),
                (Kind::ConfigMap, "kube-root-ca.crt"),
                (Kind::Secret, "regcred"),
                (Kind::Secret, "s-env"),
                (Kind::Secret, "s-from"),
                (Kind::Secret, "s-proj"),
                (Kind::Secret, "s-vol"),
            ]
        );
        assert!(objects.iter().all(|k| k.namespace == "ns"));
        let tokens: Vec<TokenKey> = tokens.into_iter().collect();
        assert_eq!(
            tokens,
            [TokenKey {
                pod_uid: "u1".into(),
                service_account: "robot".into(),
                audience: "vault".into(),
                expiration_seconds: 600,
            }]
        );
    }

    #[test]
    fn api_objects_keep_their_type_and_immutability_and_lose_their_metadata() {
        let (known, raw) = decode(
            json!({"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/dockerconfigjson",
                   "immutable": true,
                   "metadata": {"name": "r", "namespace": "ns", "uid": "x", "resourceVersion": "5",
                                "managedFields": [{"manager": "kubectl"}]},
                   "data": {".dockerconfigjson": "e30="}}),
            Kind::Secret,
        )
        .unwrap();
        let Known::Found {
            object,
            immutable,
            secret_type,
        } = known
        else {
            panic!("not found")
        };
        assert!(immutable);
        assert_eq!(secret_type, "kubernetes.io/dockerconfigjson");
        assert_eq!(object.data[".dockerconfigjson"], b"{}");
        assert_eq!(raw["metadata"], json!({"name": "r", "namespace": "ns"}));
        let err = decode(
            json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "r"}, "data": {"k": "!"}}),
            Kind::Secret,
        )
        .unwrap_err();
        assert!(
            err.starts_with("secret from the API server: data[\"k\"]"),
            "{err}"
        );
    }
}
