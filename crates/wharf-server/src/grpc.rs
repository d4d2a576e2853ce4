//! The gRPC API (`wharf.v1.Wharf`, and `wharf.v1.EventStore` in
//! `grpc/events.rs`): unary publish and admin calls, and the
//! bidirectional consume stream with credit-based flow control. The server
//! sends at most as many deliveries as the client has granted; settlements
//! name deliveries by the id the server gave them; when the stream ends,
//! unsettled deliveries are dropped and the broker redelivers them.

use std::collections::HashMap;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::Stream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::service::interceptor::InterceptedService;
use tonic::{Request, Response, Status, Streaming};
use wharf_broker::{Redrive, TopicInfo};
use wharf_core::{
    header, AckBatch, Backend, Delivery, Error, GroupMode, MessageId, PublishSource, Settlement,
    StartPosition, SubscribeOptions, Subscriber, Subscription, Timestamp,
};
use wharf_proto::convert::{error_to_proto, message_to_proto, receipt_to_proto, status_for};
use wharf_proto::frame::{self, FrameError, GRPC_HEADER};
use wharf_proto::publish::{compact_response, decode_publish, DecodedPublish};
use wharf_proto::v1::event_store_server::EventStoreServer;
use wharf_proto::v1::wharf_server::{Wharf, WharfServer};
use wharf_proto::v1::{self, consume_request, consume_response};

use crate::admin::{self, durability_str, TopicSettings};
use crate::auth::{Right, ORIGINAL_TOPIC_HEADER, REPLAY_TARGET};
use crate::error::denied_status;
use crate::message_limit::MessageLimitLayer;
use crate::{telemetry, Shared};

mod events;

/// The gRPC routes (service plus reflection), to merge into the HTTP router.
pub(crate) fn routes(shared: Arc<Shared>) -> axum::Router {
    let max = shared.config.max_request_bytes;
    let service = Arc::new(Service { shared });
    let svc = WharfServer::from_arc(service.clone())
        .max_decoding_message_size(max)
        .max_encoding_message_size(usize::MAX);
    // Reflection (v1, and v1alpha that stock grpcio clients still ask for)
    // describes the API, so it needs a valid token like `Info` does.
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(wharf_proto::FILE_DESCRIPTOR_SET)
    };
    let v1 = reflection()
        .build_v1()
        .expect("the embedded descriptor set is valid");
    let v1alpha = reflection()
        .build_v1alpha()
        .expect("the embedded descriptor set is valid");
    let auth = authenticated_interceptor(service.shared.clone());
    let events_svc = EventStoreServer::from_arc(service.clone())
        .max_decoding_message_size(max)
        .max_encoding_message_size(usize::MAX);
    // `Publish` has a route of its own (a static path wins over the
    // service's `/wharf.v1.Wharf/{*rest}`), so its request is decoded
    // straight into core messages rather than into generated structs first.
    axum::Router::new()
        .route_service(PUBLISH_PATH, PublishRoute { service, max })
        .merge(
            tonic::service::Routes::new(svc)
                .add_service(events_svc)
                .add_service(InterceptedService::new(v1, auth.clone()))
                .add_service(InterceptedService::new(v1alpha, auth))
                .into_axum_router(),
        )
        // Every call's request messages are checked against the limit as
        // they arrive, before tonic (or the publish route) decodes one.
        .layer(MessageLimitLayer::new(max))
}

/// Refuses a call without a valid token (when auth is on), before the
/// service sees it.
fn authenticated_interceptor(
    shared: Arc<Shared>,
) -> impl FnMut(Request<()>) -> Result<Request<()>, Status> + Clone {
    move |req: Request<()>| {
        if let Some(a) = &shared.auth {
            a.authenticate(token(&req)).map_err(|d| {
                telemetry::refused("auth");
                denied_status(&d)
            })?;
        }
        Ok(req)
    }
}

struct Service {
    shared: Arc<Shared>,
}

fn token<T>(req: &Request<T>) -> Option<&str> {
    let v = req.metadata().get("authorization")?.to_str().ok()?;
    Some(v.strip_prefix("Bearer ").unwrap_or(v).trim())
}

impl Service {
    fn check<T>(&self, req: &Request<T>, right: Right, topic: &str) -> Result<(), Status> {
        match &self.shared.auth {
            None => Ok(()),
            Some(a) => a.check(token(req), right, topic).map_err(|d| {
                telemetry::refused("auth");
                denied_status(&d)
            }),
        }
    }

