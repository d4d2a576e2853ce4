//! [`MqttBackend`]: the publishing connection (each publish answered by
//! its PUBACK), retained publishes, subscribing, and the lifecycle.
//!
//! rumqttc's client only queues a publish; which packet id it got and when
//! its PUBACK came are events of the connection's event loop. Publishes are
//! queued under one lock together with their waiter, and the event loop
//! assigns its packet ids in queue order (`Outgoing::Publish(pkid)`), so the
//! driver gives each id to the oldest waiter without one and answers it on
//! that id's PUBACK. A lost connection fails every waiter (the publish may
//! or may not have arrived) and replaces client and event loop, so no old
//! queued publish can take a new waiter's packet id.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use rumqttc::v5::mqttbytes::v5::{Packet, PubAckReason, PublishProperties};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, EventLoop, MqttOptions};
use rumqttc::Outgoing;
use tokio::sync::{oneshot, watch, OwnedSemaphorePermit, Semaphore};
use wharf_core::{
    name, Backend, Capabilities, Capability, Error, Limits, Message, Publisher, Receipt, Result,
    SubscribeOptions, Subscriber, Subscription,
};

use crate::config::MqttConfig;
use crate::error::{client, unavailable, MqttError};
use crate::topics::Topics;
use crate::wire;

/// The backend's name in errors and logs.
pub(crate) const NAME: &str = "mqtt";

/// What [`MqttBackend`] declares; see the crate docs for each absent one.
pub(crate) const CAPABILITIES: Capabilities = Capabilities::empty()
    .with(Capability::ConsumerGroups)
    .with(Capability::NackWithDelay)
    .with(Capability::Ttl)
    .with(Capability::Wildcards)
    .with(Capability::DeadLetter)
    .with(Capability::MaxDeliveries)
    .with(Capability::Redelivery);

/// A Wharf backend on an MQTT 5 server; see the [crate docs](crate).
///
/// Cloning is cheap and shares the publishing connection; every
/// subscription has a connection (and server session) of its own.
///
/// ```no_run
/// # async fn run() -> wharf_core::Result<()> {
/// use wharf_core::{Message, Publisher, SubscribeOptions, Subscriber};
/// use wharf_mqtt::{MqttBackend, MqttConfig};
///
/// let mqtt = MqttBackend::connect(MqttConfig::new("mqtt://127.0.0.1:1883")).await?;
/// // Subscribe first: MQTT keeps nothing for a group that does not exist yet.
/// let mut sub = mqtt.subscribe(SubscribeOptions::new("sensors.*").group("store")).await?;
/// mqtt.publish("sensors.t1", Message::new("21.5")).await?; // returns on the PUBACK
/// let d = sub.next().await.expect("a delivery")?;
/// d.ack().await?; // the PUBACK for this delivery goes to the server now
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct MqttBackend {
    pub(crate) shared: Arc<Shared>,
}

pub(crate) struct Shared {
    pub(crate) config: MqttConfig,
    pub(crate) topics: Topics,
    pub(crate) publisher: Arc<PubConn>,
    pub(crate) closed: watch::Sender<bool>,
    /// Subscriptions made per (group, pattern) key, numbering their client ids.
    members: Mutex<HashMap<String, u32>>,
    /// Ends the publishing connection's driver when the backend is dropped.
    _driver_stop: watch::Sender<bool>,
}

/// The options of one connection of this backend.
pub(crate) fn options(config: &MqttConfig, client_id: String) -> Result<MqttOptions> {
    let (host, port) = config.host_port()?;
    let mut o = MqttOptions::new(client_id, host, port);
    o.set_keep_alive(config.keep_alive);
    o.set_connection_timeout(config.timeout.as_secs().max(1));
    // The server may send what fits our message limit plus the properties.
    o.set_max_packet_size(Some(
        u32::try_from(config.max_message_bytes + 64 * 1024).unwrap_or(u32::MAX),
    ));
    Ok(o)
}

/// Polls a new event loop until the server's CONNACK; returns whether it
/// resumed a session.
///
/// # Errors
/// [`Error::Unavailable`] when the server cannot be reached or refuses.
pub(crate) async fn handshake(ev: &mut EventLoop, timeout: Duration) -> Result<bool> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let polled = tokio::time::timeout_at(deadline, ev.poll())
            .await
            .map_err(|_| Error::Timeout {
                operation: "connecting to the MQTT server",
                after: timeout,
            })?;
        match polled {
            Ok(Event::Incoming(Packet::ConnAck(c))) => return Ok(c.session_present),
            Ok(_) => {}
            Err(e) => return Err(client("connect", e)),
        }
    }
}

