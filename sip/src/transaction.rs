//! The transaction layer (RFC 3261 §17, with the Accepted states of RFC 6026): four state
//! machines, their timers as data, and the registry that matches messages to them.
//!
//! [`Transactions`] is sans-IO in the quinn/str0m mould. Feed it messages
//! ([`Transactions::handle_message`]), requests and responses from the transaction user
//! ([`Transactions::send_request`], [`Transactions::send_response`]) and the time
//! ([`Transactions::handle_timeout`]); drain [`Transactions::poll_output`] for datagrams to send
//! and events for the transaction user, and ask [`Transactions::poll_timeout`] when to call
//! again. Every mutation must be followed by draining the outputs.
//!
//! Timers (§17.1.1.2, §17.1.2.2, §17.2.1, §17.2.2; RFC 6026 §7.1):
//!
//! | timer | machine | value | meaning |
//! |---|---|---|---|
//! | A | INVITE client | T1, doubling | retransmit INVITE (unreliable transports) |
//! | B | INVITE client | 64·T1 | give up waiting for any response |
//! | D | INVITE client | 32 s (0 reliable) | absorb retransmitted final responses |
//! | M | INVITE client | 64·T1 | absorb retransmitted 2xx after the first |
//! | E | non-INVITE client | T1, doubling to T2 | retransmit the request |
//! | F | non-INVITE client | 64·T1 | give up |
//! | K | non-INVITE client | T4 (0 reliable) | absorb retransmitted responses |
//! | G | INVITE server | T1, doubling to T2 | retransmit a 3xx-6xx until ACK |
//! | H | INVITE server | 64·T1 | give up waiting for the ACK |
//! | I | INVITE server | T4 (0 reliable) | absorb retransmitted ACKs |
//! | L | INVITE server | 64·T1 | absorb retransmitted INVITEs after a 2xx |
//! | J | non-INVITE server | 64·T1 (0 reliable) | absorb retransmitted requests |
//!
//! Matching: a response matches the client transaction with its top Via `branch` and CSeq
//! method (§17.1.3); a request matches the server transaction with its top Via `branch`,
//! `sent-by` and method, an ACK matching its INVITE (§17.2.3). For requests whose branch lacks
//! the RFC 3261 magic cookie `z9hG4bK` (RFC 2543 peers), the key also takes the Call-ID, CSeq
//! number and From tag, which an ACK shares with its INVITE (§17.2.3's fallback, without the
//! To tag, which the ACK for a non-2xx changes).
//!
//! An INVITE client transaction that got a provisional response waits at most 3 minutes for
//! the final one (Timer C of §16.6, applied here so that a dead peer can't keep a transaction
//! forever); the transaction user normally CANCELs long before.
//!
//! The number of live transactions is bounded ([`Transactions::new`]); beyond it, new requests
//! are reported to the transaction user as [`Event::Overloaded`] so it can answer 503 statelessly.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::header::{CSeq, Via};
use crate::message::{HeaderName, Headers, Message, Method, Request, Response};

/// How long an INVITE client transaction waits for a final response after a provisional one.
pub const TIMER_C: Duration = Duration::from_secs(180);

/// Protocol timer values (§17.1.1.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timers {
    /// RTT estimate, default 500 ms.
    pub t1: Duration,
    /// Longest retransmit interval for non-INVITE requests and INVITE responses, default 4 s.
    pub t2: Duration,
    /// Longest time a message stays in the network, default 5 s.
    pub t4: Duration,
}

impl Default for Timers {
    fn default() -> Self {
        Self {
            t1: Duration::from_millis(500),
            t2: Duration::from_secs(4),
            t4: Duration::from_secs(5),
        }
    }
}

impl Timers {
    fn t1x64(&self) -> Duration {
        self.t1 * 64
    }
}

/// Identifies a client transaction (§17.1.3).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ClientKey {
    /// Top Via branch of the request.
    pub branch: String,
    /// CSeq method.
    pub method: Method,
}

/// Identifies a server transaction (§17.2.3).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ServerKey {
    /// Top Via branch.
    pub branch: String,
    /// Top Via sent-by, `host[:port]`, lowercased.
    pub sent_by: String,
    /// Method; an ACK is keyed as INVITE so it finds its transaction.
    pub method: Method,
}