    /// As [`Service::check`] for a topic that `field` of the request names.
    fn check_field<T>(
        &self,
        req: &Request<T>,
        right: Right,
        topic: &str,
        field: &'static str,
    ) -> Result<(), Status> {
        match &self.shared.auth {
            None => Ok(()),
            Some(a) => a.check_field(token(req), right, topic, field).map_err(|d| {
                telemetry::refused("auth");
                denied_status(&d)
            }),
        }
    }

    fn check_any<T>(&self, req: &Request<T>, right: Right) -> Result<(), Status> {
        match &self.shared.auth {
            None => Ok(()),
            Some(a) => a.check_any(token(req), right).map_err(|d| {
                telemetry::refused("auth");
                denied_status(&d)
            }),
        }
    }

    fn allowed<T>(&self, req: &Request<T>, right: Right, topic: &str) -> bool {
        self.shared
            .auth
            .as_ref()
            .is_none_or(|a| a.check(token(req), right, topic).is_ok())
    }

    fn topic_info(&self, name: &str) -> Result<TopicInfo, Status> {
        self.shared
            .broker
            .topics()
            .into_iter()
            .find(|t| t.name == name)
            .ok_or_else(|| status_for(&Error::UnknownTopic { topic: name.into() }))
    }
}

const PUBLISH_PATH: &str = "/wharf.v1.Wharf/Publish";

impl Service {
    /// `Publish`, whichever way the request was decoded: rights first, then
    /// the messages (an invalid id is bad input), then one broker publish.
    async fn publish_decoded(
        &self,
        req: Request<DecodedPublish>,
    ) -> Result<Response<v1::PublishResponse>, Status> {
        self.check(&req, Right::Publish, &req.get_ref().topic)?;
        if self.shared.auth.is_some() {
            if let Ok(msgs) = &req.get_ref().messages {
                for i in 0..msgs.len() {
                    for (name, value) in msgs.headers(i) {
                        if name == header::ORIGINAL_TOPIC {
                            self.check_field(&req, Right::Publish, value, ORIGINAL_TOPIC_HEADER)?;
                        }
                    }
                }
            }
        }
        let started = Instant::now();
        let DecodedPublish {
            topic,
            compact_receipts,
            all_ids,
            messages,
        } = req.into_inner();
        // The compact answer names no ids, so only when the client sent them all.
        let compact = compact_receipts && all_ids;
        let msgs = messages.map_err(|e| status_for(&e))?;
        let n = msgs.len();
        let bytes = msgs.total_size();
        let receipts = self
            .shared
            .broker
            .publish_from(&topic, &msgs)
            .await
            .map_err(|e| status_for(&e))?;
        telemetry::published(&topic, "grpc", n, bytes, started.elapsed());
        let compact = if compact {
            compact_response(&receipts)
        } else {
            None
        };
        Ok(Response::new(compact.unwrap_or_else(|| {
            v1::PublishResponse {
                receipts: receipts.iter().map(receipt_to_proto).collect(),
                ..Default::default()
            }
        })))
    }
}

/// The `Publish` route. A unary call read without tonic's `Streaming`,
/// which copies the body into a buffer of its own and then, to make room
/// for a message it already holds, into a buffer twice as large: here the
/// body's one HTTP/2 DATA frame (the server allows 1 MiB frames) is the
/// buffer the messages' payloads are sliced from, so a publish is decoded
/// without copying it once in user space. Same answers as the generated
/// route: size limit `RESOURCE_EXHAUSTED`, malformed `INVALID_ARGUMENT`,
/// compressed requests `UNIMPLEMENTED`, errors as trailers-only responses.
#[derive(Clone)]
struct PublishRoute {
    service: Arc<Service>,
    max: usize,
}

type RouteFuture = Pin<
    Box<
        dyn std::future::Future<
                Output = Result<axum::http::Response<tonic::body::Body>, Infallible>,
            > + Send,
    >,
>;

impl tonic::codegen::Service<axum::http::Request<axum::body::Body>> for PublishRoute {
    type Response = axum::http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = RouteFuture;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Infallible>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: axum::http::Request<axum::body::Body>) -> RouteFuture {
        let (service, max) = (self.service.clone(), self.max);
        Box::pin(async move {
            Ok(publish_unary(&service, max, req)
                .await
                .unwrap_or_else(Status::into_http))
        })
    }
}