/// A queued publish: whom to answer, and its slot in the window (freed
/// when the answer is sent, so a batch larger than the window flows).
type Waiter = (
    oneshot::Sender<std::result::Result<(), MqttError>>,
    OwnedSemaphorePermit,
);
type Answer = oneshot::Receiver<std::result::Result<(), MqttError>>;

/// The publishing connection.
pub(crate) struct PubConn {
    state: Mutex<PubState>,
    permits: Arc<Semaphore>,
    timeout: Duration,
}

struct PubState {
    client: AsyncClient,
    /// Queued publishes without a packet id yet, oldest first.
    fifo: VecDeque<Waiter>,
    /// Publishes sent, by packet id, awaiting their PUBACK.
    sent: HashMap<u16, Waiter>,
}

impl PubState {
    fn fail_all(&mut self) {
        for w in self.fifo.drain(..).chain(self.sent.drain().map(|(_, w)| w)) {
            let _ = w.0.send(Err(MqttError::ConnectionLost));
        }
    }
}

impl PubConn {
    fn lock(&self) -> MutexGuard<'_, PubState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A connected publisher and the driver to spawn.
    async fn connect(config: &MqttConfig) -> Result<(Arc<PubConn>, EventLoop)> {
        let (client, mut ev) = Self::new_client(config)?;
        handshake(&mut ev, config.timeout).await?;
        let conn = Arc::new(PubConn {
            state: Mutex::new(PubState {
                client,
                fifo: VecDeque::new(),
                sent: HashMap::new(),
            }),
            permits: Arc::new(Semaphore::new(usize::from(config.publish_window))),
            timeout: config.timeout,
        });
        Ok((conn, ev))
    }

    fn new_client(config: &MqttConfig) -> Result<(AsyncClient, EventLoop)> {
        let mut o = options(config, format!("{}-pub", config.client_id))?;
        o.set_clean_start(true);
        o.set_outgoing_inflight_upper_limit(config.publish_window);
        let cap = usize::from(config.publish_window) + 8;
        Ok(AsyncClient::new(o, cap))
    }

