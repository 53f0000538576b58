//! Where volumes live, as the SeaweedFS master says: `GET /dir/lookup?volumeId=N`, asked
//! off the poller thread by one lookup thread, answers cached on the poller.
//!
//! A lookup is asked when a read names a volume the engine has not located, again when a read
//! of it failed ([`Locator::invalidate`]) and when its answer is older than
//! [`LOCATION_REFRESH`] (the stale answer keeps serving meanwhile, so a moved volume is
//! followed within that bound). "Not found" and a failed master are remembered only for
//! [`NEGATIVE_TTL`], so a volume created a moment later is found, and a master that is down is
//! not asked once per read.

use std::collections::HashMap;
use std::net::{IpAddr, ToSocketAddrs};
use std::sync::mpsc::{self, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_queue::ArrayQueue;
use shm_layout::entry::ErrorCode;

use super::http::Waker;

/// How long a located volume is used before it is asked again.
pub const LOCATION_REFRESH: Duration = Duration::from_secs(30);
/// How long "not found" or a master failure is remembered.
pub const NEGATIVE_TTL: Duration = Duration::from_millis(500);
/// Timeout of one lookup request.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(2);
/// Lookups queued for the lookup thread at most (further ones wait for the next read).
const LOOKUP_QUEUE_CAPACITY: usize = 256;
/// Largest lookup answer read.
const LOOKUP_ANSWER_MAX_BYTES: u64 = 64 << 10;
/// Most locations kept per volume.
const LOCATIONS_MAX: usize = 16;
/// Most volumes remembered: clients name volume ids, so the cache is bounded; when it is
/// full, remembered failures go first, then everything.
const ENTRIES_MAX: usize = 1 << 16;

/// A volume server holding a volume: its `url` (`HOST:PORT`) as the master reports it, and
/// its host's address (resolved on the lookup thread, so the poller never waits for DNS).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Location {
    pub url: Arc<str>,
    pub ip: Option<IpAddr>,
}

impl Location {
    /// The host part of the url (without the port), for the exporter next to it.
    pub fn host(&self) -> &str {
        match self.url.rsplit_once(':') {
            Some((host, port)) if port.bytes().all(|byte| byte.is_ascii_digit()) => {
                host.trim_start_matches('[').trim_end_matches(']')
            }
            _ => &self.url,
        }
    }
}

/// What the master answered for one volume.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    Found(Vec<Location>),
    /// The master knows no such volume.
    NotFound,
    /// The master could not be reached or gave an answer that is not a lookup (the reason).
    Failed(String),
}

/// What the poller knows of a volume's location right now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Known<'a> {
    Found(&'a [Location]),
    /// Asked, no answer yet.
    Pending,
    /// Remembered failure: complete with this code.
    Failed(ErrorCode),
}

#[derive(Debug)]
struct Entry {
    answer: Option<Answer>,
    answered_at: Instant,
    /// A lookup is queued or running.
    asked: bool,
    /// A read failed since the answer: ask again.
    stale: bool,
}

impl Entry {
    fn new(now: Instant, asked: bool) -> Entry {
        Entry { answer: None, answered_at: now, asked, stale: false }
    }
}

/// The poller's side: the cache and the queue to the lookup thread.
#[derive(Debug)]
pub struct Locator {
    entries: HashMap<u32, Entry>,
    requests: SyncSender<u32>,
    answers: Arc<ArrayQueue<(u32, Answer)>>,
    lookups_done: u64,
}

impl Locator {
    /// Starts the lookup thread for the master at `master` (`HOST:PORT`). `wake` is called
    /// after each answer so a sleeping poller picks it up.
    pub fn start(master: String, wake: Waker) -> std::io::Result<Locator> {
        let (requests, request_receiver) = mpsc::sync_channel::<u32>(LOOKUP_QUEUE_CAPACITY);
        let answers = Arc::new(ArrayQueue::new(LOOKUP_QUEUE_CAPACITY));
        let answer_queue = answers.clone();
        std::thread::Builder::new().name("master-lookup".into()).spawn(move || {
            let agent = ureq::AgentBuilder::new().timeout(LOOKUP_TIMEOUT).build();
            // Ends when the Locator (the sender) is dropped.
            for volume_id in request_receiver {
                let mut answer = (volume_id, look_up(&agent, &master, volume_id));
                // Bounded by the poller draining the queue (it does on every pass); gives up
                // when the Locator is gone.
                while let Err(back) = answer_queue.push(answer) {
                    if Arc::strong_count(&answer_queue) == 1 {
                        return;
                    }
                    answer = back;
                    std::thread::sleep(Duration::from_millis(1));
                }
                wake();
            }
        })?;
        Ok(Locator { entries: HashMap::new(), requests, answers, lookups_done: 0 })
    }