async fn publish_unary(
    service: &Service,
    max: usize,
    req: axum::http::Request<axum::body::Body>,
) -> Result<axum::http::Response<tonic::body::Body>, Status> {
    use http_body_util::{BodyExt, Full, LengthLimitError, Limited};

    let (parts, body) = req.into_parts();
    if parts
        .headers
        .get("grpc-encoding")
        .is_some_and(|e| e.as_bytes() != b"identity")
    {
        return Err(Status::unimplemented(
            "compressed requests are not supported",
        ));
    }
    let too_large = || {
        telemetry::refused("too_large");
        Status::resource_exhausted(format!("request larger than the limit of {max} bytes"))
    };
    // One chunk (the usual case) is kept as is; several are joined.
    let data = match Limited::new(body, max.saturating_add(GRPC_HEADER))
        .collect()
        .await
    {
        Ok(c) => c.to_bytes(),
        Err(e) if e.is::<LengthLimitError>() => return Err(too_large()),
        Err(e) => {
            return Err(Status::cancelled(format!(
                "reading the request failed: {e}"
            )))
        }
    };
    let message = frame::unary_message(&data, max).map_err(|e| match e {
        FrameError::TooLarge { .. } => too_large(),
        FrameError::Compressed => Status::unimplemented("compressed requests are not supported"),
        e => Status::invalid_argument(format!("request: {e}")),
    })?;
    let decoded = decode_publish(&message)
        .map_err(|e| Status::invalid_argument(format!("malformed protobuf: {e}")))?;
    let request = Request::from_parts(
        tonic::metadata::MetadataMap::from_headers(parts.headers),
        parts.extensions,
        decoded,
    );
    let response = service.publish_decoded(request).await?.into_inner();
    let len = prost::Message::encoded_len(&response);
    let mut out = bytes::BytesMut::with_capacity(GRPC_HEADER + len);
    frame::put_header(&mut out, len).map_err(|_| Status::internal("response too large"))?;
    prost::Message::encode_raw(&response, &mut out);
    let mut trailers = axum::http::HeaderMap::new();
    trailers.insert("grpc-status", axum::http::HeaderValue::from_static("0"));
    let body = Full::new(out.freeze()).with_trailers(std::future::ready(Some(Ok(trailers))));
    axum::http::Response::builder()
        .header("content-type", "application/grpc")
        .body(tonic::body::Body::new(body))
        .map_err(|e| Status::internal(format!("building the response failed: {e}")))
}

pub(crate) fn topic_to_proto(t: &TopicInfo) -> v1::TopicInfo {
    let c = &t.config;
    v1::TopicInfo {
        name: t.name.clone(),
        config: Some(v1::TopicConfig {
            partitions: c.partitions,
            durability: durability_str(c.durability),
            retention_bytes: c.retention_bytes,
            retention_ms: c.retention_ms,
            max_message_bytes: c.max_message_bytes as u64,
            ttl_ms: c.ttl_ms,
            dedup_window_ms: c.dedup_window_ms,
            dead_letter_topic: c.dead_letter_topic.clone(),
            max_deliveries: c.max_deliveries,
            visibility_timeout_ms: c.visibility_timeout_ms,
            skip_damaged_batches: c.skip_damaged_batches,
            segment_bytes: c.segment_bytes,
        }),
        partitions: t
            .partitions
            .iter()
            .enumerate()
            .map(|(i, (s, e))| v1::PartitionInfo {
                partition: i as u32,
                start_offset: *s,
                end_offset: *e,
                damage: t
                    .damage
                    .iter()
                    .filter(|(p, _)| *p as usize == i)
                    .map(|(_, d)| damage_to_proto(d))
                    .collect(),
                bytes: t.partition_bytes.get(i).copied().unwrap_or(0),
            })
            .collect(),
        bytes: t.bytes(),
    }
}

fn damage_to_proto(d: &wharf_broker::Damage) -> v1::DamagedBatch {
    v1::DamagedBatch {
        file: d.path.display().to_string(),
        position: d.position,
        end_position: d.end_position,
        start_offset: d.start_offset,
        end_offset: d.end_offset,
        reason: d.reason.to_string(),
    }
}

