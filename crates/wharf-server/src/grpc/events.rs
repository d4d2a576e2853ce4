//! The event store over gRPC (`wharf.v1.EventStore`): the same operations
//! as the HTTP routes in `http/events.rs`, on the same store and with the
//! same rights, and `Subscribe` as a server stream of event batches. A
//! store error is a status with an `EsErrorDetail` (a conflict is
//! `FAILED_PRECONDITION` naming stream, expected and actual); the request
//! size limit applies before decoding, as on every gRPC route. The hosted
//! projections (`CreateProjection` … `RebuildProjection`) take the same
//! rights as their HTTP routes in `http/projections.rs`.

use std::pin::Pin;

use futures_util::{FutureExt as _, Stream};
use tonic::{Request, Response, Status};
use wharf_eventstore::{EventStore as _, EventStoreError, Position, StreamId};
use wharf_proto::eventstore as conv;
use wharf_proto::v1;
use wharf_proto::v1::event_store_server::EventStore as EventStoreRpc;

use super::Service;
use crate::auth::{Right, ALL_STREAMS};
use crate::projections::{ProjectionsError, Report, Spec};

/// Most events sent in one `Subscribe` message.
const SUBSCRIBE_BATCH: usize = 256;
/// The most events one stream read or global read returns.
const MAX_READ: u64 = 10_000;

fn status(e: &EventStoreError) -> Status {
    conv::es_status_for(e)
}

fn stream_id(name: &str) -> Result<StreamId, Status> {
    StreamId::new(name).map_err(|e| status(&e))
}

impl Service {
    /// The right a global read with `filter` needs: `events_read` on its
    /// prefix, or on every stream without one or with system streams.
    fn check_filter<T>(
        &self,
        req: &Request<T>,
        filter: Option<&v1::EsFilter>,
    ) -> Result<(), Status> {
        let target = match filter {
            Some(f) if !f.include_system => match f.stream_prefix.as_deref() {
                Some(p) if !p.is_empty() => p,
                _ => ALL_STREAMS,
            },
            _ => ALL_STREAMS,
        };
        self.check(req, Right::EventsRead, target)
    }

    fn check_authenticated<T>(&self, req: &Request<T>) -> Result<(), Status> {
        match &self.shared.auth {
            None => Ok(()),
            Some(a) => a
                .authenticate(super::token(req))
                .map_err(|d| crate::error::denied_status(&d)),
        }
    }
}

/// The stream-name target of a projection's rights.
fn streams(prefix: &str) -> &str {
    if prefix.is_empty() {
        ALL_STREAMS
    } else {
        prefix
    }
}

impl Service {
    /// The rights to define or rebuild `spec` (as over HTTP): it reads
    /// every stream under its prefix and publishes to its topic.
    fn check_feeds<T>(&self, req: &Request<T>, spec: &Spec) -> Result<(), Status> {
        self.check(req, Right::EventsAdmin, streams(&spec.prefix))?;
        self.check_field(req, Right::EventsRead, streams(&spec.prefix), "prefix")?;
        self.check_field(req, Right::Publish, &spec.topic, "topic")
    }
}

/// A projection error as a status: bad input is `INVALID_ARGUMENT` with an
/// `EsErrorDetail` naming the field, as the store's own.
fn projection_status(e: &ProjectionsError) -> Status {
    use prost::Message as _;
    let message = e.to_string();
    match e {
        ProjectionsError::Invalid {
            field,
            value,
            requirement,
        } => {
            let detail = v1::EsErrorDetail {
                kind: v1::es_error_detail::Kind::InvalidArgument.into(),
                message: message.clone(),
                field: (*field).to_owned(),
                value: value.clone(),
                requirement: (*requirement).to_owned(),
                ..Default::default()
            };
            Status::with_details(
                tonic::Code::InvalidArgument,
                message,
                detail.encode_to_vec().into(),
            )
        }
        ProjectionsError::Exists(_) => Status::already_exists(message),
        ProjectionsError::NotFound(_) | ProjectionsError::NoTopic(_) => Status::not_found(message),
        ProjectionsError::Failed { .. } => Status::unavailable(message),
        ProjectionsError::Io(_) => Status::internal(message),
    }
}

fn projection_to_proto(r: Report) -> v1::EsProjection {
    v1::EsProjection {
        spec: Some(v1::EsProjectionSpec {
            name: r.spec.name,
            topic: r.spec.topic,
            prefix: r.spec.prefix,
        }),
        state: r.state.to_owned(),
        error: r.error,
        checkpoint: r.checkpoint.0,
        head: r.head.0,
        lag: r.lag,
        applied: r.applied,
        failures: r.failures,
        caught_up: r.caught_up,
    }
}

type SubscribeStream = Pin<Box<dyn Stream<Item = Result<v1::EsEvents, Status>> + Send>>;