/// Why the layer refused an action of the transaction user.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TransactionError {
    /// The request has no usable top Via with a branch, or no CSeq.
    #[error("request needs a top Via with a branch and a CSeq")]
    MissingBranch,
    /// A client transaction with this key exists already.
    #[error("a transaction with this branch exists")]
    Duplicate,
    /// No server transaction has this key (it ended, or never was).
    #[error("no such server transaction")]
    UnknownTransaction,
    /// The transaction already sent its final response.
    #[error("the transaction already has a final response")]
    AlreadyFinal,
    /// ACK is not sent through a client transaction (§17.1.1.3, §13.2.2.4).
    #[error("ACK is sent outside transactions")]
    Ack,
}

/// What the layer tells the transaction user.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event<A> {
    /// A new request: a new server transaction exists with `key` (ACKs that match no
    /// transaction, i.e. ACKs for 2xx, arrive here too, with no transaction created).
    Request {
        /// The server transaction, to answer through [`Transactions::send_response`].
        key: ServerKey,
        /// The request.
        request: Request,
        /// Where it came from.
        from: A,
    },
    /// A response for a client transaction (every 1xx, the first final response, and each
    /// distinct 2xx to an INVITE, which may fork).
    Response {
        /// The client transaction.
        key: ClientKey,
        /// The response.
        response: Response,
    },
    /// No final response arrived in time (Timer B or F): act as if 408 was received.
    Timeout {
        /// The client transaction.
        key: ClientKey,
    },
    /// An INVITE server transaction sent a 3xx-6xx and never got the ACK (Timer H).
    AckTimeout {
        /// The server transaction.
        key: ServerKey,
    },
    /// A new request could not get a transaction: too many are live. Answer it 503
    /// statelessly.
    Overloaded {
        /// The request.
        request: Request,
        /// Where it came from.
        from: A,
    },
}