/// A `StartKind` and its value (offset, or ms since the epoch) as a start
/// position; `None` for `START_DEFAULT` (or an unknown kind).
fn start_position(kind: i32, value: u64) -> Option<StartPosition> {
    match v1::StartKind::try_from(kind).unwrap_or(v1::StartKind::StartDefault) {
        v1::StartKind::StartDefault => None,
        v1::StartKind::StartEarliest => Some(StartPosition::Earliest),
        v1::StartKind::StartLatest => Some(StartPosition::Latest),
        v1::StartKind::StartOffset => Some(StartPosition::Offset(value)),
        v1::StartKind::StartTime => Some(StartPosition::Time(Timestamp::from_millis(value))),
    }
}

fn subscribe_options(s: &v1::SubscribeRequest) -> SubscribeOptions {
    let mut o = SubscribeOptions::new(s.pattern.clone());
    if let Some(g) = &s.group {
        o = o.group(g.clone());
    }
    if let Some(at) = start_position(s.start, s.start_value) {
        o = o.start(at);
    }
    if s.max_in_flight > 0 {
        o = o.max_in_flight(s.max_in_flight as usize);
    }
    if let Some(v) = s.visibility_timeout_ms {
        o = o.visibility_timeout(Duration::from_millis(v));
    }
    if let Some(n) = s.max_deliveries {
        o = o.max_deliveries(n);
    }
    if let Some(t) = &s.dead_letter_topic {
        o = o.dead_letter_topic(t.clone());
    }
    if s.mode == v1::GroupMode::Stream as i32 {
        o = o.mode(GroupMode::Stream);
    }
    o
}