#[tonic::async_trait]
impl EventStoreRpc for Service {
    async fn append(
        &self,
        req: Request<v1::EsAppendRequest>,
    ) -> Result<Response<v1::EsAppendResponse>, Status> {
        self.check(&req, Right::EventsAppend, &req.get_ref().stream)?;
        if req.get_ref().condition.is_some() {
            self.check_field(&req, Right::EventsRead, ALL_STREAMS, "append condition")?;
        }
        let append = conv::append_from_proto(req.into_inner()).map_err(|e| status(&e))?;
        let r = self
            .shared
            .events
            .append_with(append)
            .await
            .map_err(|e| status(&e))?;
        Ok(Response::new(conv::append_result_to_proto(&r)))
    }

    async fn read_stream(
        &self,
        req: Request<v1::EsReadStreamRequest>,
    ) -> Result<Response<v1::EsEvents>, Status> {
        self.check(&req, Right::EventsRead, &req.get_ref().stream)?;
        let mut r = req.into_inner();
        r.max_count = Some(r.max_count.unwrap_or(MAX_READ).min(MAX_READ));
        let (stream, options) = conv::read_stream_from_proto(&r).map_err(|e| status(&e))?;
        let events = self
            .shared
            .events
            .read_stream(&stream, options)
            .await
            .map_err(|e| status(&e))?;
        Ok(Response::new(v1::EsEvents {
            events: events.iter().map(conv::recorded_to_proto).collect(),
        }))
    }

    async fn read_all(
        &self,
        req: Request<v1::EsReadAllRequest>,
    ) -> Result<Response<v1::EsAllSlice>, Status> {
        self.check_filter(&req, req.get_ref().filter.as_ref())?;
        let r = req.into_inner();
        let filter = conv::filter_from_proto(r.filter);
        let n = u64::from(r.max_count).min(MAX_READ);
        let slice = self
            .shared
            .events
            .read_all(
                Position(r.from),
                &filter,
                usize::try_from(n).unwrap_or(usize::MAX),
            )
            .await
            .map_err(|e| status(&e))?;
        Ok(Response::new(conv::slice_to_proto(&slice)))
    }

    type SubscribeStream = SubscribeStream;

    async fn subscribe(
        &self,
        req: Request<v1::EsSubscribeRequest>,
    ) -> Result<Response<SubscribeStream>, Status> {
        self.check_filter(&req, req.get_ref().filter.as_ref())?;
        let r = req.into_inner();
        let from = conv::subscribe_from_from_proto(r.from, r.position).map_err(|e| status(&e))?;
        let filter = conv::filter_from_proto(r.filter);
        let sub = self
            .shared
            .events
            .subscribe(from, filter)
            .await
            .map_err(|e| status(&e))?;
        let shared = self.shared.clone();
        // State: the subscription, and an error seen while batching, sent
        // after that batch and ending the stream.
        let stream = futures_util::stream::unfold(
            (sub, shared, None::<Status>, false),
            |(mut sub, shared, pending, done)| async move {
                if done {
                    return None;
                }
                if let Some(err) = pending {
                    return Some((Err(err), (sub, shared, None, true)));
                }
                let first = tokio::select! {
                    e = sub.next() => e,
                    () = shared.stopping() => None,
                };
                let first = match first? {
                    Ok(e) => e,
                    Err(e) => return Some((Err(status(&e)), (sub, shared, None, true))),
                };
                // Whatever else is ready goes in the same message.
                let mut events = vec![conv::recorded_to_proto(&first)];
                let mut pending = None;
                while events.len() < SUBSCRIBE_BATCH {
                    match sub.next().now_or_never() {
                        Some(Some(Ok(e))) => events.push(conv::recorded_to_proto(&e)),
                        Some(Some(Err(e))) => {
                            pending = Some(status(&e));
                            break;
                        }
                        Some(None) | None => break,
                    }
                }
                Some((Ok(v1::EsEvents { events }), (sub, shared, pending, false)))
            },
        );
        Ok(Response::new(Box::pin(stream)))
    }

    async fn stream_info(
        &self,
        req: Request<v1::EsStreamName>,
    ) -> Result<Response<v1::EsStreamInfo>, Status> {
        self.check(&req, Right::EventsRead, &req.get_ref().stream)?;
        let stream = stream_id(&req.get_ref().stream)?;
        let info = self
            .shared
            .events
            .stream_info(&stream)
            .await
            .map_err(|e| status(&e))?;
        Ok(Response::new(conv::info_to_proto(&info)))
    }

    async fn set_stream_metadata(
        &self,
        req: Request<v1::EsSetMetadataRequest>,
    ) -> Result<Response<v1::EsPosition>, Status> {
        self.check(&req, Right::EventsAdmin, &req.get_ref().stream)?;
        let r = req.into_inner();
        let stream = stream_id(&r.stream)?;
        let p = self
            .shared
            .events
            .set_stream_metadata(&stream, conv::metadata_from_proto(r.metadata))
            .await
            .map_err(|e| status(&e))?;
        Ok(Response::new(v1::EsPosition { position: p.0 }))
    }