/// An output of the layer.
// Outputs are drained right after each input, so few exist at once; boxing the event would
// cost an allocation per event for nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output<A> {
    /// Send `bytes` to `to`.
    Transmit {
        /// Destination.
        to: A,
        /// Datagram or stream bytes.
        bytes: Bytes,
    },
    /// Tell the transaction user.
    Event(Event<A>),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ClientState {
    /// INVITE: Calling; non-INVITE: Trying.
    Initial,
    Proceeding,
    /// RFC 6026: a 2xx to an INVITE arrived; later 2xx (forks) still go to the TU.
    Accepted,
    Completed,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ServerState {
    /// Non-INVITE only: no response yet.
    Trying,
    Proceeding,
    /// RFC 6026: a 2xx was sent to an INVITE.
    Accepted,
    Completed,
    /// INVITE only: the ACK arrived.
    Confirmed,
}

/// Timers of one transaction: at most one retransmit timer and one end timer.
#[derive(Clone, Copy, Debug, Default)]
struct TxTimers {
    /// A, E or G: when to retransmit, and the interval after that.
    retransmit: Option<(Instant, Duration)>,
    /// B, D, F, H, I, J, K, L or M: when the state ends.
    end: Option<Instant>,
}

impl TxTimers {
    fn next(&self) -> Option<Instant> {
        match (self.retransmit.map(|(at, _)| at), self.end) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

struct ClientTx<A> {
    method: Method,
    state: ClientState,
    /// The request, until its final response (an ACK for a non-2xx is built from it); then
    /// freed with `bytes`, as the transaction may linger for 64*T1 (Timer M, D).
    request: Option<Request>,
    /// The request as sent, for retransmission (Timers A, E).
    bytes: Bytes,
    to: A,
    reliable: bool,
    timers: TxTimers,
    /// The ACK sent for a 3xx-6xx, resent when the final response is retransmitted.
    ack: Option<Bytes>,
    /// To-tags of 2xx responses already passed up (RFC 6026: pass each new one).
    accepted_tags: Vec<String>,
    version: u64,
}

struct ServerTx<A> {
    invite: bool,
    state: ServerState,
    from: A,
    reliable: bool,
    last_response: Option<Bytes>,
    timers: TxTimers,
    version: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum TimerOwner {
    Client(String, String),
    Server(String, String, String),
}

/// The transaction registry. `A` is whatever identifies a peer for the transport (an address,
/// or a connection id).
pub struct Transactions<A> {
    timers: Timers,
    max_transactions: usize,
    clients: HashMap<ClientKey, ClientTx<A>>,
    servers: HashMap<ServerKey, ServerTx<A>>,
    /// (deadline, owner, version); entries whose version is stale are skipped.
    heap: BinaryHeap<Reverse<(Instant, TimerOwner, u64)>>,
    outputs: VecDeque<Output<A>>,
    next_version: u64,
}

fn top_via(headers: &Headers) -> Option<Via<'_>> {
    headers
        .get(&HeaderName::Via)
        .and_then(|v| Via::parse(v).ok())
}

fn cseq(headers: &Headers) -> Option<CSeq> {
    headers
        .get(&HeaderName::CSeq)
        .and_then(|v| CSeq::parse(v).ok())
}

fn sent_by(via: &Via<'_>) -> String {
    match via.port {
        Some(port) => format!("{}:{port}", via.host.to_ascii_lowercase()),
        None => via.host.to_ascii_lowercase(),
    }
}

fn owner_of_client(key: &ClientKey) -> TimerOwner {
    TimerOwner::Client(key.branch.clone(), key.method.as_str().to_owned())
}

fn owner_of_server(key: &ServerKey) -> TimerOwner {
    TimerOwner::Server(
        key.branch.clone(),
        key.sent_by.clone(),
        key.method.as_str().to_owned(),
    )
}

fn client_key_of(owner: &TimerOwner) -> Option<ClientKey> {
    match owner {
        TimerOwner::Client(branch, method) => Method::parse(method).map(|method| ClientKey {
            branch: branch.clone(),
            method,
        }),
        TimerOwner::Server(..) => None,
    }
}

fn server_key_of(owner: &TimerOwner) -> Option<ServerKey> {
    match owner {
        TimerOwner::Server(branch, sent_by, method) => {
            Method::parse(method).map(|method| ServerKey {
                branch: branch.clone(),
                sent_by: sent_by.clone(),
                method,
            })
        }
        TimerOwner::Client(..) => None,
    }
}

/// RFC 3261 branch cookie (§8.1.1.7).
pub const MAGIC_COOKIE: &str = "z9hG4bK";

/// The server key of a request (§17.2.3). An ACK is keyed as INVITE; a CANCEL has its own
/// transaction and is matched to its INVITE by the transaction user (§9.2).
pub fn server_key(request: &Request) -> Option<ServerKey> {
    let via = top_via(&request.headers)?;
    let method = if request.method == Method::Ack {
        Method::Invite
    } else {
        request.method.clone()
    };
    let branch = match via.branch() {
        Some(branch) if branch.starts_with(MAGIC_COOKIE) => branch.to_owned(),
        other => {
            let call_id = request.headers.get(&HeaderName::CallId).unwrap_or_default();
            let seq = cseq(&request.headers).map_or(0, |c| c.seq);
            let from_tag = request
                .headers
                .get(&HeaderName::From)
                .and_then(|f| crate::header::NameAddr::parse(f).ok())
                .and_then(|f| f.tag().map(str::to_owned))
                .unwrap_or_default();
            format!("{}|{call_id}|{seq}|{from_tag}", other.unwrap_or_default())
        }
    };
    Some(ServerKey {
        branch,
        sent_by: sent_by(&via),
        method,
    })
}

/// The ACK for a 3xx-6xx response to `invite` (§17.1.1.3): same Request-URI, Call-ID, From,
/// CSeq number and top Via as the INVITE, the To of the response, the INVITE's Route set.
pub fn ack_for(invite: &Request, response: &Response) -> Request {
    let mut headers = Headers::new();
    if let Some(via) = invite.headers.get(&HeaderName::Via) {
        headers.push(HeaderName::Via, via);
    }
    for route in invite.headers.get_all(&HeaderName::Route) {
        headers.push(HeaderName::Route, route);
    }
    headers.push(HeaderName::MaxForwards, "70");
    for name in [HeaderName::From, HeaderName::CallId] {
        if let Some(value) = invite.headers.get(&name) {
            headers.push(name, value);
        }
    }
    if let Some(to) = response.headers.get(&HeaderName::To) {
        headers.push(HeaderName::To, to);
    }
    let seq = cseq(&invite.headers).map_or(1, |c| c.seq);
    headers.push(HeaderName::CSeq, format!("{seq} ACK"));
    Request {
        method: Method::Ack,
        uri: invite.uri.clone(),
        version: (2, 0),
        headers,
        body: Bytes::new(),
    }
}

fn to_tag(headers: &Headers) -> String {
    headers
        .get(&HeaderName::To)
        .and_then(|to| crate::header::NameAddr::parse(to).ok())
        .and_then(|to| to.tag().map(str::to_owned))
        .unwrap_or_default()
}

impl<A: Clone> Transactions<A> {
    /// A registry with `timers`, allowing at most `max_transactions` live transactions.
    pub fn new(timers: Timers, max_transactions: usize) -> Self {
        Self {
            timers,
            max_transactions,
            clients: HashMap::new(),
            servers: HashMap::new(),
            heap: BinaryHeap::new(),
            outputs: VecDeque::new(),
            next_version: 0,
        }
    }

    /// Live client and server transactions.
    pub fn len(&self) -> (usize, usize) {
        (self.clients.len(), self.servers.len())
    }

    /// Whether no transaction is live.
    pub fn is_empty(&self) -> bool {
        self.clients.is_empty() && self.servers.is_empty()
    }

    /// The next output, until `None`.
    pub fn poll_output(&mut self) -> Option<Output<A>> {
        self.outputs.pop_front()
    }

    /// When [`Self::handle_timeout`] must be called next.
    pub fn poll_timeout(&mut self) -> Option<Instant> {
        while let Some(Reverse((at, owner, version))) = self.heap.peek() {
            if self.current_version(owner) == Some(*version) {
                return Some(*at);
            }
            self.heap.pop();
        }
        None
    }

    fn current_version(&self, owner: &TimerOwner) -> Option<u64> {
        match owner {
            TimerOwner::Client(..) => client_key_of(owner)
                .and_then(|k| self.clients.get(&k))
                .map(|t| t.version),
            TimerOwner::Server(..) => server_key_of(owner)
                .and_then(|k| self.servers.get(&k))
                .map(|t| t.version),
        }
    }

    fn bump(&mut self) -> u64 {
        self.next_version += 1;
        self.next_version
    }

    fn schedule_client(&mut self, key: &ClientKey) {
        let version = self.bump();
        if let Some(tx) = self.clients.get_mut(key) {
            tx.version = version;
            if let Some(at) = tx.timers.next() {
                self.heap.push(Reverse((at, owner_of_client(key), version)));
            }
        }
    }

    fn schedule_server(&mut self, key: &ServerKey) {
        let version = self.bump();
        if let Some(tx) = self.servers.get_mut(key) {
            tx.version = version;
            if let Some(at) = tx.timers.next() {
                self.heap.push(Reverse((at, owner_of_server(key), version)));
            }
        }
    }

    fn transmit(&mut self, to: A, bytes: Bytes) {
        self.outputs.push_back(Output::Transmit { to, bytes });
    }

    fn event(&mut self, event: Event<A>) {
        self.outputs.push_back(Output::Event(event));
    }

    /// Starts a client transaction for `request` (its top Via must carry a branch) and sends
    /// it to `to`. `reliable` is true for TCP, TLS and WebSocket.
    pub fn send_request(
        &mut self,
        now: Instant,
        request: Request,
        to: A,
        reliable: bool,
    ) -> Result<ClientKey, TransactionError> {
        if request.method == Method::Ack {
            return Err(TransactionError::Ack);
        }
        let branch = top_via(&request.headers)
            .and_then(|v| v.branch().map(str::to_owned))
            .ok_or(TransactionError::MissingBranch)?;
        cseq(&request.headers).ok_or(TransactionError::MissingBranch)?;
        let key = ClientKey {
            branch,
            method: request.method.clone(),
        };
        if self.clients.contains_key(&key) {
            return Err(TransactionError::Duplicate);
        }
        let t = self.timers;
        let mut timers = TxTimers {
            retransmit: None,
            end: Some(now + t.t1x64()),
        }; // B or F
        if !reliable {
            timers.retransmit = Some((now + t.t1, t.t1)); // A or E
        }
        let bytes = Bytes::from(request.to_bytes());
        let tx = ClientTx {
            method: request.method.clone(),
            state: ClientState::Initial,
            request: Some(request),
            bytes: bytes.clone(),
            to: to.clone(),
            reliable,
            timers,
            ack: None,
            accepted_tags: Vec::new(),
            version: 0,
        };
        self.clients.insert(key.clone(), tx);
        self.transmit(to, bytes);
        self.schedule_client(&key);
        Ok(key)
    }

    /// Sends `response` through server transaction `key`.
    pub fn send_response(
        &mut self,
        now: Instant,
        key: &ServerKey,
        response: Response,
    ) -> Result<(), TransactionError> {
        let t = self.timers;
        let tx = self
            .servers
            .get_mut(key)
            .ok_or(TransactionError::UnknownTransaction)?;
        if matches!(
            tx.state,
            ServerState::Completed | ServerState::Confirmed | ServerState::Accepted
        ) {
            return Err(TransactionError::AlreadyFinal);
        }
        let bytes = Bytes::from(response.to_bytes());
        let status = response.status;
        tx.last_response = Some(bytes.clone());
        if status < 200 {
            tx.state = ServerState::Proceeding;
        } else if tx.invite && status < 300 {
            // RFC 6026 §7.1: Accepted; the TU retransmits the 2xx (§13.3.1.4).
            tx.state = ServerState::Accepted;
            tx.timers = TxTimers {
                retransmit: None,
                end: Some(now + t.t1x64()),
            }; // L
        } else if tx.invite {
            tx.state = ServerState::Completed;
            tx.timers = TxTimers {
                retransmit: (!tx.reliable).then_some((now + t.t1, t.t1)), // G
                end: Some(now + t.t1x64()),                               // H
            };
        } else {
            tx.state = ServerState::Completed;
            let j = if tx.reliable {
                Duration::ZERO
            } else {
                t.t1x64()
            };
            tx.timers = TxTimers {
                retransmit: None,
                end: Some(now + j),
            };
        }
        let to = tx.from.clone();
        self.transmit(to, bytes);
        self.schedule_server(key);
        Ok(())
    }

    /// Handles a message received from `from`.
    pub fn handle_message(&mut self, now: Instant, message: Message, from: A, reliable: bool) {
        match message {
            Message::Request(request) => self.handle_request(now, request, from, reliable),
            Message::Response(response) => self.handle_response(now, response),
        }
    }

    fn handle_request(&mut self, now: Instant, request: Request, from: A, reliable: bool) {
        // Parsed messages always have a valid top Via (`Message::parse` checks it).
        let Some(key) = server_key(&request) else {
            return;
        };
        let t = self.timers;
        if let Some(tx) = self.servers.get_mut(&key) {
            let is_ack = request.method == Method::Ack;
            match (tx.state, is_ack) {
                // A retransmitted request: resend the last response, if any (§17.2.1, §17.2.2).
                (ServerState::Proceeding | ServerState::Completed, false) => {
                    if let Some(bytes) = tx.last_response.clone() {
                        let to = tx.from.clone();
                        self.transmit(to, bytes);
                    }
                }
                (ServerState::Completed, true) if tx.invite => {
                    tx.state = ServerState::Confirmed;
                    let i = if tx.reliable { Duration::ZERO } else { t.t4 };
                    tx.timers = TxTimers {
                        retransmit: None,
                        end: Some(now + i),
                    };
                    self.schedule_server(&key);
                }
                // RFC 6026 §7.1: in Accepted, an ACK (for the 2xx) goes to the TU; INVITE
                // retransmissions are absorbed.
                (ServerState::Accepted, true) => self.event(Event::Request { key, request, from }),
                // Retransmissions in Trying, Accepted and Confirmed, and stray ACKs, are absorbed.
                _ => {}
            }
            return;
        }
        if request.method == Method::Ack {
            // An ACK for a 2xx (a new transaction of its own, §17.1.1.3) or for a transaction
            // that ended: the TU decides.
            self.event(Event::Request { key, request, from });
            return;
        }
        if self.clients.len() + self.servers.len() >= self.max_transactions {
            self.event(Event::Overloaded { request, from });
            return;
        }
        let invite = request.method == Method::Invite;
        let tx = ServerTx {
            invite,
            state: if invite {
                ServerState::Proceeding
            } else {
                ServerState::Trying
            },
            from: from.clone(),
            reliable,
            last_response: None,
            timers: TxTimers::default(),
            version: 0,
        };
        self.servers.insert(key.clone(), tx);
        if invite {
            // §17.2.1: answer 100 Trying at once rather than wait 200 ms for the TU.
            let trying = provisional(&request, 100, "Trying");
            let bytes = Bytes::from(trying.to_bytes());
            if let Some(tx) = self.servers.get_mut(&key) {
                tx.last_response = Some(bytes.clone());
            }
            self.transmit(from.clone(), bytes);
        }
        self.event(Event::Request { key, request, from });
    }

    fn handle_response(&mut self, now: Instant, response: Response) {
        let Some(via) = top_via(&response.headers) else {
            return;
        };
        let Some(branch) = via.branch() else { return };
        let Some(cseq) = cseq(&response.headers) else {
            return;
        };
        let key = ClientKey {
            branch: branch.to_owned(),
            method: cseq.method,
        };
        let t = self.timers;
        let Some(tx) = self.clients.get_mut(&key) else {
            // A stray response (no transaction): dropped (§18.1.2), including late 2xx
            // after Timer M; the TU would have had to ACK them, but a B2BUA without a
            // dialog for them cannot.
            return;
        };
        let status = response.status;
        let invite = tx.method == Method::Invite;
        match tx.state {
            ClientState::Initial | ClientState::Proceeding if status < 200 => {
                tx.state = ClientState::Proceeding;
                if invite {
                    // A stops and B no longer applies (§17.1.1.2); Timer C bounds the wait.
                    tx.timers.retransmit = None;
                    tx.timers.end = Some(now + TIMER_C);
                }
                // Non-INVITE: E keeps its deadline; when it fires in Proceeding it is reset to
                // T2 (§17.1.2.2, see `fire_client`).
                self.schedule_client(&key);
                self.event(Event::Response { key, response });
            }
            ClientState::Initial | ClientState::Proceeding if invite && status < 300 => {
                tx.state = ClientState::Accepted;
                tx.request = None;
                tx.bytes = Bytes::new();
                tx.accepted_tags.push(to_tag(&response.headers));
                tx.timers = TxTimers {
                    retransmit: None,
                    end: Some(now + t.t1x64()),
                }; // M
                self.schedule_client(&key);
                self.event(Event::Response { key, response });
            }
            ClientState::Initial | ClientState::Proceeding if invite => {
                let Some(request) = tx.request.take() else {
                    return;
                };
                tx.bytes = Bytes::new();
                let ack = Bytes::from(ack_for(&request, &response).to_bytes());
                tx.ack = Some(ack.clone());
                tx.state = ClientState::Completed;
                let d = if tx.reliable {
                    Duration::ZERO
                } else {
                    Duration::from_secs(32).max(t.t1x64())
                };
                tx.timers = TxTimers {
                    retransmit: None,
                    end: Some(now + d),
                };
                let to = tx.to.clone();
                self.transmit(to, ack);
                self.schedule_client(&key);
                self.event(Event::Response { key, response });
            }
            ClientState::Initial | ClientState::Proceeding => {
                tx.state = ClientState::Completed;
                tx.request = None;
                tx.bytes = Bytes::new();
                let k = if tx.reliable { Duration::ZERO } else { t.t4 };
                tx.timers = TxTimers {
                    retransmit: None,
                    end: Some(now + k),
                };
                self.schedule_client(&key);
                self.event(Event::Response { key, response });
            }
            ClientState::Accepted if (200..300).contains(&status) => {
                // A 2xx from another fork reaches the TU once per To tag; retransmissions of a
                // 2xx already seen are for the TU too (it re-sends its ACK) but are not new.
                let tag = to_tag(&response.headers);
                if !tx.accepted_tags.contains(&tag) {
                    tx.accepted_tags.push(tag);
                }
                self.event(Event::Response { key, response });
            }
            ClientState::Completed if invite && status >= 300 => {
                // A retransmitted final response: resend the ACK (§17.1.1.2).
                if let Some(ack) = tx.ack.clone() {
                    let to = tx.to.clone();
                    self.transmit(to, ack);
                }
            }
            // Anything else is a retransmission to absorb.
            _ => {}
        }
    }

    /// Fires every timer due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some(Reverse((at, owner, version))) = self.heap.peek().cloned() {
            if at > now {
                break;
            }
            self.heap.pop();
            if self.current_version(&owner) != Some(version) {
                continue;
            }
            if let Some(key) = client_key_of(&owner) {
                self.fire_client(now, &key);
            } else if let Some(key) = server_key_of(&owner) {
                self.fire_server(now, &key);
            }
        }
    }

    /// The transport could not reach `to` (a stream connection failed to open or broke):
    /// every client transaction sent there that has no final response ends now, reported as
    /// [`Event::Timeout`] (RFC 3261 §17.1.1.2, §17.1.2.2: a transport error ends the
    /// transaction; §8.1.3.1: the TU treats it as a failure of that destination).
    pub fn transport_failed(&mut self, to: &A)
    where
        A: PartialEq,
    {
        let failed: Vec<ClientKey> = self
            .clients
            .iter()
            .filter(|(_, tx)| {
                &tx.to == to && matches!(tx.state, ClientState::Initial | ClientState::Proceeding)
            })
            .map(|(key, _)| key.clone())
            .collect();
        for key in failed {
            self.clients.remove(&key);
            self.event(Event::Timeout { key });
        }
    }

    fn fire_client(&mut self, now: Instant, key: &ClientKey) {
        let t = self.timers;
        let Some(tx) = self.clients.get_mut(key) else {
            return;
        };
        if let Some((at, interval)) = tx.timers.retransmit
            && at <= now
        {
            // A doubles without bound (it stops at B); E doubles up to T2.
            let next = if tx.method == Method::Invite {
                interval * 2
            } else {
                (interval * 2).min(t.t2)
            };
            let next = if tx.state == ClientState::Proceeding {
                t.t2
            } else {
                next
            };
            tx.timers.retransmit = Some((now + next, next));
            let (to, bytes) = (tx.to.clone(), tx.bytes.clone());
            self.transmit(to, bytes);
        }
        let Some(tx) = self.clients.get_mut(key) else {
            return;
        };
        if tx.timers.end.is_some_and(|end| end <= now) {
            let timed_out = matches!(tx.state, ClientState::Initial | ClientState::Proceeding);
            self.clients.remove(key);
            if timed_out {
                self.event(Event::Timeout { key: key.clone() });
            }
            return;
        }
        self.schedule_client(key);
    }

    fn fire_server(&mut self, now: Instant, key: &ServerKey) {
        let t = self.timers;
        let Some(tx) = self.servers.get_mut(key) else {
            return;
        };
        if let Some((at, interval)) = tx.timers.retransmit
            && at <= now
        {
            let next = (interval * 2).min(t.t2); // G
            tx.timers.retransmit = Some((now + next, next));
            if let Some(bytes) = tx.last_response.clone() {
                let to = tx.from.clone();
                self.transmit(to, bytes);
            }
        }
        let Some(tx) = self.servers.get_mut(key) else {
            return;
        };
        if tx.timers.end.is_some_and(|end| end <= now) {
            let no_ack = tx.invite && tx.state == ServerState::Completed;
            self.servers.remove(key);
            if no_ack {
                self.event(Event::AckTimeout { key: key.clone() });
            }
            return;
        }
        self.schedule_server(key);
    }
}

/// A provisional response to `request` with the headers §8.2.6.2 requires copied.
pub fn provisional(request: &Request, status: u16, reason: &str) -> Response {
    response_to(request, status, reason)
}

/// A response to `request`: Via (all), From, To, Call-ID and CSeq copied (§8.2.6.2). The
/// caller adds a To tag where needed.
pub fn response_to(request: &Request, status: u16, reason: &str) -> Response {
    let mut headers = Headers::new();
    for via in request.headers.get_all(&HeaderName::Via) {
        headers.push(HeaderName::Via, via);
    }
    for name in [
        HeaderName::From,
        HeaderName::To,
        HeaderName::CallId,
        HeaderName::CSeq,
    ] {
        if let Some(value) = request.headers.get(&name) {
            headers.push(name, value);
        }
    }
    Response {
        version: (2, 0),
        status,
        reason: reason.to_owned(),
        headers,
        body: Bytes::new(),
    }
}

#[cfg(test)]
mod tests;