type ConsumeStream = Pin<Box<dyn Stream<Item = Result<v1::ConsumeResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Wharf for Service {
    async fn info(
        &self,
        req: Request<v1::InfoRequest>,
    ) -> Result<Response<v1::InfoResponse>, Status> {
        if let Some(a) = &self.shared.auth {
            a.authenticate(token(&req)).map_err(|d| denied_status(&d))?;
        }
        let b = &self.shared.broker;
        Ok(Response::new(v1::InfoResponse {
            cpu_seconds: crate::process::cpu_time().map(|d| d.as_secs_f64()),
            resident_memory_bytes: crate::process::resident_bytes(),
            version: env!("CARGO_PKG_VERSION").into(),
            capabilities: b
                .capabilities()
                .iter()
                .map(|c| c.as_str().to_owned())
                .collect(),
            max_message_bytes: b.limits().max_message_bytes as u64,
        }))
    }

    async fn publish(
        &self,
        req: Request<v1::PublishRequest>,
    ) -> Result<Response<v1::PublishResponse>, Status> {
        self.publish_decoded(req.map(DecodedPublish::from_proto))
            .await
    }

    type ConsumeStream = ConsumeStream;

    async fn consume(
        &self,
        req: Request<Streaming<v1::ConsumeRequest>>,
    ) -> Result<Response<Self::ConsumeStream>, Status> {
        let tok = token(&req).map(str::to_owned);
        if let Some(a) = &self.shared.auth {
            a.authenticate(tok.as_deref())
                .map_err(|d| denied_status(&d))?;
        }
        let mut inbound = req.into_inner();
        let first = inbound
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("consume stream ended before subscribe"))?;
        let Some(consume_request::Kind::Subscribe(s)) = first.kind else {
            return Err(Status::invalid_argument(
                "the first consume message must be subscribe",
            ));
        };
        if let Some(a) = &self.shared.auth {
            let refused = |d| {
                telemetry::refused("auth");
                denied_status(&d)
            };
            a.check(tok.as_deref(), Right::Consume, &s.pattern)
                .map_err(refused)?;
            // Rejected and exhausted deliveries are written there.
            if let Some(dlq) = &s.dead_letter_topic {
                a.check_field(tok.as_deref(), Right::Publish, dlq, "dead_letter_topic")
                    .map_err(refused)?;
            }
        }
        let sub = self
            .shared
            .broker
            .subscribe(subscribe_options(&s))
            .await
            .map_err(|e| status_for(&e))?;
        let (tx, rx) = mpsc::channel(256);
        let _ = tx
            .send(Ok(v1::ConsumeResponse {
                kind: Some(consume_response::Kind::Subscribed(true)),
            }))
            .await;
        tokio::spawn(consume_loop(self.shared.clone(), sub, inbound, tx));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn create_topic(
        &self,
        req: Request<v1::CreateTopicRequest>,
    ) -> Result<Response<v1::TopicInfo>, Status> {
        let r = req.get_ref();
        self.check(&req, Right::Admin, &r.name)?;
        // Rejects from any consumer will be written there.
        if let Some(dlq) = &r.dead_letter_topic {
            self.check_field(&req, Right::Publish, dlq, "dead_letter_topic")?;
        }
        let settings = TopicSettings {
            partitions: r.partitions,
            durability: r.durability.clone(),
            retention_bytes: r.retention_bytes,
            retention_ms: r.retention_ms,
            max_message_bytes: r.max_message_bytes,
            ttl_ms: r.ttl_ms,
            dead_letter_topic: r.dead_letter_topic.clone(),
            max_deliveries: r.max_deliveries,
            visibility_timeout_ms: r.visibility_timeout_ms,
            dedup_window_ms: r.dedup_window_ms,
            skip_damaged_batches: r.skip_damaged_batches,
            segment_bytes: r.segment_bytes,
        };
        let cfg = settings.to_config().map_err(|e| status_for(&e))?;
        self.shared
            .broker
            .create_topic(&r.name, cfg)
            .await
            .map_err(|e| status_for(&e))?;
        Ok(Response::new(topic_to_proto(&self.topic_info(&r.name)?)))
    }

    async fn ensure_topic(
        &self,
        req: Request<v1::TopicName>,
    ) -> Result<Response<v1::Empty>, Status> {
        let name = req.get_ref().name.clone();
        if !self.allowed(&req, Right::Admin, &name) {
            self.check(&req, Right::Publish, &name)?;
        }
        self.shared
            .broker
            .ensure_topic(&name)
            .await
            .map_err(|e| status_for(&e))?;
        Ok(Response::new(v1::Empty {}))
    }

    async fn list_topics(
        &self,
        req: Request<v1::ListTopicsRequest>,
    ) -> Result<Response<v1::ListTopicsResponse>, Status> {
        self.check_any(&req, Right::Admin)?;
        let topics = self
            .shared
            .broker
            .topics()
            .iter()
            .filter(|t| self.allowed(&req, Right::Admin, &t.name))
            .map(topic_to_proto)
            .collect();
        Ok(Response::new(v1::ListTopicsResponse { topics }))
    }

    async fn describe_topic(
        &self,
        req: Request<v1::TopicName>,
    ) -> Result<Response<v1::TopicInfo>, Status> {
        let name = req.get_ref().name.clone();
        self.check(&req, Right::Admin, &name)?;
        Ok(Response::new(topic_to_proto(&self.topic_info(&name)?)))
    }

    async fn delete_topic(
        &self,
        req: Request<v1::TopicName>,
    ) -> Result<Response<v1::Empty>, Status> {
        let name = req.get_ref().name.clone();
        self.check(&req, Right::Admin, &name)?;
        self.shared.pollers.forget_topic(&name);
        self.shared
            .broker
            .delete_topic(&name)
            .await
            .map_err(|e| status_for(&e))?;
        Ok(Response::new(v1::Empty {}))
    }

    async fn set_partitions(
        &self,
        req: Request<v1::SetPartitionsRequest>,
    ) -> Result<Response<v1::TopicInfo>, Status> {
        let r = req.get_ref();
        self.check(&req, Right::Admin, &r.name)?;
        self.shared
            .broker
            .set_partitions(&r.name, r.partitions)
            .await
            .map_err(|e| status_for(&e))?;
        Ok(Response::new(topic_to_proto(&self.topic_info(&r.name)?)))
    }

    async fn repair_partition(
        &self,
        req: Request<v1::RepairPartitionRequest>,
    ) -> Result<Response<v1::RepairPartitionResponse>, Status> {
        use v1::repair_partition_request::Action;
        let r = req.get_ref();
        self.check(&req, Right::Admin, &r.topic)?;
        let action = match &r.action {
            Some(Action::SkipBatch(_)) => wharf_broker::RepairAction::SkipBatch,
            Some(Action::TruncateAt(t)) => wharf_broker::RepairAction::TruncateAt(t.offset),
            None => {
                return Err(Status::invalid_argument(
                    "action: skip_batch or truncate_at",
                ))
            }
        };
        let report = self
            .shared
            .broker
            .repair(&r.topic, r.partition, action, r.dry_run)
            .await
            .map_err(|e| status_for(&e))?;
        Ok(Response::new(v1::RepairPartitionResponse {
            dry_run: report.dry_run,
            damage: report.damage.as_ref().map(damage_to_proto),
            lost_from: report.lost.start,
            lost_to: report.lost.end,
            remaining: u32::try_from(report.remaining).unwrap_or(u32::MAX),
        }))
    }

    async fn list_groups(
        &self,
        req: Request<v1::ListGroupsRequest>,
    ) -> Result<Response<v1::ListGroupsResponse>, Status> {
        self.check_any(&req, Right::Admin)?;
        let want = req.get_ref().group.clone();
        let groups = self
            .shared
            .broker
            .group_details()
            .into_iter()
            .filter(|g| want.as_ref().is_none_or(|w| *w == g.group))
            .filter(|g| self.allowed(&req, Right::Admin, &g.topic))
            .map(group_to_proto)
            .collect();
        Ok(Response::new(v1::ListGroupsResponse { groups }))
    }

    async fn reset_group(
        &self,
        req: Request<v1::ResetGroupRequest>,
    ) -> Result<Response<v1::ResetGroupResponse>, Status> {
        let r = req.get_ref();
        self.check(&req, Right::Admin, &r.topic)?;
        let to = start_position(r.to, r.value).ok_or_else(|| {
            Status::invalid_argument("to: START_EARLIEST, START_LATEST, START_OFFSET or START_TIME")
        })?;
        match self
            .shared
            .broker
            .reset_group(&r.group, &r.topic, to)
            .map_err(|e| status_for(&e))?
        {
            wharf_broker::GroupReset::Moved(parts) => Ok(Response::new(v1::ResetGroupResponse {
                partitions: parts
                    .into_iter()
                    .map(|(partition, offset)| v1::ResetPartition { partition, offset })
                    .collect(),
            })),
            wharf_broker::GroupReset::InUse => Err(Status::failed_precondition(format!(
                "group {:?} is in use on {:?} (a bound consumer or an unsettled delivery): stop its consumers and retry",
                r.group, r.topic
            ))),
            _ => Err(Status::not_found(format!(
                "group {:?} has no position on {:?}",
                r.group, r.topic
            ))),
        }
    }

    async fn dlq_list(
        &self,
        req: Request<v1::DlqListRequest>,
    ) -> Result<Response<v1::DlqListResponse>, Status> {
        let r = req.get_ref();
        let topic = admin::dlq_topic(&self.shared.broker, &r.topic);
        self.check(&req, Right::Admin, &topic)?;
        let limit = if r.limit == 0 { 1000 } else { r.limit as usize };
        let page = admin::dlq_page(&self.shared.broker, &topic, r.cursor.as_deref(), limit)
            .map_err(|e| status_for(&e))?;
        Ok(Response::new(v1::DlqListResponse {
            messages: page.messages.iter().map(dead_letter_to_proto).collect(),
            next_cursor: page.next.map(|p| p.to_string()),
        }))
    }

    async fn dlq_show(
        &self,
        req: Request<v1::DlqShowRequest>,
    ) -> Result<Response<v1::DeadLetter>, Status> {
        let r = req.get_ref();
        let topic = admin::dlq_topic(&self.shared.broker, &r.topic);
        self.check(&req, Right::Admin, &topic)?;
        let id = r.id.parse::<MessageId>().map_err(|_| {
            status_for(&Error::InvalidArgument {
                name: "id",
                reason: format!("{:?} is not a message id", r.id),
            })
        })?;
        let found = admin::dlq_find(&self.shared.broker, &topic, id)
            .map_err(|e| status_for(&e))?
            .ok_or_else(|| Status::not_found(format!("no dead letter {id} in {topic}")))?;
        Ok(Response::new(dead_letter_to_proto(&found)))
    }

    async fn dlq_replay(
        &self,
        req: Request<v1::DlqReplayRequest>,
    ) -> Result<Response<v1::DlqCountResponse>, Status> {
        let r = req.get_ref();
        let topic = admin::dlq_topic(&self.shared.broker, &r.topic);
        self.check(&req, Right::Admin, &topic)?;
        let which = match &r.id {
            None => Redrive::All,
            Some(id) => Redrive::Id(id.parse::<MessageId>().map_err(|_| {
                status_for(&Error::InvalidArgument {
                    name: "id",
                    reason: format!("{id:?} is not a message id"),
                })
            })?),
        };
        // As over HTTP: publish on every original topic a letter names.
        if self.shared.auth.is_some() {
            let targets = admin::replay_targets(&self.shared.broker, &topic, which)
                .map_err(|e| status_for(&e))?;
            for t in targets {
                self.check_field(&req, Right::Publish, &t, REPLAY_TARGET)?;
            }
        }
        let allow = |t: &str| self.allowed(&req, Right::Publish, t);
        let n = admin::dlq_replay(&self.shared.broker, &topic, which, &allow)
            .await
            .map_err(|e| status_for(&e))?;
        Ok(Response::new(v1::DlqCountResponse { count: n as u64 }))
    }

    async fn dlq_purge(
        &self,
        req: Request<v1::TopicName>,
    ) -> Result<Response<v1::DlqCountResponse>, Status> {
        let name = admin::dlq_topic(&self.shared.broker, &req.get_ref().name);
        self.check(&req, Right::Admin, &name)?;
        let n = admin::dlq_purge(&self.shared.broker, &name)
            .await
            .map_err(|e| status_for(&e))?;
        Ok(Response::new(v1::DlqCountResponse { count: n as u64 }))
    }
}

