//! Every request body is read under two bounds, whatever reads it (the signed API, an
//! extractor, a provider callback): a deadline from the moment a handler starts reading, and a
//! budget of body bytes held by the whole node at once. A client that declares a body and
//! trickles it, or many of them together, can then neither hold a worker's memory for long
//! nor add up to more than the budget. A request refused for either reason is answered here
//! (408 or 503, Pusher's JSON error) and its connection is closed, never kept alive with an
//! unread body.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{Payload, ServiceRequest, ServiceResponse};
use actix_web::error::PayloadError;
use actix_web::http::ConnectionType;
use actix_web::middleware::Next;
use actix_web::web::{self, Bytes};
use actix_web::{HttpMessage, ResponseError};
use futures_util::Stream;
use tokio::time::Sleep;

use crate::http::ApiError;

/// The node's allowance of body bytes held by requests in progress.
#[derive(Debug)]
pub struct BodyBudget {
    held: AtomicUsize,
    limit: usize,
    timeout: Duration,
}

impl BodyBudget {
    pub fn new(limit: usize, timeout: Duration) -> Self {
        Self {
            held: AtomicUsize::new(0),
            limit,
            timeout,
        }
    }

    /// Body bytes held right now by requests in progress.
    pub fn held(&self) -> usize {
        self.held.load(Ordering::Relaxed)
    }

    fn try_take(&self, n: usize) -> bool {
        self.held
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| {
                held.checked_add(n).filter(|total| *total <= self.limit)
            })
            .is_ok()
    }

    fn give_back(&self, n: usize) {
        self.held.fetch_sub(n, Ordering::AcqRel);
    }
}

/// What one request's body came to, shared between its stream and the middleware.
#[derive(Default)]
struct Reading {
    taken: AtomicUsize,
    state: AtomicU8,
}

const FINISHED: u8 = 1;
const TIMED_OUT: u8 = 2;
const OVER_BUDGET: u8 = 3;

struct Guarded {
    inner: Payload,
    budget: Arc<BodyBudget>,
    reading: Arc<Reading>,
    /// Started by the first read, so time spent before a handler reads is not counted.
    deadline: Option<Pin<Box<Sleep>>>,
}

impl Guarded {
    fn refuse(
        &mut self,
        state: u8,
        kind: std::io::ErrorKind,
    ) -> Poll<Option<<Self as Stream>::Item>> {
        self.reading.state.store(state, Ordering::Release);
        Poll::Ready(Some(Err(PayloadError::Io(std::io::Error::from(kind)))))
    }
}

impl Stream for Guarded {
    type Item = Result<Bytes, PayloadError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.reading.state.load(Ordering::Acquire) > FINISHED {
            return Poll::Ready(None);
        }
        let timeout = this.budget.timeout;
        let deadline = this
            .deadline
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        match Pin::new(&mut this.inner).poll_next(cx) {
            Poll::Ready(Some(Ok(chunk))) => {
                if !this.budget.try_take(chunk.len()) {
                    return this.refuse(OVER_BUDGET, std::io::ErrorKind::OutOfMemory);
                }
                this.reading.taken.fetch_add(chunk.len(), Ordering::AcqRel);
                Poll::Ready(Some(Ok(chunk)))
            }
            Poll::Ready(None) => {
                this.reading.state.store(FINISHED, Ordering::Release);
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e))),
            Poll::Pending => match deadline.as_mut().poll(cx) {
                Poll::Ready(()) => this.refuse(TIMED_OUT, std::io::ErrorKind::TimedOut),
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

/// The middleware: wraps the body, answers for a refused one, gives the bytes back.
pub async fn guard(
    mut req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<EitherBody<impl MessageBody>>, actix_web::Error> {
    let Some(budget) = req
        .app_data::<web::Data<BodyBudget>>()
        .map(|b| b.clone().into_inner())
    else {
        return next.call(req).await.map(|r| r.map_into_left_body());
    };
    let reading = Arc::new(Reading::default());
    let inner = req.take_payload();
    req.set_payload(Payload::Stream {
        payload: Box::pin(Guarded {
            inner,
            budget: budget.clone(),
            reading: reading.clone(),
            deadline: None,
        }),
    });
    let outcome = next.call(req).await;
    budget.give_back(reading.taken.load(Ordering::Acquire));
    let refusal = match reading.state.load(Ordering::Acquire) {
        TIMED_OUT => Some(ApiError::RequestTimeout(format!(
            "request body not received within {} ms",
            budget.timeout.as_millis()
        ))),
        OVER_BUDGET => Some(ApiError::Unavailable(
            "too many request bodies in flight; retry shortly".into(),
        )),
        _ => None,
    };
    let res = match (outcome?, refusal) {
        (res, None) => res.map_into_left_body(),
        (res, Some(error)) => {
            let (req, _) = res.into_parts();
            ServiceResponse::new(req, error.error_response()).map_into_right_body()
        }
    };
    Ok(close_unless_read(res, &reading))
}

/// A response sent before its request's body was read to the end closes the connection:
/// the unread rest must not be taken for the next request, nor keep the socket.
fn close_unless_read<B>(mut res: ServiceResponse<B>, reading: &Reading) -> ServiceResponse<B> {
    if reading.state.load(Ordering::Acquire) != FINISHED && has_body(res.request()) {
        res.response_mut()
            .head_mut()
            .set_connection_type(ConnectionType::Close);
    }
    res
}

fn has_body(req: &actix_web::HttpRequest) -> bool {
    let headers = req.headers();
    headers.contains_key(actix_web::http::header::TRANSFER_ENCODING)
        || headers
            .get(actix_web::http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim() != "0")
}