    async fn delete_stream(
        &self,
        req: Request<v1::EsDeleteRequest>,
    ) -> Result<Response<v1::EsPosition>, Status> {
        self.check(&req, Right::EventsAdmin, &req.get_ref().stream)?;
        let r = req.into_inner();
        let stream = stream_id(&r.stream)?;
        let expected =
            conv::expected_from_proto(r.expected, r.expected_version).map_err(|e| status(&e))?;
        let events = &self.shared.events;
        let p = if r.tombstone {
            events.tombstone_stream(&stream, expected).await
        } else {
            events.delete_stream(&stream, expected).await
        }
        .map_err(|e| status(&e))?;
        Ok(Response::new(v1::EsPosition { position: p.0 }))
    }

    async fn list_streams(
        &self,
        req: Request<v1::EsListStreamsRequest>,
    ) -> Result<Response<v1::EsListStreamsResponse>, Status> {
        let prefix = req.get_ref().prefix.as_str();
        let target = if prefix.is_empty() {
            ALL_STREAMS
        } else {
            prefix
        };
        self.check(&req, Right::EventsRead, target)?;
        let r = req.into_inner();
        let after = r.after.as_deref().map(stream_id).transpose()?;
        let n = u64::from(r.max_count).min(MAX_READ);
        let names = self
            .shared
            .events
            .list_streams(
                &r.prefix,
                after.as_ref(),
                usize::try_from(n).unwrap_or(usize::MAX),
            )
            .await
            .map_err(|e| status(&e))?;
        Ok(Response::new(v1::EsListStreamsResponse {
            streams: names.iter().map(|n| n.as_str().to_owned()).collect(),
        }))
    }

    async fn head(&self, req: Request<v1::Empty>) -> Result<Response<v1::EsPosition>, Status> {
        self.check_authenticated(&req)?;
        let p = self.shared.events.head().await.map_err(|e| status(&e))?;
        Ok(Response::new(v1::EsPosition { position: p.0 }))
    }

    async fn limits(&self, req: Request<v1::Empty>) -> Result<Response<v1::EsLimits>, Status> {
        self.check_authenticated(&req)?;
        Ok(Response::new(conv::limits_to_proto(
            &self.shared.events.limits(),
        )))
    }

    async fn create_projection(
        &self,
        req: Request<v1::EsProjectionSpec>,
    ) -> Result<Response<v1::EsProjection>, Status> {
        self.check_authenticated(&req)?;
        let r = req.get_ref();
        let spec = Spec {
            name: r.name.clone(),
            topic: r.topic.clone(),
            prefix: r.prefix.clone(),
        };
        self.check_feeds(&req, &spec)?;
        let r = self
            .shared
            .projections
            .create(spec)
            .await
            .map_err(|e| projection_status(&e))?;
        Ok(Response::new(projection_to_proto(r)))
    }

    async fn list_projections(
        &self,
        req: Request<v1::Empty>,
    ) -> Result<Response<v1::EsProjections>, Status> {
        self.check_any(&req, Right::EventsRead)?;
        let projections = self
            .shared
            .projections
            .list()
            .await
            .into_iter()
            .filter(|r| self.allowed(&req, Right::EventsRead, streams(&r.spec.prefix)))
            .map(projection_to_proto)
            .collect();
        Ok(Response::new(v1::EsProjections { projections }))
    }

    async fn projection_status(
        &self,
        req: Request<v1::EsProjectionName>,
    ) -> Result<Response<v1::EsProjection>, Status> {
        self.check_authenticated(&req)?;
        let name = &req.get_ref().name;
        let p = &self.shared.projections;
        let spec = p.spec(name).await.map_err(|e| projection_status(&e))?;
        self.check(&req, Right::EventsRead, streams(&spec.prefix))?;
        let r = p.status(name).await.map_err(|e| projection_status(&e))?;
        Ok(Response::new(projection_to_proto(r)))
    }

    async fn delete_projection(
        &self,
        req: Request<v1::EsProjectionName>,
    ) -> Result<Response<v1::Empty>, Status> {
        self.check_authenticated(&req)?;
        let name = &req.get_ref().name;
        let p = &self.shared.projections;
        let spec = p.spec(name).await.map_err(|e| projection_status(&e))?;
        self.check(&req, Right::EventsAdmin, streams(&spec.prefix))?;
        p.delete(name).await.map_err(|e| projection_status(&e))?;
        Ok(Response::new(v1::Empty {}))
    }

    async fn rebuild_projection(
        &self,
        req: Request<v1::EsProjectionName>,
    ) -> Result<Response<v1::EsProjection>, Status> {
        self.check_authenticated(&req)?;
        let name = &req.get_ref().name;
        let p = &self.shared.projections;
        let spec = p.spec(name).await.map_err(|e| projection_status(&e))?;
        self.check_feeds(&req, &spec)?;
        let r = p.rebuild(name).await.map_err(|e| projection_status(&e))?;
        Ok(Response::new(projection_to_proto(r)))
    }
}