fn dead_letter_to_proto(p: &wharf_broker::Peeked) -> v1::DeadLetter {
    v1::DeadLetter {
        message: Some(message_to_proto(&p.message)),
        partition: p.partition,
        offset: Some(p.offset),
    }
}

fn group_to_proto(g: wharf_broker::GroupDetail) -> v1::GroupInfo {
    let mode = match g.mode {
        GroupMode::Stream => v1::GroupMode::Stream,
        _ => v1::GroupMode::Queue,
    };
    v1::GroupInfo {
        group: g.group,
        topic: g.topic,
        lag: g.lag,
        mode: mode as i32,
        members: g.members,
        partitions: g
            .partitions
            .into_iter()
            .map(|p| v1::GroupPartition {
                partition: p.partition,
                committed_offset: p.committed_offset,
                end_offset: p.end_offset,
                lag: p.lag,
                member: p.member,
                settled_above: p.settled_above,
            })
            .collect(),
    }
}

fn delivery_to_proto(id: u64, d: &Delivery) -> v1::Delivery {
    let info = d.info();
    v1::Delivery {
        delivery_id: id,
        message: Some(message_to_proto(d.message())),
        topic: info.topic.to_string(),
        partition: info.partition,
        offset: info.offset,
        attempt: info.attempt,
    }
}