    /// What is known of `volume_id`; asks the master when nothing is, or when the answer is
    /// old (then the old answer is still given).
    pub fn locate(&mut self, volume_id: u32, now: Instant) -> Known<'_> {
        if self.entries.len() >= ENTRIES_MAX && !self.entries.contains_key(&volume_id) {
            self.entries.retain(|_, entry| entry.asked || matches!(entry.answer, Some(Answer::Found(_))));
            if self.entries.len() >= ENTRIES_MAX {
                self.entries.retain(|_, entry| entry.asked);
            }
        }
        let entry = self.entries.entry(volume_id).or_insert_with(|| Entry::new(now, false));
        let age = now.saturating_duration_since(entry.answered_at);
        let expired = entry.stale
            || match &entry.answer {
                None => true,
                Some(Answer::Found(_)) => age >= LOCATION_REFRESH,
                Some(_) => age >= NEGATIVE_TTL,
            };
        if expired && !entry.asked {
            match self.requests.try_send(volume_id) {
                Ok(()) => entry.asked = true,
                Err(TrySendError::Full(_)) => {}
                Err(TrySendError::Disconnected(_)) => {
                    entry.answer = Some(Answer::Failed("the lookup thread ended".into()));
                    entry.answered_at = now;
                }
            }
        }
        match &entry.answer {
            Some(Answer::Found(locations)) => Known::Found(locations),
            Some(Answer::NotFound) if !expired => Known::Failed(ErrorCode::NO_SUCH_VOLUME),
            Some(Answer::Failed(_)) if !expired => Known::Failed(ErrorCode::MASTER_UNAVAILABLE),
            _ => Known::Pending,
        }
    }

    /// Forgets `volume_id`'s location after a failed read, so the next read asks again.
    pub fn invalidate(&mut self, volume_id: u32) {
        if let Some(entry) = self.entries.get_mut(&volume_id) {
            entry.stale = true;
        }
    }

    /// Takes the lookup thread's answers into the cache. Returns how many arrived.
    pub fn poll(&mut self, now: Instant) -> usize {
        let mut arrived = 0;
        while let Some((volume_id, answer)) = self.answers.pop() {
            arrived += 1;
            self.lookups_done += 1;
            let entry = self.entries.entry(volume_id).or_insert_with(|| Entry::new(now, true));
            entry.asked = false;
            entry.stale = false;
            // A failed refresh keeps a location that worked: the volume server may be fine
            // while the master restarts.
            let keep_old = matches!(answer, Answer::Failed(_)) && matches!(entry.answer, Some(Answer::Found(_)));
            match &answer {
                Answer::Failed(reason) => tracing::warn!(volume_id, %reason, "master lookup failed"),
                Answer::Found(locations) if entry.answer.as_ref() != Some(&answer) => {
                    let urls: Vec<&str> = locations.iter().map(|location| &*location.url).collect();
                    tracing::info!(volume_id, ?urls, "volume located through the master");
                }
                _ => {}
            }
            if !keep_old {
                entry.answer = Some(answer);
            }
            entry.answered_at = now;
        }
        arrived
    }

    /// Whether answers are waiting (checked before the poller sleeps).
    pub fn has_answers(&self) -> bool {
        !self.answers.is_empty()
    }

    /// Lookups answered since start.
    pub fn lookups_done(&self) -> u64 {
        self.lookups_done
    }
}