    /// Runs the event loop until `stop`: assigns packet ids to waiters,
    /// answers them on PUBACK, and reconnects with a fresh client after an
    /// error (failing every waiter).
    async fn drive(
        self: Arc<Self>,
        config: MqttConfig,
        mut ev: EventLoop,
        mut stop: watch::Receiver<bool>,
    ) {
        let mut backoff = Duration::from_millis(100);
        loop {
            let polled = tokio::select! {
                biased;
                _ = stop.wait_for(|s| *s) => return,
                p = ev.poll() => p,
            };
            match polled {
                Ok(Event::Outgoing(Outgoing::Publish(pkid))) => {
                    let mut st = self.lock();
                    // A packet id already waiting is a resend; otherwise it is
                    // the oldest queued publish's.
                    if !st.sent.contains_key(&pkid) {
                        if let Some(w) = st.fifo.pop_front() {
                            st.sent.insert(pkid, w);
                        }
                    }
                }
                Ok(Event::Incoming(Packet::PubAck(ack))) => {
                    backoff = Duration::from_millis(100);
                    if let Some(w) = self.lock().sent.remove(&ack.pkid) {
                        let r = match ack.reason {
                            PubAckReason::Success | PubAckReason::NoMatchingSubscribers => Ok(()),
                            other => Err(MqttError::PublishRefused {
                                reason: format!("{other:?}"),
                            }),
                        };
                        let _ = w.0.send(r);
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    if *stop.borrow() {
                        return;
                    }
                    tracing::warn!(error = %e, "mqtt publisher connection lost; reconnecting");
                    let fresh = Self::new_client(&config);
                    {
                        let mut st = self.lock();
                        st.fail_all();
                        if let Ok((client, new_ev)) = fresh {
                            st.client = client;
                            ev = new_ev;
                        }
                    }
                    tokio::select! {
                        _ = stop.wait_for(|s| *s) => return,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
            }
        }
    }

    /// Publishes at QoS 1 and returns once its PUBACK came.
    pub(crate) async fn send(
        &self,
        topic: String,
        props: PublishProperties,
        payload: Bytes,
        retain: bool,
    ) -> Result<()> {
        let rx = self.queue(topic, props, payload, retain).await?;
        self.wait(rx).await
    }

    async fn queue(
        &self,
        topic: String,
        props: PublishProperties,
        payload: Bytes,
        retain: bool,
    ) -> Result<Answer> {
        let permit = tokio::time::timeout(self.timeout, self.permits.clone().acquire_owned())
            .await
            .map_err(|_| Error::Timeout {
                operation: "waiting for a free MQTT publish slot",
                after: self.timeout,
            })?
            .map_err(|_| Error::Closed {
                what: "mqtt backend",
            })?;
        let (tx, rx) = oneshot::channel();
        let mut st = self.lock();
        st.fifo.push_back((tx, permit));
        if let Err(e) =
            st.client
                .try_publish_with_properties(topic, QoS::AtLeastOnce, retain, payload, props)
        {
            st.fifo.pop_back();
            return Err(client("publish", e));
        }
        Ok(rx)
    }

    async fn wait(&self, rx: Answer) -> Result<()> {
        match tokio::time::timeout(self.timeout, rx).await {
            Ok(Ok(Ok(()))) => Ok(()),
            Ok(Ok(Err(e @ MqttError::PublishRefused { .. }))) => Err(Error::Backend {
                backend: NAME,
                source: Box::new(e),
            }),
            Ok(Ok(Err(e))) => Err(unavailable(e)),
            Ok(Err(_)) => Err(unavailable(MqttError::ConnectionLost)),
            Err(_) => Err(Error::Timeout {
                operation: "waiting for the PUBACK",
                after: self.timeout,
            }),
        }
    }
}

impl MqttBackend {
    /// Connects the publishing connection (subscriptions connect their own).
    ///
    /// # Errors
    /// [`Error::Unavailable`] / [`Error::Timeout`] when the server cannot be
    /// reached; [`Error::InvalidName`] for a bad topic prefix.
    pub async fn connect(config: MqttConfig) -> Result<Self> {
        let topics = Topics::new(config.topic_prefix.as_deref())?;
        let (publisher, ev) = PubConn::connect(&config).await?;
        let (driver_stop, stop_rx) = watch::channel(false);
        tokio::spawn(publisher.clone().drive(config.clone(), ev, stop_rx));
        let (closed, _) = watch::channel(false);
        Ok(MqttBackend {
            shared: Arc::new(Shared {
                config,
                topics,
                publisher,
                closed,
                members: Mutex::default(),
                _driver_stop: driver_stop,
            }),
        })
    }

    /// The config the backend was made with.
    pub fn config(&self) -> &MqttConfig {
        &self.shared.config
    }

    /// Publishes `message` with MQTT's retain flag: the server keeps it as
    /// the topic's retained message (replacing the previous one) and sends it
    /// to every later subscription whose filter matches and that starts at
    /// [`StartPosition::Earliest`](wharf_core::StartPosition::Earliest).
    ///
    /// # Errors
    /// As [`Publisher::publish`].
    pub async fn publish_retained(&self, topic: &str, message: Message) -> Result<Receipt> {
        self.shared.publish(topic, &message, true).await
    }

    /// Removes `topic`'s retained message (a retained publish with an
    /// empty payload, which the server does not deliver).
    ///
    /// # Errors
    /// As [`Publisher::publish`].
    pub async fn clear_retained(&self, topic: &str) -> Result<()> {
        let s = &self.shared;
        s.check_open()?;
        let t = s.topics.topic_name(topic)?;
        s.publisher
            .send(t, PublishProperties::default(), Bytes::new(), true)
            .await
    }

    /// The MQTT topic name a Wharf topic maps to (`a.b` → `<prefix>/a/b`).
    ///
    /// # Errors
    /// [`Error::InvalidName`] for a name that is not a valid Wharf topic.
    pub fn mqtt_topic(&self, topic: &str) -> Result<String> {
        self.shared.topics.topic_name(topic)
    }

    /// The MQTT topic filter a Wharf pattern maps to (`a.*` → `a/+`,
    /// `a.>` → `a/+/#`).
    ///
    /// # Errors
    /// [`Error::InvalidName`] for a pattern that is not a valid Wharf pattern.
    pub fn mqtt_filter(&self, pattern: &str) -> Result<String> {
        let p = wharf_core::TopicPattern::parse(pattern)?;
        Ok(self.shared.topics.filter(&p))
    }
}

impl Shared {
    pub(crate) fn check_open(&self) -> Result<()> {
        if *self.closed.borrow() {
            return Err(Error::Closed {
                what: "mqtt backend",
            });
        }
        Ok(())
    }

    pub(crate) fn limits(&self) -> Limits {
        Limits::new(self.config.max_message_bytes)
    }

    fn check_size(&self, m: &Message) -> Result<()> {
        let max = self.config.max_message_bytes;
        if m.size() > max {
            return Err(Error::MessageTooLarge {
                size: m.size(),
                max,
            });
        }
        Ok(())
    }

    async fn publish(&self, topic: &str, message: &Message, retain: bool) -> Result<Receipt> {
        self.check_open()?;
        let t = self.topics.topic_name(topic)?;
        self.check_size(message)?;
        let props = wire::encode(message, &[])?;
        self.publisher
            .send(t, props, message.payload().clone(), retain)
            .await?;
        Ok(wharf_adapter::at_most_once::receipt(message))
    }

    /// Publishes a copy made by a subscription (redelivery, dead letter) to
    /// the MQTT topic `mqtt_topic`, even after the backend was closed (a
    /// settlement may still run then).
    pub(crate) async fn republish(
        &self,
        mqtt_topic: String,
        message: &Message,
        extra: &[(&str, String)],
    ) -> Result<()> {
        let props = wire::encode(message, extra)?;
        self.publisher
            .send(mqtt_topic, props, message.payload().clone(), false)
            .await
    }

    /// The next member number of `key` (a group and pattern).
    pub(crate) fn next_member(&self, key: &str) -> u32 {
        let mut m = self.members.lock().unwrap_or_else(|e| e.into_inner());
        let n = m.entry(key.to_owned()).or_insert(0);
        *n += 1;
        *n - 1
    }
}

#[async_trait]
impl Publisher for MqttBackend {
    async fn publish(&self, topic: &str, message: Message) -> Result<Receipt> {
        self.shared.publish(topic, &message, false).await
    }

    async fn publish_batch(&self, topic: &str, messages: Vec<Message>) -> Result<Vec<Receipt>> {
        let s = &self.shared;
        s.check_open()?;
        let t = s.topics.topic_name(topic)?;
        let mut prepared = Vec::with_capacity(messages.len());
        for m in &messages {
            s.check_size(m)?;
            prepared.push(wire::encode(m, &[])?);
        }
        // Pipelined: every publish is queued before the first PUBACK is awaited
        // (as far as the window allows).
        let mut waiting = Vec::with_capacity(messages.len());
        let mut first_err = None;
        for (props, m) in prepared.into_iter().zip(&messages) {
            match s
                .publisher
                .queue(t.clone(), props, m.payload().clone(), false)
                .await
            {
                Ok(w) => waiting.push(w),
                Err(e) => {
                    first_err = Some(e);
                    break;
                }
            }
        }
        for w in waiting {
            if let Err(e) = s.publisher.wait(w).await {
                first_err.get_or_insert(e);
            }
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(messages
                .iter()
                .map(wharf_adapter::at_most_once::receipt)
                .collect()),
        }
    }
}

#[async_trait]
impl Subscriber for MqttBackend {
    async fn subscribe(&self, options: SubscribeOptions) -> Result<Subscription> {
        crate::subscription::subscribe(self.shared.clone(), options).await
    }
}

#[async_trait]
impl Backend for MqttBackend {
    fn name(&self) -> &'static str {
        NAME
    }

    fn capabilities(&self) -> Capabilities {
        CAPABILITIES
    }

    fn limits(&self) -> Limits {
        self.shared.limits()
    }

    async fn ensure_topic(&self, topic: &str) -> Result<()> {
        // MQTT topics need no creating.
        name::validate_topic(topic)
    }

    async fn close(&self) -> Result<()> {
        // The publishing connection stays until the backend is dropped:
        // settling deliveries handed out before may still republish (a
        // redelivery, a dead letter).
        self.shared.closed.send_replace(true);
        Ok(())
    }
}

impl std::fmt::Debug for MqttBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MqttBackend")
            .field("url", &self.shared.config.url)
            .field("client_id", &self.shared.config.client_id)
            .finish_non_exhaustive()
    }
}