type Out = mpsc::Sender<Result<v1::ConsumeResponse, Status>>;

async fn send(tx: &Out, kind: consume_response::Kind) -> bool {
    tx.send(Ok(v1::ConsumeResponse { kind: Some(kind) }))
        .await
        .is_ok()
}

/// Runs one consume stream until the client goes away or the server stops.
async fn consume_loop(
    shared: Arc<Shared>,
    sub: Subscription,
    mut inbound: Streaming<v1::ConsumeRequest>,
    tx: Out,
) {
    let mut sub = Some(sub);
    let mut credit: u64 = 0;
    let mut backoff = crate::backoff::ErrorBackoff::default();
    let mut paused: Option<tokio::time::Instant> = None;
    let mut held: HashMap<u64, Delivery> = HashMap::new();
    let mut next_id: u64 = 1;
    let stopping = shared.stopping();
    tokio::pin!(stopping);
    loop {
        // Unbiased: a steady stream of acks must not starve deliveries.
        tokio::select! {
            () = &mut stopping => {
                // End the stream without `ended`: the client resubscribes
                // (with backoff) once the server is back.
                break;
            }
            msg = inbound.message() => {
                let req = match msg {
                    Ok(Some(r)) => r,
                    Ok(None) | Err(_) => break,
                };
                match req.kind {
                    Some(consume_request::Kind::Credit(n)) => credit = credit.saturating_add(u64::from(n)),
                    Some(consume_request::Kind::Settle(s)) => {
                        let result = settle(&mut held, &s).await;
                        let r = v1::SettleResult {
                            request_id: s.request_id,
                            error: result.err().map(|e| error_to_proto(&e)),
                            failures: Vec::new(),
                        };
                        if !send(&tx, consume_response::Kind::Result(r)).await {
                            break;
                        }
                    }
                    Some(consume_request::Kind::AckMany(m)) => {
                        let r = ack_many(&mut held, &m).await;
                        if !send(&tx, consume_response::Kind::Result(r)).await {
                            break;
                        }
                    }
                    Some(consume_request::Kind::Release(id)) => {
                        held.remove(&id);
                    }
                    Some(consume_request::Kind::ReleaseUnseen(id)) => {
                        if let Some(d) = held.remove(&id) {
                            d.release_unseen();
                        }
                    }
                    Some(consume_request::Kind::Close(_)) => {
                        if let Some(mut s) = sub.take() {
                            let _ = s.close().await;
                            if !send(&tx, consume_response::Kind::Ended(true)).await {
                                break;
                            }
                        }
                    }
                    Some(consume_request::Kind::Subscribe(_)) | None => {
                        let e = Error::InvalidArgument {
                            name: "consume",
                            reason: "subscribe may only be sent once".into(),
                        };
                        let _ = send(&tx, consume_response::Kind::Error(error_to_proto(&e))).await;
                        break;
                    }
                }
            }
            () = tokio::time::sleep_until(paused.unwrap_or_else(tokio::time::Instant::now)), if paused.is_some() => {
                paused = None;
            }
            d = next(&mut sub), if credit > 0 && sub.is_some() && paused.is_none() => {
                match d {
                    Some(Ok(d)) => {
                        backoff.succeeded();
                        credit -= 1;
                        let id = next_id;
                        next_id += 1;
                        telemetry::delivered(d.topic(), "grpc", d.message().size());
                        let p = delivery_to_proto(id, &d);
                        held.insert(id, d);
                        if !send(&tx, consume_response::Kind::Delivery(p)).await {
                            break;
                        }
                    }
                    Some(Err(e)) => {
                        // Repeated errors: pause longer each time, not spin.
                        paused = Some(tokio::time::Instant::now() + backoff.failed());
                        if !send(&tx, consume_response::Kind::Error(error_to_proto(&e))).await {
                            break;
                        }
                    }
                    None => {
                        sub = None;
                        if !send(&tx, consume_response::Kind::Ended(true)).await {
                            break;
                        }
                    }
                }
            }
        }
    }
    drop(held);
}