/// One `/dir/lookup` call.
fn look_up(agent: &ureq::Agent, master: &str, volume_id: u32) -> Answer {
    use std::io::Read;
    let url = format!("http://{master}/dir/lookup?volumeId={volume_id}");
    let response = match agent.get(&url).call() {
        Ok(response) => response,
        // The master answers "not found" with 404 and a JSON error on some versions.
        Err(ureq::Error::Status(_, response)) => response,
        Err(error) => return Answer::Failed(format!("GET {url}: {error}")),
    };
    let mut body = Vec::new();
    if let Err(error) = response.into_reader().take(LOOKUP_ANSWER_MAX_BYTES).read_to_end(&mut body) {
        return Answer::Failed(format!("GET {url}: reading the answer: {error}"));
    }
    match parse_lookup(&body) {
        Ok(Answer::Found(mut locations)) => {
            for location in &mut locations {
                location.ip = resolve(location.host());
            }
            Answer::Found(locations)
        }
        Ok(answer) => answer,
        Err(reason) => Answer::Failed(format!("GET {url}: {reason}")),
    }
}

/// The address of a volume server's host: an IP literal, or the first address DNS gives.
fn resolve(host: &str) -> Option<IpAddr> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Some(ip);
    }
    (host, 0).to_socket_addrs().ok()?.next().map(|address| address.ip())
}

/// Parses a `/dir/lookup` answer: `{"locations":[{"url":"h:p",...}]}` or `{"error":"..."}`.
pub fn parse_lookup(body: &[u8]) -> Result<Answer, String> {
    let value: serde_json::Value =
        serde_json::from_slice(body).map_err(|error| format!("the answer is not JSON ({error})"))?;
    if let Some(error) = value.get("error").and_then(|error| error.as_str()).filter(|error| !error.is_empty()) {
        return if error.contains("not found") {
            Ok(Answer::NotFound)
        } else {
            Err(format!("the master says: {error}"))
        };
    }
    let locations = value
        .get("locations")
        .and_then(|locations| locations.as_array())
        .ok_or("the answer has neither locations nor an error")?;
    let found: Vec<Location> = locations
        .iter()
        .filter_map(|location| location.get("url")?.as_str())
        .filter(|url| is_host_port(url))
        .take(LOCATIONS_MAX)
        .map(|url| Location { url: Arc::from(url), ip: None })
        .collect();
    if found.is_empty() {
        return Ok(Answer::NotFound);
    }
    Ok(Answer::Found(found))
}

/// `HOST:PORT` with a plausible host: no scheme, path, spaces or control characters.
fn is_host_port(url: &str) -> bool {
    let Some((host, port)) = url.rsplit_once(':') else { return false };
    !host.is_empty()
        && url.len() <= 256
        && port.parse::<u16>().is_ok()
        && host.bytes().all(|byte| byte.is_ascii_alphanumeric() || b".-_[]:".contains(&byte))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookup_answers_parse() {
        let found = parse_lookup(br#"{"volumeOrFileId":"3","locations":[{"url":"127.0.0.1:8080","publicUrl":"x"}]}"#);
        assert_eq!(found, Ok(Answer::Found(vec![Location { url: Arc::from("127.0.0.1:8080"), ip: None }])));
        assert_eq!(parse_lookup(br#"{"volumeOrFileId":"99","error":"volume id 99 not found"}"#), Ok(Answer::NotFound));
        assert!(parse_lookup(b"<html>").is_err());
        assert!(parse_lookup(br#"{"locations":"x"}"#).is_err());
        assert!(parse_lookup(br#"{"error":"raft not ready"}"#).is_err());
        // Garbage urls are not followed.
        assert_eq!(parse_lookup(br#"{"locations":[{"url":"http://evil/x y:80"}]}"#), Ok(Answer::NotFound));
    }

    #[test]
    fn host_of_a_url() {
        let host = |url: &str| Location { url: Arc::from(url), ip: None }.host().to_string();
        assert_eq!(host("10.0.0.5:8080"), "10.0.0.5");
        assert_eq!(host("[::1]:8080"), "::1");
        assert_eq!(host("volume-1:8080"), "volume-1");
        assert_eq!(resolve("127.0.0.1"), Some(IpAddr::from([127, 0, 0, 1])));
    }
}