async fn next(sub: &mut Option<Subscription>) -> Option<Result<Delivery, Error>> {
    match sub {
        Some(s) => s.next().await,
        None => std::future::pending().await,
    }
}

/// Acknowledges every delivery `m` names in one broker call
/// ([`AckBatch`]); unknown ids and failed acks are reported per delivery.
async fn ack_many(held: &mut HashMap<u64, Delivery>, m: &v1::AckMany) -> v1::SettleResult {
    let failure = |id: u64, e: &Error| v1::SettleFailure {
        delivery_id: id,
        error: Some(error_to_proto(e)),
    };
    let mut failures = Vec::new();
    let mut batch = AckBatch::new();
    let mut ids = Vec::with_capacity(m.delivery_ids.len());
    for &id in &m.delivery_ids {
        match held.remove(&id) {
            Some(d) => {
                ids.push((d.token(), id));
                batch.push(d);
            }
            None => failures.push(failure(id, &Error::UnknownDelivery { id: id.to_string() })),
        }
    }
    let failed = batch.flush().await;
    // Only what the broker really acknowledged counts as settled.
    telemetry::settled_n("ack", ids.len() - failed.len());
    if !failed.is_empty() {
        let by_token: HashMap<u64, u64> = ids.into_iter().collect();
        for (token, e) in failed {
            if let Some(&id) = by_token.get(&token) {
                failures.push(failure(id, &e));
            }
        }
    }
    v1::SettleResult {
        request_id: m.request_id,
        error: None,
        failures,
    }
}

async fn settle(held: &mut HashMap<u64, Delivery>, s: &v1::Settle) -> Result<(), Error> {
    let unknown = || Error::UnknownDelivery {
        id: s.delivery_id.to_string(),
    };
    let action = v1::SettleAction::try_from(s.action).map_err(|_| Error::InvalidArgument {
        name: "action",
        reason: format!("unknown settle action {}", s.action),
    })?;
    if action == v1::SettleAction::SettleExtend {
        let d = held.get(&s.delivery_id).ok_or_else(unknown)?;
        return d.extend(Duration::from_millis(s.duration_ms)).await;
    }
    let d = held.remove(&s.delivery_id).ok_or_else(unknown)?;
    let (settlement, kind) = match action {
        v1::SettleAction::SettleAck => (Settlement::Ack, "ack"),
        v1::SettleAction::SettleNack => (
            Settlement::Nack {
                delay: Duration::from_millis(s.duration_ms),
            },
            "nack",
        ),
        _ => (
            Settlement::Reject {
                reason: s.reason.clone(),
            },
            "reject",
        ),
    };
    telemetry::settled(kind);
    d.settle(settlement).await
}
